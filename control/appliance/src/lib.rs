//! The appliance control plane: REST server, desired state, snapshot compilation, next hops, the state file.
pub mod appliance;
pub mod auth;
pub mod bgp;
pub mod compile;
pub mod conntrack;
pub mod endpoints;
pub mod http;
pub mod metrics;
pub mod nexthop;
pub mod openapi;
pub mod ops;
pub mod persist;
pub mod probe;
pub mod state;
pub mod tls;
