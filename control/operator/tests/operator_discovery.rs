//! Appliance discovery without `--loxiURL`, as kube-loxilb does it: the appliances are the
//! ready endpoints of Service `loxilb-lb-service`, reached on port 11111. The real operator
//! binary, the stand-in API server, and fake appliances listening on loopback addresses
//! (127.x.y.z:11111, chosen per process). Needs no root.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::appliance::FakeAppliance;
use support::operator::spawn_operator;
use support::{scratch, service, slice, wait_for, ApiServer};

fn start_api() -> (ApiServer, u16) {
    let api = ApiServer::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    api.serve(l);
    (api, port)
}

/// The EndpointSlice of the appliances' Service with `ips` ready.
fn appliance_slice(ips: &[&str]) -> Value {
    let mut s = slice("kube-system", "loxilb-lb-service", ips);
    s["ports"] = json!([{"name": "api", "port": 11111, "protocol": "TCP"}]);
    s
}

/// Two loopback addresses of this process, with a fake appliance on port 11111 of each.
/// Addresses in 127.64.0.0/10 keep clear of anything bound on 127.0.0.1.
fn two_appliances() -> ((String, FakeAppliance), (String, FakeAppliance)) {
    for attempt in 0..32u32 {
        let n = std::process::id().wrapping_add(attempt * 7919);
        let base = format!("127.{}.{}", 64 + (n >> 8) % 64, n % 256);
        let (a, b) = (format!("{base}.1"), format!("{base}.2"));
        let (fa, fb) = (FakeAppliance::default(), FakeAppliance::default());
        if fa.start_on(&format!("{a}:11111")).is_some()
            && fb.start_on(&format!("{b}:11111")).is_some()
        {
            return ((a, fa), (b, fb));
        }
    }
    panic!("no free pair of loopback addresses for port 11111");
}

fn rule_names(f: &FakeAppliance) -> Vec<(String, String, usize)> {
    let mut v: Vec<_> = f
        .rules()
        .iter()
        .map(|r| {
            (
                r.service_arguments.name.clone(),
                r.service_arguments.external_ip.clone(),
                r.endpoints.len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn without_loxiurl_the_ready_endpoints_of_loxilb_lb_service_are_programmed_and_dropped_when_gone() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let ((ip1, first), (ip2, second)) = two_appliances();
    let (dir, kc) = scratch("discovery", api_port);
    // A long resync period: appliances must be filled by their discovery itself. The first
    // one is excluded from the MASTER role, as kube-loxilb applies the list to discovered
    // appliances.
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--resyncPeriod=300",
            "--setRoles=0.0.0.0",
            &format!("--excludeRoleList={ip1}"),
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nfirst: {:?}\nsecond: {:?}\nevents: {:?}",
            op.log(),
            rule_names(&first),
            rule_names(&second),
            api.events()
        )
    };
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply("services", service("shop", "web", 80, json!({})));
    wait_for(
        20,
        "an ApplianceRefused event (no appliance known yet)",
        || {
            api.events().into_iter().find(|e| {
                e["reason"] == "ApplianceRefused"
                    && e["note"]
                        .as_str()
                        .is_some_and(|n| n.contains("loxilb-lb-service"))
            })
        },
        &diag,
    );
    assert_eq!(first.calls() + second.calls(), 0);

    // The first appliance's pod becomes ready: it gets the rule, well before any resync.
    api.apply("endpointslices", appliance_slice(&[&ip1]));
    wait_for(
        10,
        "the rule on the first appliance",
        || (rule_names(&first).len() == 1).then_some(()),
        &diag,
    );
    support::wait_for_ingress(&api, "shop", "web", 10, &diag);
    assert_eq!(second.calls(), 0, "not discovered yet");

    // A not-ready endpoint is not an appliance; once ready, it is.
    let mut s = appliance_slice(&[&ip1, &ip2]);
    s["endpoints"][1]["conditions"]["ready"] = json!(false);
    api.apply("endpointslices", s);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        second.calls(),
        0,
        "a not-ready endpoint got calls\n{}",
        diag()
    );
    api.apply("endpointslices", appliance_slice(&[&ip1, &ip2]));
    wait_for(
        10,
        "the rule on the second appliance",
        || (rule_names(&second) == rule_names(&first)).then_some(()),
        &diag,
    );
    // Roles: the first one is excluded, so the second is MASTER.
    wait_for(
        10,
        "second MASTER, first BACKUP",
        || {
            (second.role("llb-inst0").as_deref() == Some("MASTER")
                && first.role("llb-inst0").as_deref() == Some("BACKUP"))
            .then_some(())
        },
        &diag,
    );

    // The first appliance's pod goes: no more calls reach it, the second is still updated.
    api.apply("endpointslices", appliance_slice(&[&ip2]));
    std::thread::sleep(Duration::from_secs(3));
    let calls = first.calls();
    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.2"]),
    );
    wait_for(
        10,
        "two endpoints on the second appliance",
        || (rule_names(&second)[0].2 == 2).then_some(()),
        &diag,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        first.calls(),
        calls,
        "the gone appliance got calls\n{}",
        diag()
    );
    assert_eq!(rule_names(&first)[0].2, 1, "left as it was");

    // It returns empty (restarted): it is resynced at once.
    first.rules.lock().unwrap().clear();
    api.apply("endpointslices", appliance_slice(&[&ip1, &ip2]));
    wait_for(
        10,
        "every rule back on the returning appliance",
        || (rule_names(&first) == rule_names(&second)).then_some(()),
        &diag,
    );
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}
