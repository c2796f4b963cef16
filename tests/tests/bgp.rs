//! BGP against real routing daemons: bird2 (and gobgpd) peer with oxlb in the test's
//! namespaces, learn the VIP of a rule created with `bgp` set, with oxlb's address as next
//! hop, and lose it when the rule goes; the session comes back from the saved configuration
//! after a restart; a BACKUP role changes the MED; an IPv6 VIP travels in MP_REACH_NLRI over an
//! IPv6 session. Traffic from the bird namespace, and from a client behind it, reaches the VIP
//! over the learned route alone. Needs root, `bird2` and `gobgpd` (deploy/setup.sh installs
//! them).
//!
//! bird runs in the client namespace (198.18.0.2, AS 65002) and peers with oxlb's client-side
//! address (198.18.0.1, AS 65001); gobgpd runs in backend 3's namespace (198.18.31.3, AS
//! 65003) and peers with oxlb's backend-side address. Both daemons are started by the test,
//! stopped by PID, and configured through files in the topology's scratch directory.

use oxlb_tests::{
    ip, parse_answer, unique_prefix, vip_request_body, ChildGuard, Netns, Node, Topology,
    TopologyOptions, BACKEND_NAMES, CLIENT_IP, LB_BACKEND_SIDE_IP, LB_CLIENT_SIDE_IP, VIP,
    VIP_PORT,
};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

const LOCAL_AS: u32 = 65001;
const BIRD_AS: u32 = 65002;
const GOBGP_AS: u32 = 65003;
const GOBGP_IP: &str = "198.18.31.3";
/// How long a session may take to come up or a route to appear or go: bird's and oxlb's first
/// connection attempts may collide and back off for a few seconds.
const CONVERGE: Duration = Duration::from_secs(45);

/// Panics, naming the Debian package, unless `program` is installed: a missing daemon is a
/// failed test, never a skipped one.
fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        || ["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file());
    assert!(
        found,
        "{program} is not installed: `apt-get install {package}` (deploy/setup.sh installs it)"
    );
}

/// bird in the client namespace, with its control socket in the scratch directory.
struct Bird {
    socket: PathBuf,
    _process: ChildGuard,
}

impl Bird {
    /// Starts bird in the client namespace peering with oxlb's client-side address; routes it
    /// learns go into the namespace's kernel table.
    fn start(topo: &Topology) -> Bird {
        require("bird", "bird2");
        let dir = topo.scratch_dir();
        let conf = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        std::fs::write(
            &conf,
            format!(
                "router id {CLIENT_IP};\n\
                 protocol device {{ }}\n\
                 protocol kernel {{ ipv4 {{ export all; }}; }}\n\
                 protocol bgp oxlb {{\n\
                 \x20 local {CLIENT_IP} as {BIRD_AS};\n\
                 \x20 neighbor {LB_CLIENT_SIDE_IP} as {LOCAL_AS};\n\
                 \x20 connect retry time 2;\n\
                 \x20 error wait time 1, 4;\n\
                 \x20 ipv4 {{ import all; export none; }};\n\
                 }}\n"
            ),
        )
        .expect("write bird.conf");
        let process = topo.spawn(
            Node::Client,
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().expect("utf-8 path"),
                "-s",
                socket.to_str().expect("utf-8 path"),
                "-P",
                dir.join("bird.pid").to_str().expect("utf-8 path"),
            ],
            "bird",
        );
        Bird {
            socket,
            _process: process,
        }
    }

    fn birdc(&self, topo: &Topology, args: &[&str]) -> String {
        let mut all = vec!["birdc", "-s", self.socket.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let out = topo.exec(Node::Client, &all);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What bird knows of the VIP's host route, attributes included.
    fn vip_route(&self, topo: &Topology) -> String {
        self.birdc(topo, &["show", "route", &format!("{VIP}/32"), "all"])
    }
}

/// Polls `probe` until it returns `Some`, at most [`CONVERGE`]; panics with `what` and the
/// last thing seen.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what} did not happen within {CONVERGE:?}; last seen:\n{last}"
                );
                thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

fn post(topo: &Topology, path: &str, body: &str) {
    let (status, answer) = topo.api("POST", path, Some(body));
    assert_eq!(status, 200, "POST {path} {body}: {answer}");
}

/// The appliance's AS and router id, and the standard VIP created with `bgp` set.
fn configure(topo: &Topology, neighbours: &[(&str, u32)]) {
    post(
        topo,
        "/netlox/v1/config/bgp/global",
        &format!(r#"{{"localAs":{LOCAL_AS},"routerId":"{LB_CLIENT_SIDE_IP}"}}"#),
    );
    for (ip, asn) in neighbours {
        post(
            topo,
            "/netlox/v1/config/bgp/neigh",
            &format!(r#"{{"ipAddress":"{ip}","remoteAs":{asn}}}"#),
        );
    }
    let mut rule: serde_json::Value = serde_json::from_str(&vip_request_body("tcp")).unwrap();
    rule["serviceArguments"]["bgp"] = true.into();
    post(topo, "/netlox/v1/config/loadbalancer", &rule.to_string());
}

/// The neighbour's state as `GET /config/bgp/neigh/all` lists it.
fn neighbour_state(topo: &Topology, ip: &str) -> String {
    let (status, body) = topo.api("GET", "/netlox/v1/config/bgp/neigh/all", None);
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    list["bgpNeiAttr"]
        .as_array()
        .expect("bgpNeiAttr")
        .iter()
        .find(|n| n["ipAddress"] == ip)
        .map(|n| n["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{ip} is not listed: {body}"))
}

fn wait_established(topo: &Topology, ip: &str) {
    wait_for(
        &format!("the session with {ip} becoming established"),
        || {
            let s = neighbour_state(topo, ip);
            if s == "ESTABLISHED" {
                Ok(())
            } else {
                Err(s)
            }
        },
    );
}

/// Waits until bird has the VIP from oxlb and returns what it shows.
fn wait_bird_has_vip(topo: &Topology, bird: &Bird) -> String {
    wait_for("bird learning the VIP", || {
        let r = bird.vip_route(topo);
        if r.contains(&format!("{VIP}/32")) {
            Ok(r)
        } else {
            Err(r)
        }
    })
}

#[test]
fn bird_learns_the_vip_with_the_appliance_as_next_hop_and_loses_it_when_the_rule_goes() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    configure(&topo, &[(CLIENT_IP, BIRD_AS)]);
    wait_established(&topo, CLIENT_IP);
    let route = wait_bird_has_vip(&topo, &bird);
    // Shown with --nocapture: what bird learned.
    println!("{route}");
    for expected in [
        format!("via {LB_CLIENT_SIDE_IP} on c0"),
        format!("BGP.as_path: {LOCAL_AS}"),
        "BGP.origin: IGP".to_owned(),
        format!("BGP.next_hop: {LB_CLIENT_SIDE_IP}"),
        // The MED of a MASTER (or an appliance without HA state), as loxilb sends it.
        "BGP.med: 10".to_owned(),
    ] {
        assert!(route.contains(&expected), "no {expected:?} in:\n{route}");
    }
    assert!(
        !route.contains("BGP.local_pref: 5000"),
        "LOCAL_PREF went to an eBGP neighbour:\n{route}"
    );

    // Real traffic over the learned route only: without its default route the client
    // namespace reaches the VIP through what bird installed.
    topo.exec_ok(Node::Client, &["ip", "route", "del", "default"]);
    let kernel = topo.exec_ok(Node::Client, &["ip", "route", "show", &format!("{VIP}/32")]);
    assert!(
        kernel.contains(&format!("via {LB_CLIENT_SIDE_IP}")) && kernel.contains("proto bird"),
        "bird did not install the VIP's route: {kernel:?}"
    );
    let answer = topo
        .http_get(Node::Client, &format!("http://{VIP}:{VIP_PORT}/"), 5)
        .unwrap_or_else(|e| panic!("{e}\noxlb:\n{}", oxlb.log()));
    let answer = parse_answer(&answer);
    assert!(
        BACKEND_NAMES.contains(&answer.backend.as_str()),
        "{answer:?}"
    );
    assert_eq!(answer.peer_ip, CLIENT_IP);

    let page = topo
        .http_get(Node::Lb, "http://127.0.0.1:11111/metrics", 5)
        .expect("metrics");
    let series =
        format!("oxlb_bgp_session_established{{peer=\"{CLIENT_IP}\",remote_as=\"{BIRD_AS}\"}} 1");
    assert!(page.contains(&series), "no {series} in:\n{page}");

    let (status, body) = topo.delete_vip("tcp");
    assert_eq!(status, 200, "{body}");
    wait_for("bird forgetting the VIP", || {
        let r = bird.vip_route(&topo);
        if r.contains(&format!("{VIP}/32")) {
            Err(r)
        } else {
            Ok(())
        }
    });
    let kernel = topo.exec_ok(Node::Client, &["ip", "route", "show", &format!("{VIP}/32")]);
    assert!(
        kernel.trim().is_empty(),
        "the route stayed in the kernel: {kernel:?}"
    );
    assert_eq!(neighbour_state(&topo, CLIENT_IP), "ESTABLISHED");
}

#[test]
fn the_session_comes_back_after_a_restart_from_the_saved_configuration() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    configure(&topo, &[(CLIENT_IP, BIRD_AS)]);
    wait_bird_has_vip(&topo, &bird);

    // A clean stop says goodbye (Cease), so bird withdraws the route at once rather than
    // after its hold time.
    oxlb.stop();
    wait_for("bird dropping the VIP after oxlb stopped", || {
        let r = bird.vip_route(&topo);
        if r.contains(&format!("{VIP}/32")) {
            Err(r)
        } else {
            Ok(())
        }
    });

    let _oxlb = topo.start_oxlb(&[]);
    // Nothing is posted again: the saved configuration brings the session and the route back.
    let route = wait_bird_has_vip(&topo, &bird);
    assert!(
        route.contains(&format!("via {LB_CLIENT_SIDE_IP}")),
        "{route}"
    );
    wait_established(&topo, CLIENT_IP);
    let (_, body) = topo.api("GET", "/netlox/v1/config/bgp/neigh/all", None);
    assert!(body.contains(&format!("\"remoteAs\":{BIRD_AS}")), "{body}");
}

#[test]
fn a_backup_instance_offers_the_vip_with_loxilbs_backup_med() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    configure(&topo, &[(CLIENT_IP, BIRD_AS)]);
    wait_bird_has_vip(&topo, &bird);
    post(
        &topo,
        "/netlox/v1/config/cistate",
        r#"{"instance":"llb-inst0","state":"BACKUP"}"#,
    );
    wait_for("bird seeing the BACKUP's MED", || {
        let r = bird.vip_route(&topo);
        if r.contains("BGP.med: 70") {
            Ok(())
        } else {
            Err(r)
        }
    });
    post(
        &topo,
        "/netlox/v1/config/cistate",
        r#"{"instance":"llb-inst0","state":"MASTER"}"#,
    );
    wait_for("bird seeing the MASTER's MED again", || {
        let r = bird.vip_route(&topo);
        if r.contains("BGP.med: 10") {
            Ok(())
        } else {
            Err(r)
        }
    });
}

#[test]
fn gobgpd_learns_the_vip_over_the_backend_side_alongside_bird() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    require("gobgpd", "gobgpd");
    let _oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    let dir = topo.scratch_dir();
    let conf = dir.join("gobgpd.toml");
    std::fs::write(
        &conf,
        format!(
            "[global.config]\n\
             as = {GOBGP_AS}\n\
             router-id = \"{GOBGP_IP}\"\n\
             [[neighbors]]\n\
             [neighbors.config]\n\
             neighbor-address = \"{LB_BACKEND_SIDE_IP}\"\n\
             peer-as = {LOCAL_AS}\n\
             [neighbors.timers.config]\n\
             connect-retry = 2\n"
        ),
    )
    .expect("write gobgpd.toml");
    let api = "127.0.0.1:50051";
    let _gobgpd = topo.spawn(
        Node::Backend(3),
        &[
            "gobgpd",
            "-f",
            conf.to_str().expect("utf-8 path"),
            "-t",
            "toml",
            "--api-hosts",
            api,
            "--pprof-disable",
            "-p",
        ],
        "gobgpd",
    );
    configure(&topo, &[(CLIENT_IP, BIRD_AS), (GOBGP_IP, GOBGP_AS)]);
    wait_bird_has_vip(&topo, &bird);
    let rib = wait_for("gobgpd learning the VIP", || {
        let out = topo.exec(
            Node::Backend(3),
            &[
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
                "global",
                "rib",
                "-a",
                "ipv4",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains(&format!("{VIP}/32")) {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let line = rib
        .lines()
        .find(|l| l.contains(&format!("{VIP}/32")))
        .unwrap_or_default();
    println!("{rib}");
    assert!(line.contains(LB_BACKEND_SIDE_IP), "next hop: {line}");
    assert!(line.contains(&LOCAL_AS.to_string()), "AS path: {line}");
    wait_established(&topo, GOBGP_IP);
}

#[test]
fn bird_learns_an_ipv6_vip_over_an_ipv6_session_through_mp_reach_nlri() {
    const LB6: &str = "fd00:18::1";
    const CLIENT6: &str = "fd00:18::2";
    const VIP6: &str = "fd00:100::1";
    require("bird", "bird2");
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    topo.exec_ok(
        Node::Lb,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{LB6}/64"),
            "dev",
            "lb0",
            "nodad",
        ],
    );
    topo.exec_ok(
        Node::Client,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{CLIENT6}/64"),
            "dev",
            "c0",
            "nodad",
        ],
    );
    let _oxlb = topo.start_oxlb(&[]);
    let dir = topo.scratch_dir();
    let conf = dir.join("bird6.conf");
    let socket = dir.join("bird6.ctl");
    std::fs::write(
        &conf,
        format!(
            "router id {CLIENT_IP};\n\
             protocol device {{ }}\n\
             protocol bgp oxlb6 {{\n\
             \x20 local {CLIENT6} as {BIRD_AS};\n\
             \x20 neighbor {LB6} as {LOCAL_AS};\n\
             \x20 connect retry time 2;\n\
             \x20 ipv6 {{ import all; export none; }};\n\
             }}\n"
        ),
    )
    .expect("write bird6.conf");
    let _bird = topo.spawn(
        Node::Client,
        &[
            "bird",
            "-f",
            "-c",
            conf.to_str().expect("utf-8 path"),
            "-s",
            socket.to_str().expect("utf-8 path"),
            "-P",
            dir.join("bird6.pid").to_str().expect("utf-8 path"),
        ],
        "bird6",
    );
    post(
        &topo,
        "/netlox/v1/config/bgp/global",
        &format!(r#"{{"localAs":{LOCAL_AS},"routerId":"{LB_CLIENT_SIDE_IP}"}}"#),
    );
    post(
        &topo,
        "/netlox/v1/config/bgp/neigh",
        &format!(r#"{{"ipAddress":"{CLIENT6}","remoteAs":{BIRD_AS}}}"#),
    );
    let rule = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": VIP_PORT, "protocol": "tcp", "bgp": true},
        "endpoints": [{"endpointIP": "fd00:31::1", "targetPort": 8080, "weight": 1}],
    });
    post(&topo, "/netlox/v1/config/loadbalancer", &rule.to_string());
    let show = || {
        let out = topo.exec(
            Node::Client,
            &[
                "birdc",
                "-s",
                socket.to_str().expect("utf-8 path"),
                "show",
                "route",
                &format!("{VIP6}/128"),
                "all",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let route = wait_for("bird learning the IPv6 VIP", || {
        let r = show();
        if r.contains(&format!("{VIP6}/128")) {
            Ok(r)
        } else {
            Err(r)
        }
    });
    println!("{route}");
    for expected in [
        format!("BGP.next_hop: {LB6}"),
        format!("BGP.as_path: {LOCAL_AS}"),
        "BGP.med: 10".to_owned(),
    ] {
        assert!(route.contains(&expected), "no {expected:?} in:\n{route}");
    }
    let (status, body) = topo.api(
        "DELETE",
        &format!(
            "/netlox/v1/config/loadbalancer/externalipaddress/{VIP6}/port/{VIP_PORT}/protocol/tcp"
        ),
        None,
    );
    assert_eq!(status, 200, "{body}");
    wait_for("bird forgetting the IPv6 VIP (MP_UNREACH_NLRI)", || {
        let r = show();
        if r.contains(&format!("{VIP6}/128")) {
            Err(r)
        } else {
            Ok(())
        }
    });
}

#[test]
fn a_client_behind_the_bird_router_reaches_the_vip_over_the_learned_route() {
    const FAR_IP: &str = "198.18.2.2";
    const ROUTER_IP: &str = "198.18.2.1";
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    // A client one hop behind the router that runs bird: declared after the topology, so its
    // namespace goes first.
    let far = Netns::create(&format!("{}-far", topo.prefix()));
    ip(&[
        "link",
        "add",
        "f0",
        "netns",
        far.name(),
        "type",
        "veth",
        "peer",
        "name",
        "c1",
        "netns",
        topo.ns(Node::Client).name(),
    ]);
    far.exec_ok(&["ip", "addr", "add", &format!("{FAR_IP}/24"), "dev", "f0"]);
    far.exec_ok(&["ip", "link", "set", "f0", "up"]);
    far.exec_ok(&["ip", "route", "add", "default", "via", ROUTER_IP]);
    topo.exec_ok(
        Node::Client,
        &["ip", "addr", "add", &format!("{ROUTER_IP}/24"), "dev", "c1"],
    );
    topo.exec_ok(Node::Client, &["ip", "link", "set", "c1", "up"]);
    topo.exec_ok(
        Node::Client,
        &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    );
    // Only the learned route leads to the VIP; the LB knows the far network behind the router.
    topo.exec_ok(Node::Client, &["ip", "route", "del", "default"]);
    topo.exec_ok(
        Node::Lb,
        &["ip", "route", "add", "198.18.2.0/24", "via", CLIENT_IP],
    );
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    configure(&topo, &[(CLIENT_IP, BIRD_AS)]);
    wait_bird_has_vip(&topo, &bird);
    let url = format!("http://{VIP}:{VIP_PORT}/");
    let out = far.exec(&["curl", "-sS", "--fail", "--max-time", "5", &url]);
    assert!(
        out.status.success(),
        "curl from behind the router: {}\noxlb:\n{}",
        String::from_utf8_lossy(&out.stderr),
        oxlb.log()
    );
    let answer = parse_answer(&String::from_utf8_lossy(&out.stdout));
    assert!(
        BACKEND_NAMES.contains(&answer.backend.as_str()),
        "{answer:?}"
    );
    assert_eq!(answer.peer_ip, FAR_IP, "DNAT keeps the client's address");

    let (status, body) = topo.delete_vip("tcp");
    assert_eq!(status, 200, "{body}");
    wait_for("the router losing its route to the VIP", || {
        let r = topo.exec_ok(Node::Client, &["ip", "route", "show", &format!("{VIP}/32")]);
        if r.trim().is_empty() {
            Ok(())
        } else {
            Err(r)
        }
    });
    let out = far.exec(&["curl", "-sS", "--fail", "--max-time", "2", &url]);
    assert!(!out.status.success(), "the VIP answered without a route");
}

/// Runs `oxlbctl ARGS` in the LB namespace and returns its stdout, panicking unless it exits 0.
fn oxlbctl(topo: &Topology, args: &[&str]) -> String {
    let bin = oxlb_tests::binary("oxlbctl");
    let mut all = vec![bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = topo.exec(Node::Lb, &all);
    assert!(
        out.status.success(),
        "oxlbctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readmes_oxlbctl_bgp_commands_bring_a_session_up_and_take_it_down() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _oxlb = topo.start_oxlb(&[]);
    let bird = Bird::start(&topo);
    let as_text = LOCAL_AS.to_string();
    let peer_as = BIRD_AS.to_string();
    oxlbctl(
        &topo,
        &[
            "set",
            "bgp",
            "global",
            "--as",
            &as_text,
            "--router-id",
            LB_CLIENT_SIDE_IP,
        ],
    );
    oxlbctl(&topo, &["create", "bgpneigh", CLIENT_IP, &peer_as]);
    oxlbctl(
        &topo,
        &[
            "create",
            "lb",
            VIP,
            &format!("--tcp={VIP_PORT}:8080"),
            "--endpoints=198.18.31.1:1",
            "--bgp",
        ],
    );
    wait_bird_has_vip(&topo, &bird);
    let table = wait_for("oxlbctl get bgpneigh showing the session up", || {
        let t = oxlbctl(&topo, &["get", "bgpneigh"]);
        if t.contains("ESTABLISHED") {
            Ok(t)
        } else {
            Err(t)
        }
    });
    println!("{table}");
    assert!(
        table.contains(CLIENT_IP) && table.contains(&peer_as),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&oxlbctl(&topo, &["-o", "json", "get", "bgpneigh"])).unwrap();
    assert_eq!(json["bgpNeiAttr"][0]["state"], "ESTABLISHED", "{json}");

    // Deleting the neighbour closes its session (Cease): bird drops the route at once.
    oxlbctl(&topo, &["delete", "bgpneigh", CLIENT_IP]);
    wait_for(
        "bird dropping the VIP after the neighbour was deleted",
        || {
            let r = bird.vip_route(&topo);
            if r.contains(&format!("{VIP}/32")) {
                Err(r)
            } else {
                Ok(())
            }
        },
    );
    let json: serde_json::Value =
        serde_json::from_str(&oxlbctl(&topo, &["-o", "json", "get", "bgpneigh"])).unwrap();
    assert_eq!(json, serde_json::json!({"bgpNeiAttr": []}));
}
