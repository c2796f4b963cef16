//! The real operator binary against the stand-in API server and a fake appliance that records
//! every request: add, endpoint update, annotation error, resync after drift, delete.
//! Needs no root.

mod support;

use oxlb_api::LoadBalancerEntry;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use support::appliance::FakeAppliance;
use support::operator::{free_port, spawn_operator, Operator};
use support::{scratch, service, slice, wait_for, wait_for_ingress, ApiServer};

fn eps(e: &LoadBalancerEntry) -> Vec<String> {
    e.endpoints
        .iter()
        .map(|p| format!("{}:{}", p.endpoint_ip, p.target_port))
        .collect()
}

#[test]
fn the_operator_programs_updates_resyncs_and_removes_a_service() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let api_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api_l.local_addr().unwrap().port();
    api.serve(api_l);
    let fake = FakeAppliance::default();
    let app_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app_l.local_addr().unwrap().port();
    fake.serve(app_l);

    let (dir, kc) = scratch("fake", api_port);
    let start = |n: u32| {
        let log = dir.join(format!("operator{n}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oxlb-operator"))
            .env("KUBECONFIG", &kc)
            .env("RUST_LOG", "info")
            .args([
                &format!("-loxiURL=http://127.0.0.1:{app_port}"),
                "--externalCIDR=198.18.100.0/24",
                "--usePodNetwork",
                "--resyncPeriod=2",
            ])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Operator(child, log)
    };
    let op = start(1);
    let diag = || format!("operator log:\n{}\nrules: {:?}", op.log(), fake.rules());

    // Add: one rule with two endpoints, finalizer, status.
    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.2"]),
    );
    api.apply("services", service("shop", "web", 80, json!({})));
    let rule = wait_for(
        20,
        "the rule",
        || fake.rules().into_iter().find(|r| r.endpoints.len() == 2),
        &diag,
    );
    assert_eq!(rule.service_arguments.name, "shop_web:llb-inst0");
    assert_eq!(rule.service_arguments.external_ip, "198.18.100.1");
    assert_eq!(eps(&rule), vec!["10.1.0.1:8080", "10.1.0.2:8080"]);
    let svc = wait_for_ingress(&api, "shop", "web", 20, &diag);
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": "llb-198.18.100.1"}])
    );
    assert_eq!(svc["metadata"]["finalizers"], json!(["oxlb.io/finalizer"]));
    // The exact Kubernetes writes: the finalizer (guarded by resourceVersion), then the status.
    let patches: Vec<(String, String, Value)> = api
        .patches()
        .into_iter()
        .filter(|p| p.0.starts_with("shop/web"))
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert_eq!(patches[0].0, "shop/web");
    assert!(patches[0].1.starts_with("application/merge-patch+json"));
    assert_eq!(
        patches[0].2["metadata"]["finalizers"],
        json!(["oxlb.io/finalizer"])
    );
    assert!(patches[0].2["metadata"]["resourceVersion"].is_string());
    assert_eq!(
        (patches[1].0.as_str(), &patches[1].2),
        (
            "shop/web/status",
            &json!({"status": {"loadBalancer": {"ingress": [{"hostname": "llb-198.18.100.1"}]}}})
        )
    );

    // A second Service on another port shares the address; on the same port it gets another.
    api.apply("endpointslices", slice("shop", "api", &["10.1.0.9"]));
    api.apply("services", service("shop", "api", 443, json!({})));
    api.apply("endpointslices", slice("shop", "web2", &["10.1.0.8"]));
    api.apply("services", service("shop", "web2", 80, json!({})));
    wait_for(
        20,
        "three rules",
        || (fake.rules().len() == 3).then_some(()),
        &diag,
    );
    let ip_of = |name: &str| {
        fake.rules()
            .iter()
            .find(|r| {
                r.service_arguments
                    .name
                    .starts_with(&format!("shop_{name}:"))
            })
            .unwrap()
            .service_arguments
            .external_ip
            .clone()
    };
    assert_eq!(ip_of("api"), "198.18.100.1");
    assert_eq!(ip_of("web2"), "198.18.100.2");

    // Scale: the endpoint set follows the slice.
    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
    );
    wait_for(
        20,
        "three endpoints",
        || {
            fake.rules().into_iter().find(|r| {
                r.service_arguments.name == "shop_web:llb-inst0" && r.endpoints.len() == 3
            })
        },
        &diag,
    );

    // Drift: a rule removed behind the operator's back comes back within a resync period.
    fake.rules
        .lock()
        .unwrap()
        .retain(|r| r.service_arguments.name != "shop_web:llb-inst0");
    wait_for(
        20,
        "the rule restored",
        || {
            fake.rules()
                .into_iter()
                .find(|r| r.service_arguments.name == "shop_web:llb-inst0")
        },
        &diag,
    );

    // Bad annotation: an Event names it and the appliance keeps the old rule untouched.
    let mut bad = service("shop", "web", 80, json!({"loxilb.io/epselect": "random"}));
    bad["metadata"]["finalizers"] = json!(["oxlb.io/finalizer"]);
    api.apply("services", bad);
    let ev = wait_for(
        20,
        "an event",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "BadAnnotation")
        },
        &diag,
    );
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains("loxilb.io/epselect=\"random\""),
        "{ev}"
    );
    assert!(fake
        .rules()
        .iter()
        .any(|r| r.service_arguments.name == "shop_web:llb-inst0" && r.service_arguments.sel == 0));
    api.apply("services", service("shop", "web", 80, json!({})));

    // Delete: rules go from the appliance, the finalizer goes, the address is free again.
    fake.take_requests();
    api.delete("services", "shop", "web");
    wait_for(
        20,
        "the service gone",
        || api.get("services", "shop", "web").is_none().then_some(()),
        &diag,
    );
    assert!(
        fake.take_requests()
            .contains(&"DELETE 198.18.100.1:80/tcp".to_owned()),
        "{}",
        diag()
    );
    assert!(!fake
        .rules()
        .iter()
        .any(|r| r.service_arguments.name.starts_with("shop_web:")));
    api.apply("endpointslices", slice("shop", "web3", &["10.1.0.7"]));
    api.apply("services", service("shop", "web3", 80, json!({})));
    wait_for(
        20,
        "web3 on the freed address",
        || {
            fake.rules().into_iter().find(|r| {
                r.service_arguments.name == "shop_web3:llb-inst0"
                    && r.service_arguments.external_ip == "198.18.100.1"
            })
        },
        &diag,
    );

    // Restart: allocations are rebuilt from the statuses; nothing moves, nothing is reused.
    drop(op);
    let before = fake.rules();
    let op2 = start(2);
    let diag2 = || format!("operator log:\n{}\nrules: {:?}", op2.log(), fake.rules());
    api.apply("endpointslices", slice("shop", "web4", &["10.1.0.6"]));
    api.apply("services", service("shop", "web4", 80, json!({})));
    let r = wait_for(
        20,
        "web4's rule",
        || {
            fake.rules()
                .into_iter()
                .find(|r| r.service_arguments.name == "shop_web4:llb-inst0")
        },
        &diag2,
    );
    assert_eq!(
        r.service_arguments.external_ip,
        "198.18.100.3",
        "{}",
        diag2()
    );
    for old in &before {
        assert!(
            fake.rules().contains(old),
            "{old:?} changed after the restart\n{}",
            diag2()
        );
    }
    drop(op2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_accepting_appliance_there_is_no_status_and_an_event_says_why() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let api_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api_l.local_addr().unwrap().port();
    api.serve(api_l);
    let (dir, kc) = scratch("dead", api_port);
    let dead = free_port();
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{dead}"),
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
        ],
    );
    let diag = || format!("operator log:\n{}", op.log());
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply("services", service("shop", "web", 80, json!({})));
    let ev = wait_for(
        20,
        "an ApplianceRefused event",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "ApplianceRefused")
        },
        &diag,
    );
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{dead}")),
        "{ev}"
    );
    let svc = api.get("services", "shop", "web").unwrap();
    assert!(svc["status"]["loadBalancer"]["ingress"].is_null(), "{svc}");
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_appliance_gets_every_rule_and_one_that_comes_back_empty_is_resynced() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let api_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api_l.local_addr().unwrap().port();
    api.serve(api_l);
    let first = FakeAppliance::default();
    let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p1 = l1.local_addr().unwrap().port();
    first.serve(l1);
    // The second appliance is down at first.
    let p2 = free_port();
    let (dir, kc) = scratch("two", api_port);
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{p1},http://127.0.0.1:{p2}"),
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--resyncPeriod=1",
        ],
    );
    let diag = || format!("operator log:\n{}", op.log());
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply("services", service("shop", "web", 80, json!({})));
    wait_for(
        20,
        "the status (one appliance accepted)",
        || {
            api.get("services", "shop", "web")
                .filter(|s| s["status"]["loadBalancer"]["ingress"].is_array())
        },
        &diag,
    );
    assert_eq!(first.rules().len(), 1);

    // The second appliance starts, empty: it gets the rule within a resync period.
    let second = FakeAppliance::default();
    second.serve(std::net::TcpListener::bind(("127.0.0.1", p2)).unwrap());
    let r = wait_for(
        20,
        "the rule on the second appliance",
        || second.rules().into_iter().next(),
        &diag,
    );
    assert_eq!(r, first.rules()[0]);

    // The first one restarts empty and is refilled the same way.
    first.rules.lock().unwrap().clear();
    wait_for(
        20,
        "the rule back on the first appliance",
        || first.rules().into_iter().next(),
        &diag,
    );
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_append_eps_and_a_token_file_the_operator_attaches_and_detaches_endpoints() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let api_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = api_l.local_addr().unwrap().port();
    api.serve(api_l);
    let fake = FakeAppliance::default();
    let token = "append-eps-test-token-42";
    fake.require_token(token);
    let app_port = fake.start();
    let (dir, kc) = scratch("append", api_port);
    let tf = dir.join("token");
    std::fs::write(&tf, format!("{token}\n")).unwrap();
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{app_port}"),
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--appendEPs",
            &format!("--apiTokenFile={}", tf.display()),
            "--resyncPeriod=1",
        ],
    );
    let diag = || format!("operator log:\n{}\nrules: {:?}", op.log(), fake.rules());
    let has = |ips: &[&str]| {
        let want: Vec<String> = ips.iter().map(|ip| format!("{ip}:8080")).collect();
        let f = fake.clone();
        move || {
            f.rules()
                .into_iter()
                .find(|r| {
                    let mut e = eps(r);
                    e.sort();
                    e == want
                })
                .map(|_| ())
        }
    };
    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.2"]),
    );
    api.apply("services", service("shop", "web", 80, json!({})));
    wait_for(20, "the rule", has(&["10.1.0.1", "10.1.0.2"]), &diag);
    let created = fake.take_requests();
    assert!(
        created.contains(&"POST 198.18.100.1:80/tcp 2".to_owned()),
        "{created:?}"
    );

    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
    );
    wait_for(
        20,
        "three endpoints",
        has(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        &diag,
    );
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.3"]));
    wait_for(20, "one endpoint", has(&["10.1.0.3"]), &diag);
    // An endpoint added on the appliance is detached by a resync.
    {
        let mut rules = fake.rules.lock().unwrap();
        let mut stray = rules[0].endpoints[0].clone();
        stray.endpoint_ip = "10.9.9.9".into();
        rules[0].endpoints.push(stray);
    }
    wait_for(20, "the stray endpoint detached", has(&["10.1.0.3"]), &diag);
    let reqs = fake.take_requests();
    let changes: Vec<&String> = reqs.iter().filter(|r| *r != "GET all").collect();
    assert_eq!(
        changes,
        vec![
            "ATTACH 198.18.100.1:80/tcp 10.1.0.3:8080",
            "DETACH 198.18.100.1:80/tcp 10.1.0.1:8080,10.1.0.2:8080",
            "DETACH 198.18.100.1:80/tcp 10.9.9.9:8080",
        ],
        "{}",
        diag()
    );
    assert_eq!(fake.refused_auth(), 0, "{}", diag());

    api.delete("services", "shop", "web");
    wait_for(
        20,
        "the rule gone",
        || fake.rules().is_empty().then_some(()),
        &diag,
    );
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}
