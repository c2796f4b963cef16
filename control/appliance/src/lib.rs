//! The appliance control plane: REST server, desired state, snapshot compilation, next hops.
pub mod appliance;
pub mod compile;
pub mod http;
pub mod nexthop;
pub mod state;
