//! Watches the cluster for load-balancer work and computes, without I/O, the loxilb rules
//! each Service needs: annotations, desired state, and the reflectors feeding them.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod desired;
pub mod watch;

pub use annotations::{AddressKind, AnnotationError, ServiceOptions};
pub use desired::{
    address_families, canonical_ip, desired_rules, endpoint_family, is_ours, rule_key, rule_name,
    rule_prefix, DesiredError, Family, Settings,
};
