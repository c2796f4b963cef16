//! AF_XDP workers: packet parsing, connection tracking, endpoint selection and NAT.

pub mod snapshot;
