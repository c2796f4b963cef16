//! The endpoint listing (`GET /netlox/v1/config/endpoint/all`): one entry per endpoint host
//! and probe, with the probe's verdict, in loxilb's `EndPointGetEntry` shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// loxilb's verdict on an endpoint that answers its probe (or is not probed).
pub const STATE_OK: &str = "ok";
/// loxilb's verdict on an endpoint its probe reports down.
pub const STATE_NOK: &str = "nok";

/// One item of the listing. loxilb keys it `<host>_<probeType>_<probePort>` (`name`) and leaves
/// zero values out (Go's `omitempty`); `currState` is always present here, `ok` or `nok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    #[serde(rename = "hostName")]
    pub host_name: String,
    #[serde(default)]
    pub name: String,
    /// Consecutive failed probes that take the endpoint down.
    #[serde(
        rename = "inactiveReTries",
        default,
        skip_serializing_if = "is_default"
    )]
    pub inactive_retries: i64,
    /// `tcp`, `udp`, `http`, ... or `none` for an endpoint no probe watches.
    #[serde(rename = "probeType", default, skip_serializing_if = "is_default")]
    pub probe_type: String,
    #[serde(rename = "probeReq", default, skip_serializing_if = "is_default")]
    pub probe_req: String,
    #[serde(rename = "probeResp", default, skip_serializing_if = "is_default")]
    pub probe_resp: String,
    /// Seconds between two probes.
    #[serde(rename = "probeDuration", default, skip_serializing_if = "is_default")]
    pub probe_duration: i64,
    #[serde(rename = "probePort", default, skip_serializing_if = "is_default")]
    pub probe_port: i64,
    // loxilb fills the delays only for ping probes, which oxlb does not run; they are accepted
    // so a listing from loxilb itself parses too.
    #[serde(rename = "minDelay", default, skip_serializing_if = "is_default")]
    pub min_delay: String,
    #[serde(rename = "avgDelay", default, skip_serializing_if = "is_default")]
    pub avg_delay: String,
    #[serde(rename = "maxDelay", default, skip_serializing_if = "is_default")]
    pub max_delay: String,
    /// [`STATE_OK`] or [`STATE_NOK`].
    #[serde(rename = "currState", default)]
    pub curr_state: String,
}

/// The body of `GET /netlox/v1/config/endpoint/all`; loxilb names the array `Attr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndpointList {
    #[serde(rename = "Attr", default, deserialize_with = "null_as_empty")]
    pub attr: Vec<EndpointEntry>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Go encodes an empty slice as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_is_written_in_loxilbs_names_without_zero_values() {
        let e = EndpointEntry {
            host_name: "198.18.31.1".into(),
            name: "198.18.31.1_tcp_8080".into(),
            inactive_retries: 2,
            probe_type: "tcp".into(),
            probe_req: String::new(),
            probe_resp: String::new(),
            probe_duration: 1,
            probe_port: 8080,
            min_delay: String::new(),
            avg_delay: String::new(),
            max_delay: String::new(),
            curr_state: STATE_NOK.into(),
        };
        let list = EndpointList { attr: vec![e] };
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({"Attr": [{"hostName": "198.18.31.1", "name": "198.18.31.1_tcp_8080",
                "inactiveReTries": 2, "probeType": "tcp", "probeDuration": 1, "probePort": 8080,
                "currState": "nok"}]})
        );
    }

    #[test]
    fn a_loxilb_listing_with_delays_and_a_null_array_parses() {
        let list: EndpointList = serde_json::from_value(json!({"Attr": [{
            "hostName": "10.0.0.1", "name": "10.0.0.1_ping_0", "probeType": "ping",
            "minDelay": "1ms", "avgDelay": "2ms", "maxDelay": "3ms", "currState": "ok"}]}))
        .unwrap();
        assert_eq!(list.attr[0].avg_delay, "2ms");
        let empty: EndpointList = serde_json::from_str(r#"{"Attr":null}"#).unwrap();
        assert!(empty.attr.is_empty());
    }
}
