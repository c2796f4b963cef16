//! IPv6 and dual-stack Services against the real operator binary, the stand-in API server and
//! a fake appliance (which takes IPv6 rules as loxilb does; a real oxlb may still refuse them):
//! one rule per family with endpoints of that family, `ipv6to4` with IPv4 endpoints, every
//! address in the status, and the allocations of both families rebuilt after a restart.
//! Needs no root.

mod support;

use serde_json::{json, Value};
use support::appliance::FakeAppliance;
use support::operator::spawn_operator;
use support::{scratch, service, slice, wait_for, wait_for_ingress, ApiServer};

fn start_api() -> (ApiServer, u16) {
    let api = ApiServer::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    api.serve(l);
    (api, port)
}

/// An IPv6 EndpointSlice of Service `ns/name` with `ips` ready on port 8080 (named `http`).
fn slice6(ns: &str, name: &str, ips: &[&str]) -> Value {
    let mut s = slice(ns, name, ips);
    s["addressType"] = json!("IPv6");
    s["metadata"]["name"] = json!(format!("{name}-v6"));
    s
}

/// (externalIP, endpoint addresses) of every rule, sorted.
fn rules(f: &FakeAppliance) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<_> = f
        .rules()
        .iter()
        .map(|r| {
            (
                r.service_arguments.external_ip.clone(),
                r.endpoints.iter().map(|e| e.endpoint_ip.clone()).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

fn ingress(api: &ApiServer, name: &str) -> Value {
    api.get("services", "shop", name).unwrap()["status"]["loadBalancer"]["ingress"].clone()
}

#[test]
fn dual_stack_and_nat64_services_get_a_rule_per_address_and_keep_them_across_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let fake = FakeAppliance::default();
    let port = fake.start();
    let (dir, kc) = scratch("ipv6", api_port);
    let args = [
        format!("--loxiURL=http://127.0.0.1:{port}"),
        "--externalCIDR=198.18.100.0/24".to_owned(),
        "--cidr6Pools=defaultPool=fd00:198:18::/120".to_owned(),
        "--usePodNetwork".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = spawn_operator(&dir, &kc, "operator", &args);
    let diag = || {
        format!(
            "operator log:\n{}\nrules: {:?}\nevents: {:?}",
            op.log(),
            rules(&fake),
            api.events()
        )
    };

    // A dual-stack Service, IPv6 first: one rule per family, each with its family's pods.
    let mut web = service("shop", "web", 80, json!({}));
    web["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    web["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply(
        "endpointslices",
        slice6("shop", "web", &["fd00::a", "fd00::b"]),
    );
    api.apply("services", web);
    let svc = wait_for_ingress(&api, "shop", "web", 20, &diag);
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": "llb-fd00-198-18--1"}, {"hostname": "llb-198.18.100.1"}]),
        "{}",
        diag()
    );
    assert_eq!(
        rules(&fake),
        vec![
            ("198.18.100.1".into(), vec!["10.1.0.1".into()]),
            (
                "fd00:198:18::1".into(),
                vec!["fd00::a".into(), "fd00::b".into()]
            ),
        ]
    );
    // One status write with both addresses.
    let status: Vec<Value> = api
        .patches()
        .into_iter()
        .filter(|p| p.0 == "shop/web/status")
        .map(|p| p.2)
        .collect();
    assert_eq!(
        status,
        vec![json!({"status": {"loadBalancer": {"ingress":
            [{"hostname": "llb-fd00-198-18--1"}, {"hostname": "llb-198.18.100.1"}]}}})]
    );
    let v6 = fake
        .rules()
        .into_iter()
        .find(|r| r.service_arguments.external_ip == "fd00:198:18::1")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&v6).unwrap(),
        json!({"serviceArguments": {"externalIP": "fd00:198:18::1", "port": 80, "protocol": "tcp",
               "inactiveTimeOut": 1800, "managed": true, "name": "shop_web:llb-inst0"},
               "endpoints": [{"endpointIP": "fd00::a", "targetPort": 8080, "weight": 1},
                             {"endpointIP": "fd00::b", "targetPort": 8080, "weight": 1}],
               "secondaryIPs": [], "allowedSources": []})
    );

    // ipv6to4 (kube-loxilb's alias nat64): an IPv6 address with the IPv4 pods behind it.
    api.apply("endpointslices", slice("shop", "legacy", &["10.1.0.7"]));
    api.apply(
        "services",
        service("shop", "legacy", 80, json!({"loxilb.io/ipam": "nat64"})),
    );
    wait_for_ingress(&api, "shop", "legacy", 20, &diag);
    assert_eq!(
        ingress(&api, "legacy"),
        json!([{"hostname": "llb-fd00-198-18--2"}])
    );
    assert!(rules(&fake).contains(&("fd00:198:18::2".into(), vec!["10.1.0.7".into()])));

    // A static IPv4 address on an IPv6 Service is refused with an Event, nothing applied.
    api.apply("endpointslices", slice6("shop", "odd", &["fd00::d"]));
    api.apply(
        "services",
        service(
            "shop",
            "odd",
            81,
            json!({"loxilb.io/ipam": "ipv6", "loxilb.io/staticIP": "198.18.100.50"}),
        ),
    );
    let ev = wait_for(
        20,
        "an InvalidService event",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "InvalidService")
        },
        &diag,
    );
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains("198.18.100.50 is an IPv4 address but the Service's addresses are IPv6"),
        "{ev}"
    );
    assert!(!rules(&fake).iter().any(|(ip, _)| ip == "198.18.100.50"));
    api.delete("services", "shop", "odd");

    // An IPv6 endpoint scaled away leaves the IPv4 rule alone.
    api.apply("endpointslices", slice6("shop", "web", &["fd00::b"]));
    wait_for(
        20,
        "one IPv6 endpoint",
        || {
            rules(&fake)
                .contains(&("fd00:198:18::1".into(), vec!["fd00::b".into()]))
                .then_some(())
        },
        &diag,
    );

    // Restart: the allocations of both families come back from the statuses, nothing on the
    // appliance changes, and a new IPv6 Service on the same port avoids both held addresses.
    drop(op);
    fake.take_requests();
    let op = spawn_operator(&dir, &kc, "operator2", &args);
    let diag = || {
        format!(
            "operator log:\n{}\nrules: {:?}\nevents: {:?}",
            op.log(),
            rules(&fake),
            api.events()
        )
    };
    api.apply("endpointslices", slice6("shop", "only6", &["fd00::c"]));
    api.apply(
        "services",
        service("shop", "only6", 80, json!({"oxlb.io/ipam": "ipv6"})),
    );
    wait_for_ingress(&api, "shop", "only6", 20, &diag);
    assert_eq!(
        ingress(&api, "only6"),
        json!([{"hostname": "llb-fd00-198-18--3"}]),
        "{}",
        diag()
    );
    let changes: Vec<String> = fake
        .take_requests()
        .into_iter()
        .filter(|r| r != "GET all")
        .collect();
    assert_eq!(changes, vec!["POST fd00:198:18::3:80/tcp 1"], "{}", diag());
    assert_eq!(
        ingress(&api, "web"),
        json!([{"hostname": "llb-fd00-198-18--1"}, {"hostname": "llb-198.18.100.1"}])
    );

    // PreferDualStack without IPv6 endpoints: the IPv6 address is held but not shown, as it
    // has no rule; once IPv6 endpoints appear, it is shown and served too.
    let mut pref = service("shop", "pref", 8081, json!({}));
    pref["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    pref["spec"]["ipFamilies"] = json!(["IPv4"]);
    api.apply("endpointslices", slice("shop", "pref", &["10.1.0.9"]));
    api.apply("services", pref);
    wait_for_ingress(&api, "shop", "pref", 20, &diag);
    assert_eq!(
        ingress(&api, "pref"),
        json!([{"hostname": "llb-198.18.100.1"}])
    );
    api.apply("endpointslices", slice6("shop", "pref", &["fd00::e"]));
    wait_for(
        20,
        "both addresses shown",
        || {
            (ingress(&api, "pref")
                == json!([{"hostname": "llb-198.18.100.1"}, {"hostname": "llb-fd00-198-18--1"}]))
            .then_some(())
        },
        &diag,
    );
    assert!(fake
        .rules()
        .iter()
        .any(|r| r.service_arguments.external_ip == "fd00:198:18::1"
            && r.service_arguments.port == 8081));

    // Deleting the dual-stack Service removes both of its rules (and only them).
    api.delete("services", "shop", "web");
    wait_for(
        20,
        "the dual-stack Service's rules gone",
        || {
            (!fake
                .rules()
                .iter()
                .any(|r| r.service_arguments.name == "shop_web:llb-inst0"))
            .then_some(())
        },
        &diag,
    );
    assert_eq!(fake.rules().len(), 4, "{}", diag());
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}
