//! HA state (`POST /netlox/v1/config/cistate`, `GET /netlox/v1/config/cistate/all`): the role
//! an external controller (kube-loxilb's `--setRoles`, keepalived's notify hook) assigns to
//! each cluster instance, in loxilb's `CIStatusEntry` / `CIStatusGetEntry` shapes, and its
//! validation into a typed [`CiState`].
//!
//! oxlb records the role and lists it back; it does not yet change forwarding by it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use utoipa::ToSchema;

/// loxilb's default instance, the one rules created without an instance belong to; an empty
/// `instance` means it.
pub const DEFAULT_INSTANCE: &str = "llb-inst0";
/// Longest instance name accepted; loxilb's are short (`llb-inst0`), and the name is a key of
/// the state file and a column of `oxlbctl get cistate`.
pub const MAX_INSTANCE_LEN: usize = 63;

/// The body of `POST /netlox/v1/config/cistate` (loxilb's `CIStatusEntry`). kube-loxilb sends
/// its fields with Go's `omitempty`, so each may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"instance": "llb-inst0", "state": "MASTER", "vip": "0.0.0.0"}))]
pub struct CiStatusEntry {
    /// The cluster instance; empty means loxilb's default instance `llb-inst0`. Letters,
    /// digits, `.`, `_` and `-`, at most 63.
    #[serde(default)]
    pub instance: String,
    /// The instance's role: `MASTER`, `BACKUP`, `FAULT`, `STOP` or `NOT_DEFINED` (loxilb's
    /// words, upper case).
    #[serde(default)]
    pub state: String,
    /// The instance's virtual IP address (IPv4 or IPv6); empty means none (`0.0.0.0`).
    #[serde(default)]
    pub vip: String,
}

/// One item of `GET /netlox/v1/config/cistate/all` (loxilb's `CIStatusGetEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CiStatusGetEntry {
    pub instance: String,
    /// `MASTER`, `BACKUP`, `FAULT`, `STOP` or `NOT_DEFINED`.
    pub state: String,
    /// `0.0.0.0` when none was given.
    pub vip: String,
    /// loxilb's connection-sync state; always 0 here, as oxlb does not sync connections yet.
    pub sync: i64,
}

/// The body of `GET /netlox/v1/config/cistate/all`; loxilb names the array `Attr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CiStateList {
    #[serde(rename = "Attr", default)]
    pub attr: Vec<CiStatusGetEntry>,
}

/// A cluster instance's HA role, as loxilb names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HaRole {
    Master,
    Backup,
    Fault,
    Stop,
    NotDefined,
}

impl HaRole {
    /// Every role, in the order error messages list them.
    pub const ALL: [HaRole; 5] = [
        HaRole::Master,
        HaRole::Backup,
        HaRole::Fault,
        HaRole::Stop,
        HaRole::NotDefined,
    ];

    /// loxilb's word for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            HaRole::Master => "MASTER",
            HaRole::Backup => "BACKUP",
            HaRole::Fault => "FAULT",
            HaRole::Stop => "STOP",
            HaRole::NotDefined => "NOT_DEFINED",
        }
    }
}

impl fmt::Display for HaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated HA state of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CiState {
    pub instance: String,
    pub role: HaRole,
    /// `None` when the request gave none.
    pub vip: Option<IpAddr>,
}

/// Why a `cistate` body was refused; each message names the field and what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CiStateError {
    #[error(
        "state {0:?} is unknown: use MASTER, BACKUP, FAULT, STOP or NOT_DEFINED (upper case, \
         as loxilb writes them)"
    )]
    UnknownState(String),
    #[error(
        "instance {0:?} is not a usable instance name: use at most 63 letters, digits, '.', \
         '_' or '-' (loxilb's default instance is llb-inst0)"
    )]
    BadInstance(String),
    #[error("vip {0:?} is not an IP address: send one such as 198.18.100.1, or leave it empty")]
    BadVip(String),
}

impl CiStateError {
    /// The JSON name of the offending field.
    pub fn field(&self) -> &'static str {
        match self {
            CiStateError::UnknownState(_) => "state",
            CiStateError::BadInstance(_) => "instance",
            CiStateError::BadVip(_) => "vip",
        }
    }
}

/// Validates a `POST /config/cistate` body.
pub fn validate_cistate(entry: &CiStatusEntry) -> Result<CiState, CiStateError> {
    let instance = if entry.instance.is_empty() {
        DEFAULT_INSTANCE.to_owned()
    } else {
        entry.instance.clone()
    };
    let usable = instance.len() <= MAX_INSTANCE_LEN
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !usable {
        return Err(CiStateError::BadInstance(entry.instance.clone()));
    }
    let role = HaRole::ALL
        .into_iter()
        .find(|r| r.as_str() == entry.state)
        .ok_or_else(|| CiStateError::UnknownState(entry.state.clone()))?;
    let vip = match entry.vip.trim() {
        "" => None,
        text => Some(
            text.parse::<IpAddr>()
                .map_err(|_| CiStateError::BadVip(entry.vip.clone()))?,
        ),
    };
    Ok(CiState {
        instance,
        role,
        vip,
    })
}

/// The listing item of `state`.
pub fn to_cistatus(state: &CiState) -> CiStatusGetEntry {
    CiStatusGetEntry {
        instance: state.instance.clone(),
        state: state.role.as_str().to_owned(),
        vip: state
            .vip
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .to_string(),
        sync: 0,
    }
}

/// The request body that sets `state` again, as the state file keeps it.
pub fn to_cistatus_entry(state: &CiState) -> CiStatusEntry {
    CiStatusEntry {
        instance: state.instance.clone(),
        state: state.role.as_str().to_owned(),
        vip: state.vip.map(|v| v.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(v: serde_json::Value) -> CiStatusEntry {
        serde_json::from_value(v).expect("the body parses")
    }

    #[test]
    fn loxilbs_body_is_accepted_and_listed_back_with_sync_zero() {
        let s = validate_cistate(&entry(
            json!({"instance": "llb-inst0", "state": "BACKUP", "vip": "198.18.100.1"}),
        ))
        .unwrap();
        assert_eq!(s.role, HaRole::Backup);
        assert_eq!(
            serde_json::to_value(CiStateList {
                attr: vec![to_cistatus(&s)]
            })
            .unwrap(),
            json!({"Attr": [{"instance": "llb-inst0", "state": "BACKUP",
                             "vip": "198.18.100.1", "sync": 0}]})
        );
        assert_eq!(validate_cistate(&to_cistatus_entry(&s)), Ok(s));
    }

    #[test]
    fn missing_fields_mean_the_default_instance_and_no_vip_but_the_state_is_required() {
        let s = validate_cistate(&entry(json!({"state": "MASTER"}))).unwrap();
        assert_eq!(s.instance, DEFAULT_INSTANCE);
        assert_eq!(s.vip, None);
        assert_eq!(to_cistatus(&s).vip, "0.0.0.0");
        let e = validate_cistate(&entry(json!({}))).unwrap_err();
        assert_eq!(e.field(), "state");
    }

    #[test]
    fn an_unknown_or_lower_case_state_is_refused_naming_the_field_and_the_known_ones() {
        for bad in ["master", "ACTIVE", "MASTER "] {
            let e = validate_cistate(&entry(json!({"state": bad}))).unwrap_err();
            assert_eq!(e, CiStateError::UnknownState(bad.to_owned()));
            assert_eq!(e.field(), "state");
            assert!(e.to_string().contains("MASTER, BACKUP"), "{e}");
        }
    }

    #[test]
    fn bad_instance_names_and_vips_are_refused_by_field() {
        let long = "x".repeat(MAX_INSTANCE_LEN + 1);
        for bad in ["a b", "inst/0", long.as_str(), "é"] {
            let e = validate_cistate(&entry(json!({"instance": bad, "state": "MASTER"})));
            assert_eq!(e.unwrap_err().field(), "instance", "{bad:?}");
        }
        let e = validate_cistate(&entry(json!({"state": "MASTER", "vip": "300.1.1.1"})));
        assert_eq!(e.unwrap_err().field(), "vip");
        let ok = validate_cistate(&entry(json!({"state": "STOP", "vip": "2001:db8::1"})));
        assert!(ok.is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<CiStatusEntry, _> =
            serde_json::from_value(json!({"state": "MASTER", "role": "MASTER"}));
        assert!(r.is_err());
    }
}
