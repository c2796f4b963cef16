//! kube-loxilb's BGP flags (`--setBGP`, `--listenBGPPort`, `--extBGPPeers`, `--eBGPMultiHop`)
//! against the real operator binary, the stand-in API server and fake appliances that take
//! loxilb's BGP API: the exact global and neighbour bodies, rules marked for advertisement, a
//! refusing appliance retried with backoff and never reported configured until it accepts,
//! and, with discovered appliances, the iBGP mesh and its neighbour removed when one goes.
//! Needs no root.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::appliance::FakeAppliance;
use support::operator::{spawn_operator, spawn_operator_env};
use support::{scratch, service, slice, wait_for, ApiServer};

fn start_api() -> (ApiServer, u16) {
    let api = ApiServer::default();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    api.serve(l);
    (api, port)
}

fn calls(f: &FakeAppliance, prefix: &str) -> Vec<String> {
    f.bgp_calls()
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.starts_with(prefix))
        .collect()
}

#[test]
fn set_bgp_configures_every_appliance_and_a_refusing_one_is_retried_until_it_accepts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let good = FakeAppliance::default();
    let p1 = good.start();
    let refusing = FakeAppliance::default();
    refusing.refuse_bgp(true);
    let p2 = refusing.start();
    let (dir, kc) = scratch("bgp-flags", api_port);
    let op = spawn_operator_env(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{p1},http://127.0.0.1:{p2}"),
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--setBGP=64512",
            "--listenBGPPort=1179",
            "--extBGPPeers=198.18.0.9:65001",
            "--eBGPMultiHop",
        ],
        &[
            ("POD_NAME", "oxlb-operator-1"),
            ("POD_NAMESPACE", "kube-system"),
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\ngood: {:?}\nrefusing: {:?}",
            op.log(),
            good.bgp_calls(),
            refusing.bgp_calls()
        )
    };
    wait_for(
        10,
        "the neighbour on the accepting appliance",
        || (!good.neighbors().is_empty()).then_some(()),
        &diag,
    );
    assert_eq!(
        good.bgp_global(),
        vec![
            json!({"localAs": 64512, "routerId": "127.0.0.1", "listenPort": 1179,
                    "setNextHopSelf": true})
        ],
        "{}",
        diag()
    );
    // --loxiURL appliances do not peer with each other (kube-loxilb meshes discovered ones).
    assert_eq!(
        good.neighbors(),
        vec![
            json!({"ipAddress": "198.18.0.9", "remoteAs": 65001, "remotePort": 179,
                    "setMultiHop": true})
        ]
    );
    // The global configuration goes before the neighbour.
    let order: Vec<String> = good
        .bgp_calls()
        .into_iter()
        .map(|(_, c)| c.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(order, vec!["GLOBAL", "POST"], "{}", diag());

    // Rules are marked for advertisement.
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply("services", service("shop", "web", 80, json!({})));
    let rule = wait_for(20, "the rule", || good.rules().into_iter().next(), &diag);
    assert!(rule.service_arguments.bgp, "{rule:?}");

    // The refusing appliance: the global configuration is retried further and further apart,
    // its neighbours wait for it, and nothing says it is configured.
    wait_for(
        15,
        "four refused global configurations",
        || (calls(&refusing, "GLOBAL").len() >= 4).then_some(()),
        &diag,
    );
    let times: Vec<_> = refusing
        .bgp_calls()
        .into_iter()
        .filter(|(_, c)| c.starts_with("GLOBAL"))
        .map(|(t, _)| t)
        .collect();
    // Backoff 1, 2, 4 s: lower bounds only (a slow machine only adds).
    assert!(
        times[3] - times[1] >= Duration::from_millis(5500),
        "{}",
        diag()
    );
    assert!(calls(&refusing, "POST").is_empty(), "{}", diag());
    // Each refusal is a Warning Event on the operator's Pod naming the appliance.
    let ev = wait_for(
        10,
        "an ApplianceRefused event on the operator's pod",
        || {
            api.events().into_iter().find(|e| {
                e["reason"] == "ApplianceRefused" && e["regarding"]["name"] == "oxlb-operator-1"
            })
        },
        &diag,
    );
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "Pod");
    assert!(
        ev["note"]
            .as_str()
            .unwrap()
            .contains(&format!("http://127.0.0.1:{p2}")),
        "{ev}"
    );
    let log = op.log();
    assert!(
        log.contains(&format!(
            "appliance http://127.0.0.1:{p2}: sending BGP global configuration"
        )) && log.contains("404"),
        "{log}"
    );
    assert!(
        !log.contains(&format!("appliance http://127.0.0.1:{p2}: BGP global configuration (AS 64512, router id 127.0.0.1, port 1179) accepted")),
        "{log}"
    );

    // It starts accepting: it gets both.
    refusing.refuse_bgp(false);
    wait_for(
        20,
        "the neighbour on the formerly refusing appliance",
        || (refusing.neighbors() == good.neighbors()).then_some(()),
        &diag,
    );
    assert_eq!(refusing.bgp_global(), good.bgp_global());
    assert!(op.log().contains(&format!(
        "appliance http://127.0.0.1:{p2}: BGP global configuration (AS 64512, router id 127.0.0.1, port 1179) accepted"
    )));
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two loopback addresses of this process, with a fake appliance on port 11111 of each.
fn two_appliances() -> ((String, FakeAppliance), (String, FakeAppliance)) {
    for attempt in 0..32u32 {
        let n = std::process::id().wrapping_add(attempt * 7919 + 4099);
        let base = format!("127.{}.{}", 128 + (n >> 8) % 64, n % 256);
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

fn appliance_slice(ips: &[&str]) -> Value {
    slice("kube-system", "loxilb-lb-service", ips)
}

#[test]
fn discovered_appliances_peer_with_each_other_and_a_gone_one_is_removed_as_neighbour() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let ((ip1, first), (ip2, second)) = two_appliances();
    let (dir, kc) = scratch("bgp-mesh", api_port);
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &["--externalCIDR=198.18.100.0/24", "--setBGP=64512"],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nfirst: {:?}\nsecond: {:?}",
            op.log(),
            first.bgp_calls(),
            second.bgp_calls()
        )
    };
    api.apply("endpointslices", appliance_slice(&[&ip1, &ip2]));
    let neigh = |ip: &str| json!({"ipAddress": ip, "remoteAs": 64512, "remotePort": 179, "setMultiHop": false});
    wait_for(
        10,
        "each appliance peering with the other",
        || {
            (first.neighbors() == vec![neigh(&ip2)] && second.neighbors() == vec![neigh(&ip1)])
                .then_some(())
        },
        &diag,
    );
    assert_eq!(
        first.bgp_global(),
        vec![json!({"localAs": 64512, "routerId": ip1, "listenPort": 179, "setNextHopSelf": true})]
    );
    // The second goes: the first drops it as neighbour, with loxilb's DELETE.
    api.apply("endpointslices", appliance_slice(&[&ip1]));
    wait_for(
        10,
        "the gone appliance removed as neighbour",
        || first.neighbors().is_empty().then_some(()),
        &diag,
    );
    assert!(
        calls(&first, "DELETE").contains(&format!("DELETE {ip2} remoteAs=64512")),
        "{}",
        diag()
    );
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}
