//! loxilb-compatible REST API types (`/netlox/v1`) and their validation into typed service specs.
#![forbid(unsafe_code)]

pub mod bgp;
pub mod cistate;
pub mod conntrack;
pub mod endpoint;
pub mod model;
pub mod spec;
pub mod status;
pub mod validate;

pub use bgp::{
    neighbor_address, to_bgp_global_entry, to_bgp_neigh_entry, validate_bgp_global,
    validate_bgp_neighbor, validate_remote_as, BgpConfig, BgpError, BgpGlobal, BgpGlobalEntry,
    BgpNeighEntry, BgpNeighGetEntry, BgpNeighList, BgpNeighbor,
};
pub use cistate::{
    to_cistatus, to_cistatus_entry, validate_cistate, CiState, CiStateError, CiStateList,
    CiStatusEntry, CiStatusGetEntry, HaRole,
};
pub use conntrack::{ConntrackEntry, ConntrackList};
pub use endpoint::{EndpointEntry, EndpointList};
pub use model::*;
pub use spec::*;
pub use status::StatusResponse;
pub use validate::{
    check_overlap, check_snat_overlap, oper, service_key, to_entry, validate, Oper, ValidationError,
};
