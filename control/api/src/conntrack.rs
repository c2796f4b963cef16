//! The body of loxilb's conntrack listing, `GET /netlox/v1/config/conntrack/all`.
//!
//! Names follow loxilb's `api/swagger.yml` (`ConntrackEntry`); like loxilb (Go `omitempty`),
//! a field with its zero value is left out of the answer, and read back as that zero value.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"ctAttr": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConntrackList {
    #[serde(rename = "ctAttr", default)]
    pub ct_attr: Vec<ConntrackEntry>,
}

/// One direction of one tracked connection, as loxilb lists it: the tuple as seen on the wire
/// in that direction, its state, the rewrite it gets and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConntrackEntry {
    #[serde(rename = "sourceIP", default, skip_serializing_if = "is_default")]
    pub source_ip: String,
    #[serde(rename = "destinationIP", default, skip_serializing_if = "is_default")]
    pub destination_ip: String,
    #[serde(rename = "sourcePort", default, skip_serializing_if = "is_default")]
    pub source_port: u16,
    #[serde(
        rename = "destinationPort",
        default,
        skip_serializing_if = "is_default"
    )]
    pub destination_port: u16,
    /// `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: String,
    /// loxilb's words: TCP `sync-sent`, `est`, `fini`; UDP `udp-uni`, `udp-est`.
    #[serde(rename = "conntrackState", default, skip_serializing_if = "is_default")]
    pub conntrack_state: String,
    /// The rewrite, in loxilb's shape `<kind>-<addr>:<port>:w<weight>`, e.g.
    /// `dnat-198.18.31.1:8080:w1`; empty when nothing is rewritten.
    #[serde(rename = "conntrackAct", default, skip_serializing_if = "is_default")]
    pub conntrack_act: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub ident: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub packets: u64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub bytes: u64,
    /// The name of the load-balancer rule the connection belongs to.
    #[serde(rename = "servName", default, skip_serializing_if = "is_default")]
    pub serv_name: String,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serializes_with_loxilbs_field_names() {
        let list = ConntrackList {
            ct_attr: vec![ConntrackEntry {
                source_ip: "198.18.0.2".into(),
                destination_ip: "198.18.100.1".into(),
                source_port: 40000,
                destination_port: 2020,
                protocol: "tcp".into(),
                conntrack_state: "est".into(),
                conntrack_act: "dnat-198.18.31.1:8080:w1".into(),
                ident: String::new(),
                packets: 3,
                bytes: 180,
                serv_name: "web".into(),
            }],
        };
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ctAttr": [{
                "sourceIP": "198.18.0.2", "destinationIP": "198.18.100.1",
                "sourcePort": 40000, "destinationPort": 2020, "protocol": "tcp",
                "conntrackState": "est", "conntrackAct": "dnat-198.18.31.1:8080:w1",
                "packets": 3, "bytes": 180, "servName": "web"
            }]})
        );
        let back: ConntrackList = serde_json::from_value(v).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn an_empty_listing_is_an_empty_array_and_zero_fields_are_left_out() {
        let v = serde_json::to_value(ConntrackList::default()).unwrap();
        assert_eq!(v, serde_json::json!({"ctAttr": []}));
        let e = serde_json::to_value(ConntrackEntry::default()).unwrap();
        assert_eq!(e, serde_json::json!({}));
    }
}
