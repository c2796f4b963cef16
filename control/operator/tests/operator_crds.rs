//! kube-loxilb's custom resources against the real operator binary, the stand-in API server
//! and fake appliances: a LoxiURL adds an appliance (which then gets every rule) and a pool;
//! BGPPeerService peers reach every appliance's BGP neighbour API, a refusing appliance gets
//! Events and backed-off retries, and deleting the object deletes the neighbour. Needs no root.

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

fn names_and_ips(f: &FakeAppliance) -> Vec<(String, String, usize)> {
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
fn a_loxiurl_adds_an_appliance_and_a_pool_and_its_deletion_stops_every_call() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let first = FakeAppliance::default();
    let p1 = first.start();
    let second = FakeAppliance::default();
    let p2 = second.start();
    let (dir, kc) = scratch("loxiurl", api_port);
    // A long resync period: the new appliance must be filled by the change itself.
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{p1}"),
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--resyncPeriod=300",
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nfirst: {:?}\nsecond: {:?}\nevents: {:?}",
            op.log(),
            names_and_ips(&first),
            names_and_ips(&second),
            api.events()
        )
    };
    api.apply("endpointslices", slice("shop", "web", &["10.1.0.1"]));
    api.apply("services", service("shop", "web", 80, json!({})));
    api.apply(
        "endpointslices",
        slice("shop", "api", &["10.1.0.2", "10.1.0.3"]),
    );
    api.apply("services", service("shop", "api", 443, json!({})));
    wait_for(
        20,
        "both rules on the first appliance",
        || (first.rules().len() == 2).then_some(()),
        &diag,
    );
    assert_eq!(second.calls(), 0);

    // The second appliance is named by a LoxiURL: it gets every rule, well before a resync.
    api.apply(
        "loxiurls",
        json!({"apiVersion": "loxiurl.loxilb.io/v1", "kind": "LoxiURL",
               "metadata": {"name": "second"},
               "spec": {"loxiURL": format!("http://127.0.0.1:{p2}/")}}),
    );
    wait_for(
        10,
        "every rule on the second appliance",
        || (names_and_ips(&second) == names_and_ips(&first)).then_some(()),
        &diag,
    );

    // A cidrpool LoxiURL: a Service waiting for that pool gets an address from it.
    let pooled = service(
        "shop",
        "pooled",
        80,
        json!({"loxilb.io/poolSelect": "extra"}),
    );
    api.apply("endpointslices", slice("shop", "pooled", &["10.1.0.4"]));
    api.apply("services", pooled);
    wait_for(
        10,
        "an AddressNotAllocated event (no pool extra yet)",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "AddressNotAllocated")
        },
        &diag,
    );
    api.apply(
        "loxiurls",
        json!({"apiVersion": "loxiurl.loxilb.io/v1", "kind": "LoxiURL",
               "metadata": {"name": "extra"},
               "spec": {"loxiURL": "198.18.200.0/30", "type": "cidrpool"}}),
    );
    for f in [&first, &second] {
        wait_for(
            10,
            "the pooled Service's rule from pool extra",
            || {
                f.rules().into_iter().find(|r| {
                    r.service_arguments.name == "shop_pooled:llb-inst0"
                        && r.service_arguments.external_ip == "198.18.200.1"
                })
            },
            &diag,
        );
    }
    // An unimplemented type is refused with an Event on the object, nothing applied.
    api.apply(
        "loxiurls",
        json!({"apiVersion": "loxiurl.loxilb.io/v1", "kind": "LoxiURL",
               "metadata": {"name": "inst"},
               "spec": {"loxiURL": "10.0.0.1", "type": "hostcidr"}}),
    );
    let ev = wait_for(
        10,
        "a LoxiURLRefused event",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "LoxiURLRefused")
        },
        &diag,
    );
    assert_eq!(ev["regarding"]["name"], "inst", "{ev}");
    assert!(ev["note"].as_str().unwrap().contains("hostcidr"), "{ev}");

    // Deleting the LoxiURL: the second appliance gets no more calls, the first goes on.
    api.delete("loxiurls", "", "second");
    wait_for(
        10,
        "the appliance removed",
        || {
            op.log()
                .contains("appliances added at run time now []")
                .then_some(())
        },
        &diag,
    );
    // A reconcile of every Service may still be on its way to the old snapshot.
    std::thread::sleep(Duration::from_millis(500));
    let before = second.calls();
    api.apply(
        "endpointslices",
        slice("shop", "web", &["10.1.0.1", "10.1.0.5"]),
    );
    wait_for(
        10,
        "the scaled rule on the first appliance",
        || {
            first.rules().into_iter().find(|r| {
                r.service_arguments.name == "shop_web:llb-inst0" && r.endpoints.len() == 2
            })
        },
        &diag,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(second.calls(), before, "{}", diag());
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}

fn peer(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "bgppeer.loxilb.io/v1", "kind": "BGPPeerService",
           "metadata": {"name": name},
           "spec": {"ipAddress": ip, "remoteAs": 65123, "remotePort": 179}})
}

#[test]
fn bgp_peers_reach_every_appliance_and_a_refusal_is_an_event_retried_with_backoff() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let (api, api_port) = start_api();
    let loxilb_like = FakeAppliance::default();
    let p1 = loxilb_like.start();
    let oxlb_like = FakeAppliance::default();
    oxlb_like.refuse_bgp(true);
    let p2 = oxlb_like.start();
    let (dir, kc) = scratch("bgp", api_port);
    let op = spawn_operator(
        &dir,
        &kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{p1},http://127.0.0.1:{p2}"),
            "--externalCIDR=198.18.100.0/24",
            "--enableBGPCRDs",
            "--resyncPeriod=300",
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nloxilb-like: {:?}\noxlb-like: {:?}\nevents: {:?}",
            op.log(),
            loxilb_like.bgp_calls(),
            oxlb_like.bgp_calls(),
            api.events()
        )
    };
    api.apply("bgppeerservices", peer("peer1", "123.123.123.2"));
    wait_for(
        10,
        "the neighbour on the accepting appliance",
        || (!loxilb_like.neighbors().is_empty()).then_some(()),
        &diag,
    );
    assert_eq!(
        loxilb_like.neighbors(),
        vec![json!({"ipAddress": "123.123.123.2", "remoteAs": 65123, "remotePort": 179})]
    );

    // The refusing appliance: an Event naming it, retries further and further apart.
    let ev = wait_for(
        10,
        "an ApplianceRefused event",
        || {
            api.events()
                .into_iter()
                .find(|e| e["reason"] == "ApplianceRefused")
        },
        &diag,
    );
    assert_eq!(ev["regarding"]["name"], "peer1", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    let note = ev["note"].as_str().unwrap();
    assert!(note.contains(&format!("127.0.0.1:{p2}")), "{note}");
    assert!(note.contains("HTTP 404"), "{note}");
    let attempts = wait_for(
        15,
        "three attempts on the refusing appliance",
        || {
            let c = oxlb_like.bgp_calls();
            (c.len() >= 3).then_some(c)
        },
        &diag,
    );
    let gap = |i: usize| attempts[i + 1].0.duration_since(attempts[i].0);
    // The retry delay starts at 1 s and doubles. Only lower bounds: a loaded machine can only
    // lengthen a gap, so comparing two measured gaps would be flaky.
    assert!(gap(0) >= Duration::from_millis(800), "{attempts:?}");
    assert!(
        gap(1) >= Duration::from_millis(1800),
        "no backoff: {attempts:?}"
    );
    // Never pretended: nothing says it was added there.
    let added_there = format!("appliance http://127.0.0.1:{p2}: BGP neighbour");
    assert!(!op.log().contains(&added_there), "{}", diag());
    // The accepting appliance was asked once (no resync yet).
    assert_eq!(loxilb_like.bgp_calls().len(), 1, "{}", diag());

    // The appliance gains BGP: the next retry succeeds.
    oxlb_like.refuse_bgp(false);
    wait_for(
        20,
        "the neighbour on the formerly refusing appliance",
        || (!oxlb_like.neighbors().is_empty()).then_some(()),
        &diag,
    );
    // The stand-in records the neighbour before it answers; the operator logs after.
    wait_for(
        10,
        "the operator's log of the neighbour added",
        || op.log().contains(&added_there).then_some(()),
        &diag,
    );

    // Deleting the object deletes the neighbour on both, with loxilb's path and query.
    api.delete("bgppeerservices", "", "peer1");
    for f in [&loxilb_like, &oxlb_like] {
        wait_for(
            10,
            "the neighbour deleted",
            || f.neighbors().is_empty().then_some(()),
            &diag,
        );
        assert_eq!(
            f.bgp_calls().last().unwrap().1,
            "DELETE 123.123.123.2 remoteAs=65123",
            "{}",
            diag()
        );
    }
    drop(op);
    let _ = std::fs::remove_dir_all(&dir);
}
