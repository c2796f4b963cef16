//! AF_XDP workers: packet parsing, connection tracking, endpoint selection and NAT.

pub mod checksum;
pub mod conntrack;
pub mod engine;
pub mod nat;
pub mod snapshot;
pub mod stats;
pub mod wire;
