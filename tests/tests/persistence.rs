//! Nothing the API accepted is lost: oxlb is killed with SIGKILL in the middle of a stream of
//! changes, and the restarted oxlb runs every change that was answered with success, and no
//! change only in part. Needs root; without it every test fails, saying so.

use oxlb_tests::{
    parse_answer, unique_prefix, Node, OxlbGuard, Topology, TopologyOptions, BACKEND_IPS,
    BACKEND_NAMES, BACKEND_PORT, VIP,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The first service port; the initial services use `BASE_PORT..BASE_PORT + SERVICES`.
const BASE_PORT: u16 = 10000;
const SERVICES: u16 = 200;
/// Changes also create services on ports past the initial ones, up to this many in all.
const PORT_SPAN: u16 = 260;
/// Bounds of the change stream: acknowledged changes before the kill, and changes in all.
const CHANGES_BEFORE_KILL: usize = 150;
const MAX_CHANGES: usize = 5000;
const CREATE_BUDGET: Duration = Duration::from_secs(120);
const CHURN_BUDGET: Duration = Duration::from_secs(120);

const CREATE: &str = "/netlox/v1/config/loadbalancer";
const LIST: &str = "/netlox/v1/config/loadbalancer/all";

/// One version of a service's endpoint set: version 0 is the three backends with weight 1;
/// later versions vary the number of backends, their order and their weights, so a listing
/// that mixes two versions is told apart from both.
type Endpoints = BTreeSet<(String, i64)>;

fn version_endpoints(version: u32) -> Vec<(&'static str, i64)> {
    if version == 0 {
        return BACKEND_IPS.iter().map(|ip| (*ip, 1)).collect();
    }
    let v = version as usize;
    let count = 1 + v % 3;
    let weight = 1 + (v % 5) as i64;
    (0..count)
        .map(|i| (BACKEND_IPS[(v / 3 + i) % 3], weight + i as i64))
        .collect()
}

fn endpoint_set(version: u32) -> Endpoints {
    version_endpoints(version)
        .into_iter()
        .map(|(ip, w)| (ip.to_string(), w))
        .collect()
}

fn body(port: u16, version: u32) -> String {
    let endpoints: Vec<Value> = version_endpoints(version)
        .into_iter()
        .map(|(ip, w)| json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": w}))
        .collect();
    json!({
        "serviceArguments": {"externalIP": VIP, "port": port, "protocol": "tcp", "name": format!("s{port}")},
        "endpoints": endpoints,
    })
    .to_string()
}

fn delete_path(port: u16) -> String {
    format!("/netlox/v1/config/loadbalancer/externalipaddress/{VIP}/port/{port}/protocol/tcp")
}

/// A change sent during the stream: after it, `port` runs `after` (None: deleted).
#[derive(Debug, Clone, Copy)]
struct Change {
    port: u16,
    after: Option<u32>,
    /// HTTP status of the answer; 0 if none came (oxlb was killed).
    status: u16,
}

/// Sends changes one at a time until the first one without a 200 answer (the kill), `stop`,
/// or the bounds; returns them in order.
fn churn(topo: &Topology, acked: &AtomicUsize, stop: &AtomicBool) -> Vec<Change> {
    let mut live: BTreeMap<u16, u32> = (0..SERVICES).map(|i| (BASE_PORT + i, 0)).collect();
    let mut changes = Vec::new();
    let deadline = Instant::now() + CHURN_BUDGET;
    for i in 0..MAX_CHANGES {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let port = BASE_PORT + ((i * 7) % usize::from(PORT_SPAN)) as u16;
        let version = i as u32 + 1;
        let (after, (status, reply)) = if live.contains_key(&port) && i % 4 == 0 {
            (None, topo.api("DELETE", &delete_path(port), None))
        } else {
            let b = body(port, version);
            (Some(version), topo.api("POST", CREATE, Some(&b)))
        };
        changes.push(Change {
            port,
            after,
            status,
        });
        if status != 200 {
            if status != 0 {
                eprintln!("change {i} on port {port} answered {status}: {reply}");
            }
            break;
        }
        match after {
            Some(v) => live.insert(port, v),
            None => live.remove(&port),
        };
        acked.fetch_add(1, Ordering::Relaxed);
    }
    changes
}

/// port -> endpoint set, from a `{"lbAttr": [...]}` listing; panics on anything but the
/// services this test creates.
fn listed(listing: &Value) -> BTreeMap<u16, Endpoints> {
    let mut out = BTreeMap::new();
    for entry in listing["lbAttr"].as_array().expect("lbAttr is a list") {
        let args = &entry["serviceArguments"];
        assert_eq!(args["externalIP"], VIP, "unexpected service {entry}");
        assert_eq!(args["protocol"], "tcp", "unexpected service {entry}");
        let port = args["port"].as_u64().expect("port") as u16;
        let endpoints: Endpoints = entry["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                assert_eq!(e["targetPort"], BACKEND_PORT, "{entry}");
                (
                    e["endpointIP"].as_str().expect("endpointIP").to_string(),
                    e["weight"].as_i64().expect("weight"),
                )
            })
            .collect();
        assert!(
            out.insert(port, endpoints).is_none(),
            "port {port} listed twice"
        );
    }
    out
}

fn list(topo: &Topology) -> Value {
    let (status, text) = topo.api("GET", LIST, None);
    assert_eq!(status, 200, "listing: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("listing is not JSON ({e}): {text}"))
}

#[test]
fn every_acknowledged_change_survives_a_sigkill_and_none_is_half_applied() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);

    let started = Instant::now();
    for i in 0..SERVICES {
        let port = BASE_PORT + i;
        let (status, reply) = topo.api("POST", CREATE, Some(&body(port, 0)));
        assert_eq!(status, 200, "creating service {i} (port {port}): {reply}");
        assert!(
            started.elapsed() < CREATE_BUDGET,
            "creating {SERVICES} services took over {CREATE_BUDGET:?} (at {i})"
        );
    }
    eprintln!("{SERVICES} services created in {:?}", started.elapsed());
    assert_eq!(listed(&list(&topo)).len(), usize::from(SERVICES));

    let acked = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (changes, oxlb_log) = std::thread::scope(|s| {
        let churner = s.spawn(|| churn(&topo, &acked, &stop));
        let deadline = Instant::now() + CHURN_BUDGET;
        while acked.load(Ordering::Relaxed) < CHANGES_BEFORE_KILL
            && Instant::now() < deadline
            && !churner.is_finished()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = oxlb.log();
        let status = OxlbGuard::kill(oxlb);
        eprintln!(
            "oxlb killed ({status}) after {} acknowledged changes",
            acked.load(Ordering::Relaxed)
        );
        stop.store(true, Ordering::Relaxed);
        (churner.join().expect("the change thread panicked"), log)
    });
    let acked_count = changes.iter().filter(|c| c.status == 200).count();
    assert!(
        acked_count >= CHANGES_BEFORE_KILL,
        "only {acked_count} changes were acknowledged before the kill; oxlb output:\n{oxlb_log}"
    );
    let unanswered: Vec<&Change> = changes.iter().filter(|c| c.status != 200).collect();
    assert!(
        unanswered.len() <= 1 && unanswered.iter().all(|c| c.status == 0),
        "a change was refused instead of applied: {unanswered:?}\n{oxlb_log}"
    );
    let in_flight = unanswered.first().copied();

    // The file the killed oxlb left parses as a whole.
    let file = topo.state_dir().join("state.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let saved: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON after the kill ({e}):\n{text}",
            file.display()
        )
    });
    assert_eq!(saved["version"], 1, "{}", file.display());
    assert!(saved["loadbalancers"].is_array(), "{}", file.display());

    let mut expected: BTreeMap<u16, Option<u32>> = (0..PORT_SPAN)
        .map(|i| (BASE_PORT + i, (i < SERVICES).then_some(0)))
        .collect();
    for c in changes.iter().filter(|c| c.status == 200) {
        expected.insert(c.port, c.after);
    }

    let oxlb = topo.start_oxlb(&[]);
    let listing = list(&topo);
    assert_eq!(
        listing["lbAttr"], saved["loadbalancers"],
        "the restarted oxlb does not run what its state file says"
    );
    let running = listed(&listing);
    for (&port, &want) in &expected {
        let got = running.get(&port);
        let want_set = want.map(endpoint_set);
        if got == want_set.as_ref() {
            continue;
        }
        let in_flight_set = in_flight
            .filter(|c| c.port == port)
            .map(|c| c.after.map(endpoint_set));
        assert!(
            in_flight_set.is_some_and(|s| got == s.as_ref()),
            "port {port}: running {got:?}, but the last acknowledged version is {want:?} \
             ({want_set:?}) and the unacknowledged change was {in_flight:?}"
        );
    }
    for port in running.keys() {
        assert!(expected.contains_key(port), "port {port} was never created");
    }

    // A restored service that none of the changes touched serves through its VIP.
    let port = (BASE_PORT..BASE_PORT + SERVICES)
        .find(|p| expected[p] == Some(0) && in_flight.is_none_or(|c| c.port != *p))
        .expect("some initial service is untouched");
    let url = format!("http://{VIP}:{port}/");
    let body = topo
        .http_get(Node::Client, &url, 5)
        .unwrap_or_else(|e| panic!("{e}\noxlb output:\n{}", oxlb.log()));
    let a = parse_answer(&body);
    assert!(
        BACKEND_NAMES.contains(&a.backend.as_str()),
        "{url} answered {body:?}"
    );
    eprintln!(
        "{} changes sent, {acked_count} acknowledged, in flight at the kill: {in_flight:?}",
        changes.len()
    );
}

#[test]
fn a_corrupt_state_file_stops_the_start_naming_the_file() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let dir = topo.state_dir();
    std::fs::create_dir_all(&dir).expect("state dir");
    let file = dir.join("state.json");
    std::fs::write(&file, "{\"version\":1,\"loadbalancers\":[{\"serviceArgu").expect("write");
    let out = topo.exec(
        Node::Lb,
        &[
            // Bounded even if oxlb wrongly started serving.
            "timeout",
            "20",
            oxlb_tests::oxlb_binary().to_str().expect("utf-8 path"),
            "run",
            "--iface",
            "lb0",
            "--iface",
            "lb1",
            "--state-dir",
            dir.to_str().expect("utf-8 path"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains(&file.display().to_string()) && line.contains("unusable"),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "{\"version\":1,\"loadbalancers\":[{\"serviceArgu",
        "the corrupt file was changed"
    );
}
