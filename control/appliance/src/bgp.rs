//! BGP in the appliance: the REST calls that configure it (loxilb's `/config/bgp/...`), its
//! part of the state file, and what the speaker ([`oxlb_bgp`]) is told to do for a desired
//! state: the external address of every rule with `bgp` set, as a host route, offered less
//! preferred while the default HA instance is BACKUP (as loxilb does).

use crate::http::{body_error, change, current, success, Api, Failure};
use crate::state::DesiredState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use oxlb_api::cistate::DEFAULT_INSTANCE;
use oxlb_api::{
    neighbor_address, to_bgp_global_entry, to_bgp_neigh_entry, validate_bgp_global,
    validate_bgp_neighbor, validate_remote_as, BgpConfig, BgpError, BgpGlobalEntry, BgpNeighEntry,
    BgpNeighGetEntry, BgpNeighList, ErrorResponse, HaRole, ResultResponse,
};
use oxlb_bgp::{Desired, GlobalConfig, PeerConfig, Preference};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What the speaker should do for `state`.
pub fn desired(state: &DesiredState) -> Desired {
    let bgp = state.bgp();
    // loxilb advertises every rule under its default instance, with that instance's role.
    let preference = match state.ha().find(|h| h.instance == DEFAULT_INSTANCE) {
        Some(h) if h.role == HaRole::Backup => Preference::Backup,
        _ => Preference::Primary,
    };
    Desired {
        global: bgp.global.map(|g| GlobalConfig {
            listen_port: g.listen_port,
            next_hop_v4: g.next_hop_v4,
            next_hop_v6: g.next_hop_v6,
            ..GlobalConfig::new(g.local_as, g.router_id)
        }),
        peers: bgp
            .neighbors
            .values()
            .map(|n| PeerConfig {
                addr: n.addr,
                remote_as: n.remote_as,
                remote_port: n.remote_port,
                multihop: n.multihop,
            })
            .collect(),
        routes: state
            .services()
            .filter(|s| s.bgp)
            // Secondary addresses (multi-homed SCTP) are reached as the VIP is, as in loxilb.
            .flat_map(|s| s.addresses().map(move |a| (a, preference)))
            .collect(),
    }
}

/// The state file's `bgp` object: the global configuration and the neighbours, each as the
/// request body that creates it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<BgpGlobalEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<BgpNeighEntry>,
}

/// The state file's `bgp` object for `config`; `None` while there is no BGP configuration,
/// so such a file is the same as before BGP existed.
pub fn to_file(config: &BgpConfig) -> Option<FileSection> {
    (!config.is_empty()).then(|| FileSection {
        global: config.global.as_ref().map(to_bgp_global_entry),
        neighbors: config.neighbors.values().map(to_bgp_neigh_entry).collect(),
    })
}

/// The configuration of a state file's `bgp` object, validated as the API validates requests.
pub fn from_file(section: &FileSection) -> Result<BgpConfig, String> {
    let mut config = BgpConfig::default();
    if let Some(g) = &section.global {
        config.global =
            Some(validate_bgp_global(g).map_err(|e| format!("bgp.global.{}: {e}", e.field()))?);
    }
    for (i, n) in section.neighbors.iter().enumerate() {
        let n = validate_bgp_neighbor(n)
            .map_err(|e| format!("bgp.neighbors[{i}].{}: {e}", e.field()))?;
        if config.neighbors.insert(n.addr, n).is_some() {
            return Err(format!(
                "bgp.neighbors[{i}] repeats the neighbour {}",
                n.addr
            ));
        }
    }
    Ok(config)
}

fn refused(e: BgpError) -> Failure {
    Failure(ErrorResponse::new(400, e.to_string()).with_field(e.field()))
}

/// Sets this speaker's AS, router id and listen port (loxilb's `BGPGlobalConfig`). Sessions
/// restart with the new identity.
#[utoipa::path(
    post,
    path = "/netlox/v1/config/bgp/global",
    tag = "loxilb",
    request_body = BgpGlobalEntry,
    responses(
        (status = 200, description = "Applied and saved", body = ResultResponse),
        (status = 400, description = "The body is not JSON, not a BGPGlobalConfig, or holds an unusable value; `fields` names it", body = ErrorResponse),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorResponse),
        (status = 500, description = "The change could not be saved; the previous configuration stays", body = ErrorResponse),
    )
)]
pub(crate) async fn bgp_global(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let body = body.map_err(|r| Failure::new(r.status(), r.body_text()))?;
    let entry: BgpGlobalEntry = serde_json::from_slice(&body).map_err(|e| {
        body_error(
            e,
            "a loxilb BGPGlobalConfig ({localAs, routerId, listenPort, setNextHopSelf})",
        )
    })?;
    let g = validate_bgp_global(&entry).map_err(refused)?;
    change(&api, move |state| {
        state.bgp_mut().global = Some(g);
        Ok(format!(
            "BGP: AS {}, router id {}, listening on port {}",
            g.local_as, g.router_id, g.listen_port
        ))
    })
    .await?;
    Ok(success())
}

/// Adds a BGP neighbour (loxilb's `BGPNeigh`); the appliance connects to it, and accepts its
/// connections, once the global configuration is set.
#[utoipa::path(
    post,
    path = "/netlox/v1/config/bgp/neigh",
    tag = "loxilb",
    request_body = BgpNeighEntry,
    responses(
        (status = 200, description = "Added and saved (or the same neighbour exists already)", body = ResultResponse),
        (status = 400, description = "The body is not JSON, not a BGPNeigh, or holds an unusable value; `fields` names it", body = ErrorResponse),
        (status = 409, description = "A neighbour with this address and other settings exists; delete it first", body = ErrorResponse),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorResponse),
        (status = 500, description = "The change could not be saved; the previous configuration stays", body = ErrorResponse),
    )
)]
pub(crate) async fn bgp_neigh_add(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let body = body.map_err(|r| Failure::new(r.status(), r.body_text()))?;
    let entry: BgpNeighEntry = serde_json::from_slice(&body).map_err(|e| {
        body_error(
            e,
            "a loxilb BGPNeigh ({ipAddress, remoteAs, remotePort, setMultiHop})",
        )
    })?;
    let n = validate_bgp_neighbor(&entry).map_err(refused)?;
    change(&api, move |state| {
        let neighbors = &mut state.bgp_mut().neighbors;
        match neighbors.get(&n.addr) {
            Some(old) if *old == n => Ok(format!("BGP neighbour {} exists already", n.addr)),
            Some(old) => Err(Failure(
                ErrorResponse::new(
                    409,
                    format!(
                        "BGP neighbour {} exists with AS {} (port {}, multihop {}); delete it first",
                        old.addr, old.remote_as, old.remote_port, old.multihop
                    ),
                )
                .with_field("ipAddress"),
            )),
            None => {
                neighbors.insert(n.addr, n);
                Ok(format!("BGP neighbour {} AS {} added", n.addr, n.remote_as))
            }
        }
    })
    .await?;
    Ok(success())
}

/// `remoteAs` of a query string, if given.
fn remote_as_of(query: Option<&str>) -> Result<Option<u32>, Failure> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("remoteAs="))
    else {
        return Ok(None);
    };
    let n: i64 = value.parse().map_err(|_| {
        Failure(
            ErrorResponse::new(400, format!("remoteAs {value:?} is not a number"))
                .with_field("remoteAs"),
        )
    })?;
    validate_remote_as(n).map(Some).map_err(refused)
}

/// Deletes a BGP neighbour; its session is closed with a Cease.
#[utoipa::path(
    delete,
    path = "/netlox/v1/config/bgp/neigh/{ip_address}",
    tag = "loxilb",
    params(
        ("ip_address" = String, Path, description = "The neighbour's address", example = "198.18.1.2"),
        ("remoteAs" = Option<i64>, Query, description = "The neighbour's AS; when given, it must match",
         minimum = 1, maximum = 4294967295_i64),
    ),
    responses(
        (status = 200, description = "Deleted and saved", body = ResultResponse),
        (status = 400, description = "The address or remoteAs is not valid; `fields` names it", body = ErrorResponse),
        (status = 404, description = "No neighbour has this address (and AS)", body = ErrorResponse),
        (status = 500, description = "The change could not be saved; the previous configuration stays", body = ErrorResponse),
    )
)]
pub(crate) async fn bgp_neigh_delete(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<ResultResponse>, Failure> {
    let Path(ip) = path.map_err(|r| Failure::bad_request(r.body_text()))?;
    let addr = neighbor_address(&ip).map_err(refused)?;
    let remote_as = remote_as_of(query.as_deref())?;
    change(&api, move |state| {
        let neighbors = &mut state.bgp_mut().neighbors;
        match neighbors.get(&addr) {
            Some(n) if remote_as.is_none_or(|a| a == n.remote_as) => {
                let n = *n;
                neighbors.remove(&addr);
                Ok(format!("BGP neighbour {addr} AS {} deleted", n.remote_as))
            }
            Some(n) => Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!(
                    "BGP neighbour {addr} has AS {}, not {}",
                    n.remote_as,
                    remote_as.unwrap_or_default()
                ),
            )),
            None => Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no BGP neighbour {addr}"),
            )),
        }
    })
    .await?;
    Ok(success())
}

/// Every BGP neighbour with its session's state.
#[utoipa::path(
    get,
    path = "/netlox/v1/config/bgp/neigh/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "The neighbours, in loxilb's shape", body = BgpNeighList),
        (status = 500, description = "Internal error reading the state", body = ErrorResponse),
    )
)]
pub(crate) async fn bgp_neigh_list(State(api): State<Api>) -> Result<Json<BgpNeighList>, Failure> {
    let state = current(&api).await?;
    let sessions = api.app.bgp_peers();
    let now = Instant::now();
    let bgp_nei_attr = state
        .bgp()
        .neighbors
        .values()
        .map(|n| {
            let s = sessions
                .iter()
                .find(|s| s.addr == n.addr && s.remote_as == n.remote_as);
            BgpNeighGetEntry {
                ip_address: n.addr.to_string(),
                remote_as: i64::from(n.remote_as),
                state: s.map_or("IDLE", |s| s.state.as_str()).to_owned(),
                updowntime: s.map_or_else(|| "never".to_owned(), |s| s.updowntime(now)),
            }
        })
        .collect();
    Ok(Json(BgpNeighList { bgp_nei_attr }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_spec;
    use oxlb_api::{BgpGlobal, BgpNeighbor, CiState};
    use std::net::{IpAddr, Ipv4Addr};

    fn configured() -> DesiredState {
        let mut s = DesiredState::default();
        let bgp = s.bgp_mut();
        bgp.global = Some(BgpGlobal {
            local_as: 65001,
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            listen_port: 1790,
            next_hop_self: false,
            next_hop_v4: None,
            next_hop_v6: Some("fd00:18::1".parse().unwrap()),
        });
        let addr: IpAddr = "198.18.1.2".parse().unwrap();
        bgp.neighbors.insert(
            addr,
            BgpNeighbor {
                addr,
                remote_as: 65002,
                remote_port: 179,
                multihop: false,
            },
        );
        s
    }

    #[test]
    fn the_secondary_addresses_of_a_rule_with_bgp_set_are_advertised_too() {
        let mut s = configured();
        let sec: IpAddr = "198.18.101.1".parse().unwrap();
        s.upsert(oxlb_api::ServiceSpec {
            bgp: true,
            secondary_ips: vec![sec],
            ..test_spec(80, &[1])
        });
        let routes: Vec<IpAddr> = desired(&s).routes.into_keys().collect();
        assert_eq!(routes, ["198.18.100.1".parse::<IpAddr>().unwrap(), sec]);
    }

    #[test]
    fn only_rules_with_bgp_set_are_advertised_and_a_backup_offers_them_less_preferred() {
        let mut s = configured();
        s.upsert(oxlb_api::ServiceSpec {
            bgp: true,
            ..test_spec(80, &[1])
        });
        let mut other = test_spec(81, &[1]);
        other.key.external_ip = "198.18.100.2".parse().unwrap();
        s.upsert(other);
        let d = desired(&s);
        let vip: IpAddr = "198.18.100.1".parse().unwrap();
        assert_eq!(
            d.routes.into_iter().collect::<Vec<_>>(),
            [(vip, Preference::Primary)]
        );
        assert_eq!(d.global.unwrap().listen_port, 1790);
        assert_eq!(d.peers.len(), 1);
        s.set_ha(CiState {
            instance: "llb-inst1".into(),
            role: HaRole::Backup,
            vip: None,
        });
        assert_eq!(
            desired(&s).routes[&vip],
            Preference::Primary,
            "another instance"
        );
        s.set_ha(CiState {
            instance: DEFAULT_INSTANCE.into(),
            role: HaRole::Backup,
            vip: None,
        });
        assert_eq!(desired(&s).routes[&vip], Preference::Backup);
    }

    #[test]
    fn the_file_section_round_trips_and_is_absent_without_bgp() {
        assert!(to_file(&BgpConfig::default()).is_none());
        let s = configured();
        let section = to_file(s.bgp()).unwrap();
        let json = serde_json::to_value(&section).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "global": {"localAs": 65001, "routerId": "198.18.0.1", "listenPort": 1790,
                           "nextHopIPv6": "fd00:18::1"},
                "neighbors": [{"ipAddress": "198.18.1.2", "remoteAs": 65002}],
            })
        );
        assert_eq!(&from_file(&section).unwrap(), s.bgp());
        let twice = FileSection {
            global: None,
            neighbors: vec![section.neighbors[0].clone(), section.neighbors[0].clone()],
        };
        let e = from_file(&twice).unwrap_err();
        assert!(e.contains("bgp.neighbors[1] repeats"), "{e}");
    }

    #[test]
    fn bgp_configuration_is_saved_and_loaded_back_with_the_rules() {
        let mut s = configured();
        s.upsert(test_spec(80, &[1]));
        let bytes = crate::persist::encode(&s);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["bgp"]["global"]["localAs"], 65001);
        assert_eq!(crate::persist::decode(&bytes).unwrap(), s);
        let mut bad = v.clone();
        bad["bgp"]["neighbors"][0]["remoteAs"] = 0.into();
        let e = crate::persist::decode(bad.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("bgp.neighbors[0].remoteAs"), "{e}");
        let plain = crate::persist::encode(&{
            let mut p = DesiredState::default();
            p.upsert(test_spec(80, &[1]));
            p
        });
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(v.get("bgp").is_none(), "{v}");
    }

    /// An appliance that keeps its state in memory and reports no sessions.
    #[derive(Default)]
    struct Memory(std::sync::Mutex<DesiredState>);

    impl crate::http::Appliance for Memory {
        fn current(&self) -> DesiredState {
            self.0.lock().unwrap().clone()
        }
        fn apply(&self, next: DesiredState) -> Result<(), crate::http::ApplyError> {
            *self.0.lock().unwrap() = next;
            Ok(())
        }
    }

    async fn call(
        router: &axum::Router,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_bgp_calls_configure_list_and_refuse_as_loxilb_names_them() {
        let app = std::sync::Arc::new(Memory::default());
        let router = crate::http::router(app.clone());
        let global = "/netlox/v1/config/bgp/global";
        let neigh = "/netlox/v1/config/bgp/neigh";
        let (status, body) = call(
            &router,
            "POST",
            global,
            r#"{"localAs":0,"routerId":"1.1.1.1"}"#,
        )
        .await;
        assert_eq!(
            (status, &body["fields"]),
            (400, &serde_json::json!(["localAs"]))
        );
        let (status, body) = call(&router, "POST", global, r#"{"localAs":65001}"#).await;
        assert_eq!(status, 400);
        assert!(
            body["message"].as_str().unwrap().contains("routerId"),
            "{body}"
        );
        let (status, _) = call(
            &router,
            "POST",
            global,
            r#"{"localAs":65001,"routerId":"198.18.0.1"}"#,
        )
        .await;
        assert_eq!(status, 200);

        let peer = r#"{"ipAddress":"198.18.0.2","remoteAs":65002}"#;
        assert_eq!(call(&router, "POST", neigh, peer).await.0, 200);
        assert_eq!(
            call(&router, "POST", neigh, peer).await.0,
            200,
            "the same again"
        );
        let (status, body) = call(
            &router,
            "POST",
            neigh,
            r#"{"ipAddress":"198.18.0.2","remoteAs":65003}"#,
        )
        .await;
        assert_eq!(
            (status, &body["fields"]),
            (409, &serde_json::json!(["ipAddress"]))
        );
        let (status, body) = call(
            &router,
            "POST",
            neigh,
            r#"{"ipAddress":"198.18.0","remoteAs":65003}"#,
        )
        .await;
        assert_eq!(
            (status, &body["fields"]),
            (400, &serde_json::json!(["ipAddress"]))
        );

        let (status, body) = call(&router, "GET", "/netlox/v1/config/bgp/neigh/all", "").await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            serde_json::json!({"bgpNeiAttr": [{"ipAddress": "198.18.0.2", "remoteAs": 65002,
                                               "state": "IDLE", "updowntime": "never"}]})
        );

        let one = "/netlox/v1/config/bgp/neigh/198.18.0.2";
        assert_eq!(
            call(&router, "DELETE", &format!("{one}?remoteAs=65009"), "")
                .await
                .0,
            404
        );
        let (status, body) = call(&router, "DELETE", &format!("{one}?remoteAs=x"), "").await;
        assert_eq!(
            (status, &body["fields"]),
            (400, &serde_json::json!(["remoteAs"]))
        );
        assert_eq!(
            call(&router, "DELETE", &format!("{one}?remoteAs=65002"), "")
                .await
                .0,
            200
        );
        assert_eq!(call(&router, "DELETE", one, "").await.0, 404);
        let state = app.0.lock().unwrap().clone();
        assert!(state.bgp().neighbors.is_empty());
        assert_eq!(state.bgp().global.unwrap().local_as, 65001);
    }

    #[test]
    fn the_openapi_document_lists_the_bgp_calls_under_loxilbs_names() {
        let doc = serde_json::to_value(crate::http::openapi()).unwrap();
        for (path, method) in [
            ("/netlox/v1/config/bgp/global", "post"),
            ("/netlox/v1/config/bgp/neigh", "post"),
            ("/netlox/v1/config/bgp/neigh/{ip_address}", "delete"),
            ("/netlox/v1/config/bgp/neigh/all", "get"),
        ] {
            assert!(doc["paths"][path].get(method).is_some(), "{method} {path}");
        }
        let schemas = &doc["components"]["schemas"];
        for name in ["BGPGlobalConfig", "BGPNeigh", "BGPNeighGetEntry"] {
            assert!(schemas.get(name).is_some(), "no schema {name}");
        }
        assert!(schemas["BGPGlobalConfig"]["properties"]
            .get("localAs")
            .is_some());
        assert!(schemas["BgpNeighList"]["properties"]
            .get("bgpNeiAttr")
            .is_some());
    }

    #[test]
    fn remote_as_is_read_from_the_query_string() {
        assert_eq!(remote_as_of(None).ok(), Some(None));
        assert_eq!(
            remote_as_of(Some("x=1&remoteAs=65002")).ok(),
            Some(Some(65002))
        );
        assert_eq!(
            remote_as_of(Some("remoteAs=abc")).err().unwrap().0.fields,
            ["remoteAs"]
        );
        assert_eq!(
            remote_as_of(Some("remoteAs=0")).err().unwrap().0.fields,
            ["remoteAs"]
        );
    }
}
