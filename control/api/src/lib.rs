//! loxilb-compatible REST API types (`/netlox/v1`) and their validation into typed service specs.
#![forbid(unsafe_code)]

pub mod cistate;
pub mod conntrack;
pub mod endpoint;
pub mod model;
pub mod spec;
pub mod status;
pub mod validate;

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
