//! The REST API over HTTP on 127.0.0.1, against an in-memory appliance whose `apply` can be
//! made to fail.

use oxlb_control::http::{serve, Appliance, ApplyError};
use oxlb_control::state::DesiredState;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct FakeAppliance {
    state: Mutex<DesiredState>,
    fail: AtomicBool,
    applied: AtomicUsize,
}

impl Appliance for FakeAppliance {
    fn current(&self) -> DesiredState {
        self.state.lock().unwrap().clone()
    }

    fn apply(&self, next: DesiredState) -> Result<(), ApplyError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(ApplyError::Xdp("injected failure".into()));
        }
        // Widens the window in which two unserialized changes would lose one another.
        std::thread::sleep(Duration::from_millis(2));
        *self.state.lock().unwrap() = next;
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Server {
    base: String,
    fake: Arc<FakeAppliance>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(FakeAppliance::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app: Arc<dyn Appliance> = fake.clone();
    tokio::spawn(async move {
        serve(listener, app, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        base: format!("http://{addr}/netlox/v1"),
        fake,
        http: reqwest::Client::new(),
        _stop: stop,
    }
}

impl Server {
    async fn post_raw(&self, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/config/loadbalancer", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw(&body.to_string()).await
    }

    async fn list(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/config/loadbalancer/all", self.base))
            .send()
            .await
            .unwrap();
        let (status, body) = answer(r).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .delete(format!("{}/config/loadbalancer/{path}", self.base))
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    fn applied(&self) -> usize {
        self.fake.applied.load(Ordering::SeqCst)
    }
}

/// Status and JSON body; fails the test if the body is not JSON.
async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    assert_eq!(
        ctype.as_deref(),
        Some("application/json"),
        "{status} {text}"
    );
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

fn rule(ip: &str, port: u16, endpoints: &[&str]) -> Value {
    json!({
        "serviceArguments": {"externalIP": ip, "port": port, "protocol": "tcp", "sel": 0, "mode": 0, "name": "web"},
        "endpoints": endpoints
            .iter()
            .map(|e| json!({"endpointIP": e, "targetPort": 8080, "weight": 1}))
            .collect::<Vec<_>>(),
    })
}

fn issue_example() -> Value {
    rule("198.18.100.1", 2020, &["198.18.31.1"])
}

fn listed_rules(list: &Value) -> Vec<(String, u64, Vec<String>)> {
    list["lbAttr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["serviceArguments"]["externalIP"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                e["serviceArguments"]["port"].as_u64().unwrap(),
                e["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["endpointIP"].as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// A refusal: 400, loxilb's error shape, and the message says `what`.
fn assert_refused(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(what), "{message:?} lacks {what:?}");
    assert_eq!(body["result"], body["message"]);
}

#[tokio::test]
async fn the_liveness_probe_answers_ok_with_and_without_a_trailing_slash() {
    let s = start().await;
    for url in [s.base.clone(), format!("{}/", s.base)] {
        let (status, body) = answer(s.http.get(url).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn a_created_rule_answers_success_and_is_listed_as_loxilb_lists_it() {
    let s = start().await;
    let (status, body) = s.post(&issue_example()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": "Success"}));
    assert_eq!(
        s.list().await,
        json!({"lbAttr": [{
            "serviceArguments": {
                "externalIP": "198.18.100.1", "port": 2020, "protocol": "tcp",
                "inactiveTimeOut": 1800, "name": "web"
            },
            "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1}],
            "secondaryIPs": [],
            "allowedSources": []
        }]})
    );
    assert_eq!(s.applied(), 1);
}

#[tokio::test]
async fn the_exact_kube_loxilb_body_is_accepted() {
    let s = start().await;
    let (status, _) = s
        .post_raw(r#"{"serviceArguments":{"externalIP":"192.168.80.5","privateIP":"","port":80,"protocol":"tcp","sel":0,"mode":0,"BGP":false,"Monitor":false,"inactiveTimeOut":1800,"block":0,"managed":true,"probetype":"","probeport":0,"probereq":"","proberesp":"","name":"default_nginx-lb:llb-inst0"},"secondaryIPs":null,"allowedSources":null,"endpoints":[{"endpointIP":"10.244.1.5","targetPort":30080,"weight":1,"state":"","counter":""}]}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed_rules(&s.list().await),
        [("192.168.80.5".into(), 80, vec!["10.244.1.5".into()])]
    );
}

#[tokio::test]
async fn posting_the_same_key_again_replaces_its_endpoint_set() {
    let s = start().await;
    s.post(&rule("198.18.100.1", 2020, &["198.18.31.1", "198.18.31.2"]))
        .await;
    let (status, _) = s.post(&rule("198.18.100.1", 2020, &["198.18.31.3"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed_rules(&s.list().await),
        [("198.18.100.1".into(), 2020, vec!["198.18.31.3".into()])]
    );
}

#[tokio::test]
async fn posting_an_identical_rule_again_succeeds_without_reapplying() {
    let s = start().await;
    s.post(&issue_example()).await;
    let (status, body) = s.post(&issue_example()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": "Success"}));
    assert_eq!(s.applied(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_of_different_rules_are_all_kept() {
    let s = Arc::new(start().await);
    let posts: Vec<_> = (0..16u16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.post(&rule("198.18.100.1", 3000 + i, &["198.18.31.1"]))
                    .await
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(listed_rules(&s.list().await).len(), 16);
}

#[tokio::test]
async fn deleting_a_rule_removes_only_that_rule() {
    let s = start().await;
    s.post(&rule("198.18.100.1", 2020, &["198.18.31.1"])).await;
    s.post(&rule("198.18.100.2", 2020, &["198.18.31.1"])).await;
    let (status, body) = s
        .delete("externalipaddress/198.18.100.1/port/2020/protocol/tcp")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": "Success"}));
    assert_eq!(
        listed_rules(&s.list().await),
        [("198.18.100.2".into(), 2020, vec!["198.18.31.1".into()])]
    );
}

#[tokio::test]
async fn deleting_an_unknown_rule_answers_404_with_a_json_message() {
    let s = start().await;
    s.post(&issue_example()).await;
    let (status, body) = s
        .delete("externalipaddress/198.18.100.1/port/2020/protocol/udp")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 404);
    assert_eq!(
        body["message"],
        "no load-balancer rule for 198.18.100.1:2020/udp"
    );
    assert_eq!(s.applied(), 1);
}

#[tokio::test]
async fn deleting_with_a_malformed_key_answers_400_naming_the_segment() {
    let s = start().await;
    let (status, body) = s
        .delete("externalipaddress/198.18.100.1/port/http/protocol/tcp")
        .await;
    assert_refused(status, &body, "\"http\" is not a number");
    assert_eq!(body["fields"], json!(["port"]));
}

#[tokio::test]
async fn deleting_all_rules_empties_the_listing() {
    let s = start().await;
    s.post(&rule("198.18.100.1", 2020, &["198.18.31.1"])).await;
    s.post(&rule("198.18.100.2", 2020, &["198.18.31.1"])).await;
    let (status, body) = s.delete("all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"result": "Success"}));
    assert_eq!(s.list().await, json!({"lbAttr": []}));
    let (status, _) = s.delete("all").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_json_is_refused_with_its_position_and_nothing_is_applied() {
    let s = start().await;
    let (status, body) = s
        .post_raw("{\"serviceArguments\": {\"externalIP\": \"198.18.100.1\",\n \"port\": 2020,, }")
        .await;
    assert_refused(status, &body, "not valid JSON");
    assert!(
        body["message"].as_str().unwrap().contains("line 2 column"),
        "{body}"
    );
    let (status, body) = s.post_raw("").await;
    assert_refused(status, &body, "EOF");
    assert_eq!(s.applied(), 0);
    assert_eq!(s.list().await, json!({"lbAttr": []}));
}

#[tokio::test]
async fn an_unknown_field_is_refused_by_name() {
    let s = start().await;
    let mut body = issue_example();
    body["serviceArguments"]["vip"] = json!("198.18.100.1");
    let (status, body) = s.post(&body).await;
    assert_refused(status, &body, "unknown field `vip`");
    assert_eq!(s.applied(), 0);
}

#[tokio::test]
async fn a_value_of_the_wrong_type_is_refused() {
    let s = start().await;
    let mut body = issue_example();
    body["serviceArguments"]["port"] = json!("2020");
    let (status, body) = s.post(&body).await;
    assert_refused(status, &body, "invalid type: string \"2020\"");
}

#[tokio::test]
async fn port_zero_is_refused_naming_the_field() {
    let s = start().await;
    let (status, body) = s.post(&rule("198.18.100.1", 0, &["198.18.31.1"])).await;
    assert_refused(status, &body, "serviceArguments.port 0 is out of range");
    assert_eq!(body["fields"], json!(["serviceArguments.port"]));
    assert_eq!(s.applied(), 0);
}

#[tokio::test]
async fn a_rule_without_endpoints_is_refused() {
    let s = start().await;
    let (status, body) = s.post(&rule("198.18.100.1", 2020, &[])).await;
    assert_refused(status, &body, "at least one endpoint");
    assert_eq!(body["fields"], json!(["endpoints"]));
}

#[tokio::test]
async fn selection_5_is_refused_as_n2_not_implemented() {
    let s = start().await;
    let mut body = issue_example();
    body["serviceArguments"]["sel"] = json!(5);
    let (status, body) = s.post(&body).await;
    assert_refused(
        status,
        &body,
        "sel 5 (n2) is not implemented; use 0 (round robin), 1 (hash), 2 (priority), 3 (persist) or 4 (least connections)",
    );
    assert_eq!(body["fields"], json!(["serviceArguments.sel"]));
}

#[tokio::test]
async fn mode_4_is_refused_as_an_l7_mode_not_implemented() {
    let s = start().await;
    let mut body = issue_example();
    body["serviceArguments"]["mode"] = json!(4);
    let (status, body) = s.post(&body).await;
    assert_refused(
        status,
        &body,
        "mode 4 (fullproxy) is an L7/host mode and not implemented; use 0 (dnat), 1 (onearm), 2 (fullnat) or 3 (dsr)",
    );
}

#[tokio::test]
async fn a_failed_apply_answers_500_and_the_previous_rules_stay_listed() {
    let s = start().await;
    s.post(&issue_example()).await;
    let before = s.list().await;
    s.fake.fail.store(true, Ordering::SeqCst);

    let (status, body) = s.post(&rule("198.18.100.1", 2020, &["198.18.31.9"])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], 500);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("injected failure"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");

    let (status, _) = s.delete("all").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(s.list().await, before);
}

#[tokio::test]
async fn an_unknown_path_answers_404_in_json() {
    let s = start().await;
    let r = s
        .http
        .get(format!("{}/config/nothing", s.base))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["message"],
        "no such API: GET /netlox/v1/config/nothing"
    );
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_answers_405_in_json() {
    let s = start().await;
    let r = s
        .http
        .put(format!("{}/config/loadbalancer", s.base))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["code"], 405);
}

fn with_oper(mut body: Value, oper: u8) -> Value {
    body["serviceArguments"]["oper"] = json!(oper);
    body
}

#[tokio::test]
async fn oper_1_attaches_endpoints_and_oper_2_detaches_them_keeping_the_rest() {
    let s = start().await;
    s.post(&rule("198.18.100.1", 2020, &["198.18.31.1", "198.18.31.2"]))
        .await;
    let (status, body) = s
        .post(&with_oper(rule("198.18.100.1", 2020, &["198.18.31.3"]), 1))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed_rules(&s.list().await),
        [(
            "198.18.100.1".into(),
            2020,
            vec![
                "198.18.31.1".into(),
                "198.18.31.2".into(),
                "198.18.31.3".into()
            ]
        )]
    );
    let (status, body) = s
        .post(&with_oper(rule("198.18.100.1", 2020, &["198.18.31.1"]), 2))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed_rules(&s.list().await),
        [(
            "198.18.100.1".into(),
            2020,
            vec!["198.18.31.2".into(), "198.18.31.3".into()]
        )]
    );
}

#[tokio::test]
async fn attaching_to_a_rule_that_does_not_exist_is_404_and_detaching_the_last_endpoint_is_refused()
{
    let s = start().await;
    let (status, body) = s
        .post(&with_oper(rule("198.18.100.1", 2020, &["198.18.31.3"]), 1))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    s.post(&issue_example()).await;
    let applied = s.applied();
    let (status, body) = s
        .post(&with_oper(rule("198.18.100.1", 2020, &["198.18.31.1"]), 2))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["fields"], json!(["endpoints"]));
    assert_eq!(s.applied(), applied, "nothing applied");
}

#[tokio::test]
async fn deleting_by_name_removes_every_rule_of_that_name_and_an_unknown_name_is_404() {
    let s = start().await;
    s.post(&rule("198.18.100.1", 2020, &["198.18.31.1"])).await;
    s.post(&rule("198.18.100.1", 2021, &["198.18.31.1"])).await;
    let mut other = rule("198.18.100.2", 80, &["198.18.31.2"]);
    other["serviceArguments"]["name"] = json!("other");
    s.post(&other).await;
    let (status, body) = s.delete("name/web").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed_rules(&s.list().await),
        [("198.18.100.2".into(), 80, vec!["198.18.31.2".into()])]
    );
    let (status, _) = s.delete("name/web").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_ipv6_rule_is_created_listed_refused_where_it_cannot_be_translated_and_deleted() {
    let s = start().await;
    // NAT64 in dnat mode: the endpoint could not answer an IPv6 client.
    let (status, body) = s.post(&rule("fd00:100::1", 2020, &["198.18.31.1"])).await;
    assert_refused(status, &body, "NAT64 needs source translation");
    assert_eq!(body["fields"], json!(["serviceArguments.mode"]));
    // NAT46 in any mode.
    let (status, body) = s.post(&rule("198.18.100.1", 2020, &["fd00:31::1"])).await;
    assert_refused(status, &body, "NAT46");
    assert_eq!(body["fields"], json!(["endpoints[0].endpointIP"]));
    assert_eq!(s.applied(), 0);

    let mut nat64 = rule("fd00:100::1", 2020, &["198.18.31.1", "fd00:31::2"]);
    nat64["serviceArguments"]["mode"] = 2.into();
    let (status, body) = s.post(&nat64).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed_rules(&s.list().await),
        [(
            "fd00:100::1".into(),
            2020,
            vec!["198.18.31.1".into(), "fd00:31::2".into()]
        )]
    );
    let (status, body) = s
        .delete("externalipaddress/fd00:100::1/port/2020/protocol/tcp")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(listed_rules(&s.list().await), []);
}

/// An SCTP rule on `ip`:2020 with secondary addresses `secondaries`.
fn sctp_rule(ip: &str, secondaries: &[&str]) -> Value {
    let mut body = rule(ip, 2020, &["198.18.31.1"]);
    body["serviceArguments"]["protocol"] = json!("sctp");
    body["secondaryIPs"] = secondaries
        .iter()
        .map(|s| json!({"secondaryIP": s}))
        .collect();
    body
}

#[tokio::test]
async fn an_sctp_rule_keeps_its_secondary_addresses_and_lists_them_sorted() {
    let s = start().await;
    let (status, body) = s
        .post(&sctp_rule(
            "198.18.100.1",
            &["198.18.102.1", "198.18.101.1"],
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = s.list().await;
    assert_eq!(
        list["lbAttr"][0]["secondaryIPs"],
        json!([{"secondaryIP": "198.18.101.1"}, {"secondaryIP": "198.18.102.1"}])
    );
    // Attaching an endpoint keeps them.
    let mut attach = with_oper(sctp_rule("198.18.100.1", &[]), 1);
    attach["endpoints"][0]["endpointIP"] = json!("198.18.31.2");
    assert_eq!(s.post(&attach).await.0, StatusCode::OK);
    let list = s.list().await;
    assert_eq!(
        list["lbAttr"][0]["secondaryIPs"].as_array().unwrap().len(),
        2
    );
    assert_eq!(list["lbAttr"][0]["endpoints"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn secondary_addresses_on_tcp_or_taken_by_another_rule_are_refused_and_nothing_changes() {
    let s = start().await;
    let mut tcp = sctp_rule("198.18.100.1", &["198.18.101.1"]);
    tcp["serviceArguments"]["protocol"] = json!("tcp");
    let (status, body) = s.post(&tcp).await;
    assert_refused(status, &body, "tcp rule");
    assert_eq!(body["fields"], json!(["secondaryIPs"]));
    let (status, body) = s.post(&sctp_rule("198.18.100.1", &["198.18.100.1"])).await;
    assert_refused(status, &body, "externalIP itself");
    assert_eq!(body["fields"], json!(["secondaryIPs[0].secondaryIP"]));
    assert_eq!(s.applied(), 0);

    assert_eq!(
        s.post(&sctp_rule("198.18.100.1", &["198.18.101.1"]))
            .await
            .0,
        StatusCode::OK
    );
    // Another rule's VIP on an address this rule already serves as a secondary.
    let (status, body) = s.post(&sctp_rule("198.18.101.1", &[])).await;
    assert_refused(status, &body, "overlap");
    // A replacement with a bad secondary leaves the rule as it was.
    let (status, _) = s
        .post(&sctp_rule("198.18.100.1", &["198.18.101.1", "fd00::1"]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.list().await["lbAttr"][0]["secondaryIPs"],
        json!([{"secondaryIP": "198.18.101.1"}])
    );
    assert_eq!(s.applied(), 1);
}
