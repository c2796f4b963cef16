//! The loader against the real kernel, in throwaway network namespaces (needs root).
//!
//! Each test builds its own pair of namespaces joined by a veth: `a` holds `vxa`
//! (198.18.0.1/24), where the program is attached, and `b` holds `vxb` (198.18.0.2/24), which
//! sends the traffic (IPv6 tests add fd00::1/64 and fd00::2/64). Interface names and addresses
//! are the same in every test; the namespaces keep them apart, and their names carry the pid
//! and a counter.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use oxlb_tests::{in_netns, ip};
use oxlb_xdp::{AttachMode, LbKey, XdpError, XdpRedirect};

const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const IFACE_A: &str = "vxa";
const UDP: u8 = 17;
const TCP: u8 = 6;

/// Two namespaces and a veth between them; deleted on drop, also when the test panics.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn new() -> NetnsPair {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Own the names before creating anything, so Drop cleans up a half-built pair too.
        let pair = NetnsPair {
            a: format!("oxlbx-{pid}-{n}-a"),
            b: format!("oxlbx-{pid}-{n}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link", "add", IFACE_A, "netns", &pair.a, "type", "veth", "peer", "name", "vxb",
            "netns", &pair.b,
        ]);
        for (ns, dev, addr) in [(&pair.a, IFACE_A, ADDR_A), (&pair.b, "vxb", ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Adds a second veth pair `vxa2` (in a) / `vxb2` (in b), without addresses.
    fn add_second_link(&self) {
        ip(&[
            "link", "add", "vxa2", "netns", &self.a, "type", "veth", "peer", "name", "vxb2",
            "netns", &self.b,
        ]);
        ip(&["-n", &self.a, "link", "set", "vxa2", "up"]);
        ip(&["-n", &self.b, "link", "set", "vxb2", "up"]);
    }

    /// The `xdp` object of `ip -j link show dev <dev>` in namespace a, if any.
    fn xdp_of(&self, dev: &str) -> Option<serde_json::Value> {
        let out = ip(&["-n", &self.a, "-j", "link", "show", "dev", dev]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
        links[0].get("xdp").cloned()
    }

    fn wait_until_detached(&self, dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.xdp_of(dev).is_some() {
            assert!(
                Instant::now() < deadline,
                "XDP program still attached to {dev}: {:?}",
                self.xdp_of(dev)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping_from_b(&self, count: u32) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.b, "ping", "-q", "-c"])
            .arg(count.to_string())
            .args(["-i", "0.2", "-W", "2"])
            .arg(ADDR_A.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("run ping")
            .success()
    }

    /// Sends one UDP datagram from a (198.18.0.1:sport) to b (198.18.0.2:dport).
    fn udp_from_a(&self, sport: u16, dport: u16) {
        in_netns(&self.a, move || {
            let socket = bind_udp((ADDR_A, sport).into());
            socket
                .send_to(b"oxlb", (ADDR_B, dport))
                .expect("send UDP datagram");
        });
    }

    /// Sends one UDP datagram from b (198.18.0.2:sport) to a (198.18.0.1:dport).
    fn udp_from_b(&self, sport: u16, dport: u16) {
        in_netns(&self.b, move || {
            let socket = bind_udp((ADDR_B, sport).into());
            socket
                .send_to(b"oxlb", (ADDR_A, dport))
                .expect("send UDP datagram");
        });
    }
}

/// A UDP socket bound to `addr`. The same source port is bound again right after the last
/// socket on it closed; a process another test thread is starting at that moment may still
/// hold a copy of that socket until its exec closes it, so a refusal is retried briefly.
fn bind_udp(addr: std::net::SocketAddr) -> UdpSocket {
    let mut tries = 0;
    loop {
        match UdpSocket::bind(addr) {
            Ok(socket) => return socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind UDP socket to {addr}: {e}"),
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // Deleting a namespace destroys the veth ends inside it.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Polls `stats()` until `done` holds, so per-CPU counters written by softirq are seen.
fn wait_for_stats(
    xdp: &XdpRedirect,
    done: impl Fn(&oxlb_xdp::XdpStats) -> bool,
) -> oxlb_xdp::XdpStats {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let stats = xdp.stats().expect("read stats");
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn attach_runs_natively_on_a_veth_shows_in_ip_link_and_drop_detaches_it() {
    let pair = NetnsPair::new();
    let xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });

    let [iface] = xdp.interfaces() else {
        panic!("expected one interface, got {:?}", xdp.interfaces());
    };
    assert_eq!(iface.name, IFACE_A);
    assert_eq!(iface.slot, 0);
    assert_eq!(iface.mode, AttachMode::Native);
    let shown = pair.xdp_of(IFACE_A).expect("ip link shows an XDP program");
    assert_eq!(shown["mode"], 1, "1 = XDP_ATTACHED_DRV (native): {shown}");
    assert_eq!(shown["prog"]["name"], "oxlb_redirect");

    drop(xdp);
    pair.wait_until_detached(IFACE_A);
}

#[test]
fn second_attach_on_the_same_interface_is_refused_with_a_clear_error() {
    let pair = NetnsPair::new();
    let (first, second) = in_netns(&pair.a, || {
        let first = XdpRedirect::attach(&names(&[IFACE_A])).expect("first attach");
        let second = XdpRedirect::attach(&names(&[IFACE_A]));
        (first, second)
    });

    let error = second.err().expect("second attach must fail");
    assert!(matches!(error, XdpError::AlreadyAttached { ref name, .. } if name == IFACE_A));
    let message = error.to_string();
    assert!(
        message.contains("`vxa` already has an XDP program"),
        "{message}"
    );
    assert!(message.contains("ip link show dev vxa"), "{message}");
    assert!(message.contains("ip link set dev vxa xdp off"), "{message}");
    // The refusal left the first attachment alone.
    assert!(pair.xdp_of(IFACE_A).is_some());
    drop(first);
    pair.wait_until_detached(IFACE_A);
}

#[test]
fn a_program_attached_by_someone_else_in_generic_mode_is_refused_not_replaced() {
    let pair = NetnsPair::new();
    let object = concat!(env!("OUT_DIR"), "/redirect.bpf.o");
    ip(&[
        "-n",
        &pair.a,
        "link",
        "set",
        "dev",
        IFACE_A,
        "xdpgeneric",
        "obj",
        object,
        "sec",
        "xdp",
    ]);
    let foreign_id = pair.xdp_of(IFACE_A).expect("foreign program attached")["prog"]["id"].clone();

    let result = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).map(|_| ())
    });

    let message = result.expect_err("attach must be refused").to_string();
    assert!(
        message.contains(&format!("program id {foreign_id}")),
        "{message}"
    );
    assert!(message.contains("generic"), "{message}");
    assert!(message.contains("ip link set dev vxa xdp off"), "{message}");
    let still = pair
        .xdp_of(IFACE_A)
        .expect("foreign program still attached");
    assert_eq!(still["prog"]["id"], foreign_id);
}

#[test]
fn failing_on_the_second_interface_detaches_the_first_again() {
    let pair = NetnsPair::new();
    pair.add_second_link();
    let object = concat!(env!("OUT_DIR"), "/redirect.bpf.o");
    ip(&[
        "-n",
        &pair.a,
        "link",
        "set",
        "dev",
        "vxa2",
        "xdpgeneric",
        "obj",
        object,
        "sec",
        "xdp",
    ]);

    let result = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A, "vxa2"])).map(|_| ())
    });

    assert!(
        matches!(result, Err(XdpError::AlreadyAttached { ref name, .. }) if name == "vxa2"),
        "{result:?}"
    );
    pair.wait_until_detached(IFACE_A);
}

#[test]
fn an_unknown_interface_is_refused_with_its_name() {
    let pair = NetnsPair::new();
    let result = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&["oxlb-missing0"])).map(|_| ())
    });
    let message = result.expect_err("unknown interface").to_string();
    assert!(
        message.contains("`oxlb-missing0` does not exist"),
        "{message}"
    );
}

#[test]
fn ping_to_the_namespace_address_is_passed_to_the_kernel_and_still_answered() {
    let pair = NetnsPair::new();
    let xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });

    assert!(
        pair.ping_from_b(3),
        "ping 198.18.0.1 from b failed with XDP attached"
    );

    // Echo requests plus ARP; all passed, nothing redirected.
    let stats = wait_for_stats(&xdp, |s| s.passed >= 3);
    assert!(stats.passed >= 3, "{stats:?}");
    assert_eq!(stats.redirected, 0, "{stats:?}");
    assert_eq!(stats.no_socket, 0, "{stats:?}");
}

#[test]
fn sync_keys_adds_missing_keys_removes_the_others_and_the_program_matches_them() {
    let pair = NetnsPair::new();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    // Warm ARP so that the datagrams below are the only IPv4 packets that count.
    assert!(pair.ping_from_b(1));

    let vip = LbKey::v4(ADDR_A, 9999, UDP);
    let endpoint = LbKey::v4(ADDR_B, 7777, UDP);
    let other_vip = LbKey::v4(ADDR_A, 80, TCP);
    xdp.sync_keys(
        &BTreeSet::from([vip, other_vip]),
        &BTreeSet::from([endpoint]),
    )
    .expect("first sync");
    assert_eq!(
        xdp.installed_keys().expect("read keys"),
        (BTreeSet::from([vip, other_vip]), BTreeSet::from([endpoint]))
    );

    // A match with no AF_XDP socket registered goes to the kernel and is counted as such.
    let before = xdp.stats().expect("stats");
    pair.udp_from_b(40000, 9999); // destination is a VIP
    pair.udp_from_b(7777, 40001); // source is an endpoint
    let after = wait_for_stats(&xdp, |s| s.no_socket >= before.no_socket + 2);
    assert_eq!(after.no_socket - before.no_socket, 2, "{after:?}");
    assert_eq!(after.redirected, 0);

    let replacement = LbKey::v4(ADDR_A, 9998, UDP);
    xdp.sync_keys(&BTreeSet::from([vip, replacement]), &BTreeSet::new())
        .expect("second sync");
    assert_eq!(
        xdp.installed_keys().expect("read keys"),
        (BTreeSet::from([vip, replacement]), BTreeSet::new())
    );

    // The removed endpoint key no longer matches: its datagram is plain kernel traffic.
    let before = xdp.stats().expect("stats");
    pair.udp_from_b(7777, 40001);
    let after = wait_for_stats(&xdp, |s| s.passed > before.passed);
    assert_eq!(after.no_socket, before.no_socket, "{after:?}");
    assert!(after.passed > before.passed, "{after:?}");

    xdp.sync_keys(&BTreeSet::new(), &BTreeSet::new())
        .expect("emptying sync");
    assert_eq!(
        xdp.installed_keys().expect("read keys"),
        (BTreeSet::new(), BTreeSet::new())
    );
}

/// The program on a, with b an endpoint (its UDP port 7777 answers DNAT flows) and a our own
/// address whose UDP ports 40000-49999 are the SNAT range; ARP warmed.
fn endpoint_b_and_snat_on_a() -> (NetnsPair, XdpRedirect) {
    let pair = NetnsPair::new();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    assert!(pair.ping_from_b(1));
    xdp.sync_keys(
        &BTreeSet::new(),
        &BTreeSet::from([LbKey::v4(ADDR_B, 7777, UDP)]),
    )
    .expect("sync keys");
    xdp.sync_snat(&BTreeSet::from([LbKey::v4(ADDR_A, 0, UDP)]), 40000, 49999)
        .expect("sync snat");
    (pair, xdp)
}

#[test]
fn an_endpoints_answer_to_our_own_address_outside_the_snat_range_goes_to_the_kernel() {
    let (pair, xdp) = endpoint_b_and_snat_on_a();

    // To one of our ports outside the range: the host's own connection (a health probe).
    let before = xdp.stats().expect("stats");
    pair.udp_from_b(7777, 30000);
    let after = wait_for_stats(&xdp, |s| s.passed > before.passed);
    assert_eq!(after.no_socket, before.no_socket, "{after:?}");
    assert!(after.passed > before.passed, "{after:?}");

    // Inside the range: load-balancer traffic (no socket registered here, so counted so).
    pair.udp_from_b(7777, 40005);
    let later = wait_for_stats(&xdp, |s| s.no_socket > after.no_socket);
    assert_eq!(later.no_socket, after.no_socket + 1, "{later:?}");
}

#[test]
fn icmp_errors_quoting_our_translated_or_endpoint_bound_packets_are_steered_and_others_passed() {
    let (pair, xdp) = endpoint_b_and_snat_on_a();
    // Nothing listens on b: each datagram from a earns a real port unreachable from b's
    // kernel, quoting it.
    let before = xdp.stats().expect("stats");
    pair.udp_from_a(30000, 7778);
    // The error is passed (counted as such); give a mis-steered one time to show too.
    wait_for_stats(&xdp, |s| s.passed > before.passed);
    std::thread::sleep(Duration::from_millis(200));
    let after = xdp.stats().expect("stats");
    assert_eq!(
        after.no_socket, before.no_socket,
        "host's own datagram: {after:?}"
    );

    // From our address and a SNAT port: a translated request's error.
    pair.udp_from_a(40005, 7778);
    let snat = wait_for_stats(&xdp, |s| s.no_socket > after.no_socket);
    assert_eq!(snat.no_socket, after.no_socket + 1, "{snat:?}");
    // To an endpoint's port: a DNAT request's error.
    pair.udp_from_a(30001, 7777);
    let dnat = wait_for_stats(&xdp, |s| s.no_socket > snat.no_socket);
    assert_eq!(dnat.no_socket, snat.no_socket + 1, "{dnat:?}");
}

#[test]
fn registering_a_socket_for_an_interface_that_is_not_attached_is_refused() {
    let pair = NetnsPair::new();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    let ifindex = xdp.interfaces()[0].ifindex;

    let error = xdp
        .register_socket(ifindex + 100, 0, 0)
        .expect_err("unknown ifindex");
    assert!(matches!(error, XdpError::NotAttached { .. }), "{error}");
    let error = xdp.register_socket(ifindex, 64, 0).expect_err("queue 64");
    assert!(
        matches!(error, XdpError::QueueOutOfRange { queue: 64, .. }),
        "{error}"
    );
    // A UDP socket is not an AF_XDP socket: the kernel refuses it for the XSKMAP.
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let error = xdp
        .register_socket(ifindex, 0, udp.as_raw_fd())
        .expect_err("not an xsk");
    assert!(
        matches!(error, XdpError::Map { map: "xsks", .. }),
        "{error}"
    );
}

const ADDR6_A: &str = "fd00::1";
const ADDR6_B: &str = "fd00::2";
const ICMPV6: u8 = 58;

impl NetnsPair {
    /// Gives a fd00::1/64 and b fd00::2/64, usable at once (no duplicate address detection).
    fn add_ipv6(&self) {
        for (ns, dev, addr) in [
            (&self.a, IFACE_A, "fd00::1/64"),
            (&self.b, "vxb", "fd00::2/64"),
        ] {
            ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
    }

    fn ping6_from_b(&self, count: u32) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.b, "ping", "-6", "-q", "-c"])
            .arg(count.to_string())
            .args(["-i", "0.2", "-W", "2", ADDR6_A])
            .stdout(Stdio::null())
            .status()
            .expect("run ping -6")
            .success()
    }

    /// Sends one UDP datagram from a ([fd00::1]:sport) to b ([fd00::2]:dport).
    fn udp6_from_a(&self, sport: u16, dport: u16) {
        in_netns(&self.a, move || {
            let socket = bind_udp((ADDR6_A.parse::<Ipv6Addr>().unwrap(), sport).into());
            socket
                .send_to(b"oxlb", (ADDR6_B.parse::<Ipv6Addr>().unwrap(), dport))
                .expect("send UDP datagram");
        });
    }

    /// The kernel's neighbour entry in b for a's IPv6 address, as `ip -j neigh` shows it.
    fn neighbour6_in_b(&self) -> Option<serde_json::Value> {
        let out = ip(&["-n", &self.b, "-j", "-6", "neigh", "show", ADDR6_A]);
        let entries: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
        entries.as_array().and_then(|e| e.first()).cloned()
    }
}

#[test]
fn icmpv6_echo_requests_to_a_vip_are_steered_while_neighbour_discovery_reaches_the_kernel() {
    let pair = NetnsPair::new();
    pair.add_ipv6();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    let vip: std::net::Ipv6Addr = ADDR6_A.parse().unwrap();
    xdp.sync_keys(
        &BTreeSet::from([LbKey::v6(vip, 0, ICMPV6)]),
        &BTreeSet::new(),
    )
    .expect("sync keys");
    assert!(pair.neighbour6_in_b().is_none(), "b knows nothing of a yet");

    // b must first solicit a's MAC: that solicitation, and a's own one for b, must reach the
    // kernels. The echo requests then match the VIP's key; with no AF_XDP socket registered
    // they are counted as such and handed to the kernel, which answers them.
    let before = xdp.stats().expect("stats");
    assert!(
        pair.ping6_from_b(3),
        "ping -6 fd00::1 from b failed with XDP attached"
    );
    let after = wait_for_stats(&xdp, |s| s.no_socket >= before.no_socket + 3);
    assert_eq!(
        after.no_socket - before.no_socket,
        3,
        "exactly the three echo requests were steered: {after:?}"
    );
    assert!(after.passed > before.passed, "ND was passed: {after:?}");
    let neighbour = pair.neighbour6_in_b().expect("b resolved a by ND");
    assert!(neighbour["lladdr"].is_string(), "{neighbour}");

    // Without the key an echo request is the kernel's like any other ICMPv6 message.
    xdp.sync_keys(&BTreeSet::new(), &BTreeSet::new())
        .expect("sync keys");
    let before = xdp.stats().expect("stats");
    assert!(pair.ping6_from_b(2));
    let after = wait_for_stats(&xdp, |s| s.passed >= before.passed + 2);
    assert_eq!(after.no_socket, before.no_socket, "{after:?}");
    assert!(after.passed >= before.passed + 2, "{after:?}");
}

#[test]
fn icmpv6_errors_quoting_our_vip_translated_or_endpoint_bound_packets_are_steered_and_others_passed(
) {
    let pair = NetnsPair::new();
    pair.add_ipv6();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    let (a6, b6): (Ipv6Addr, Ipv6Addr) = (ADDR6_A.parse().unwrap(), ADDR6_B.parse().unwrap());
    // a is a VIP (UDP 9999) and our own address with SNAT ports 40000-49999; b an endpoint
    // (UDP 7777). Nothing listens on b: each datagram from a earns a real ICMPv6 port
    // unreachable from b's kernel, quoting it; b's error rate limit is lifted so that every
    // datagram gets its error.
    xdp.sync_keys(
        &BTreeSet::from([LbKey::v6(a6, 9999, UDP)]),
        &BTreeSet::from([LbKey::v6(b6, 7777, UDP)]),
    )
    .expect("sync keys");
    xdp.sync_snat(&BTreeSet::from([LbKey::v6(a6, 0, UDP)]), 40000, 49999)
        .expect("sync snat");
    ip(&[
        "netns",
        "exec",
        &pair.b,
        "sysctl",
        "-qw",
        "net.ipv6.icmp.ratelimit=0",
    ]);
    assert!(pair.ping6_from_b(1), "neighbours warmed");

    // From one of our ports outside the range to no endpoint: the host's own datagram, whose
    // error is the kernel's.
    thread::sleep(Duration::from_millis(200));
    let before = xdp.stats().expect("stats");
    pair.udp6_from_a(30000, 7778);
    wait_for_stats(&xdp, |s| s.passed > before.passed);
    thread::sleep(Duration::from_millis(200));
    let after = xdp.stats().expect("stats");
    assert_eq!(
        after.no_socket, before.no_socket,
        "host's own datagram: {after:?}"
    );

    // From a VIP's service port: the error about a reply we forwarded.
    pair.udp6_from_a(9999, 7778);
    let vip = wait_for_stats(&xdp, |s| s.no_socket > after.no_socket);
    assert_eq!(vip.no_socket, after.no_socket + 1, "{vip:?}");
    // From our address and a SNAT port: a translated request's error.
    pair.udp6_from_a(40005, 7778);
    let snat = wait_for_stats(&xdp, |s| s.no_socket > vip.no_socket);
    assert_eq!(snat.no_socket, vip.no_socket + 1, "{snat:?}");
    // To an endpoint's port: a DNAT request's error.
    pair.udp6_from_a(30001, 7777);
    let dnat = wait_for_stats(&xdp, |s| s.no_socket > snat.no_socket);
    assert_eq!(dnat.no_socket, snat.no_socket + 1, "{dnat:?}");
}

impl NetnsPair {
    /// Sends the IPv6 packet `scapy` (a scapy expression, IPv6 layer first) from b's `vxb`,
    /// broadcast at the Ethernet layer: XDP sees the frame before any address filter.
    fn scapy6_from_b(&self, scapy: &str) {
        let script = format!(
            "from scapy.all import *\n\
             sendp(Ether(dst='ff:ff:ff:ff:ff:ff')/{scapy}, iface='vxb', verbose=False)\n"
        );
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.b, "/usr/bin/python3", "-c", &script])
            .status()
            .expect("run scapy")
            .success();
        assert!(ok, "scapy failed to send {scapy}");
    }
}

/// Sends each packet from b and asserts whether the program steered it (no AF_XDP socket is
/// registered, so steering shows as `no_socket`) or passed it to the kernel.
fn assert_steering6(pair: &NetnsPair, xdp: &XdpRedirect, cases: &[(&str, bool)]) {
    for &(packet, steered) in cases {
        let before = xdp.stats().expect("stats");
        pair.scapy6_from_b(packet);
        let after = wait_for_stats(xdp, |s| {
            s.no_socket > before.no_socket || s.passed > before.passed
        });
        let got = after.no_socket - before.no_socket;
        assert_eq!(got, u64::from(steered), "{packet}: {after:?}");
        if !steered {
            assert!(after.passed > before.passed, "{packet} passed: {after:?}");
        }
    }
}

#[test]
fn ipv6_packets_with_extension_headers_are_steered_by_the_ports_behind_them() {
    let pair = NetnsPair::new();
    pair.add_ipv6();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    let (a6, b6): (Ipv6Addr, Ipv6Addr) = (ADDR6_A.parse().unwrap(), ADDR6_B.parse().unwrap());
    // a is a VIP (UDP 9999, TCP 8443) and our own address with SNAT ports 40000-49999; b an
    // endpoint (UDP 7777).
    xdp.sync_keys(
        &BTreeSet::from([
            LbKey::v6(a6, 9999, UDP),
            LbKey::v6(a6, 8443, TCP),
            LbKey::v6(a6, 0, ICMPV6),
        ]),
        &BTreeSet::from([LbKey::v6(b6, 7777, UDP)]),
    )
    .expect("sync keys");
    xdp.sync_snat(&BTreeSet::from([LbKey::v6(a6, 0, UDP)]), 40000, 49999)
        .expect("sync snat");
    let hbh = "IPv6ExtHdrHopByHop(options=[PadN(optdata=b'\\x00'*4)])";
    let dst = "IPv6ExtHdrDestOpt(options=[PadN(optdata=b'\\x00'*12)])";
    let rt0 = "IPv6ExtHdrRouting(addresses=['fd00::99'], segleft=0)";
    let to_a = "IPv6(src='fd00::2', dst='fd00::1')";
    // The endpoint answering a client directly (DNAT), not our own address.
    let to_client = "IPv6(src='fd00::2', dst='fd00::5')";
    // Our VIP's answer to a client, with extension headers, as an ICMPv6 error quotes it.
    let quoted = format!("IPv6(src='fd00::1', dst='fd00::2')/{hbh}/{dst}");
    let unreach = format!("{to_a}/ICMPv6DestUnreach(code=4)");
    assert_steering6(
        &pair,
        &xdp,
        &[
            (
                &format!("{to_a}/{hbh}/{dst}/UDP(sport=5000, dport=9999)"),
                true,
            ),
            (&format!("{to_a}/{rt0}/TCP(sport=5000, dport=8443)"), true),
            (&format!("{to_a}/{dst}/UDP(sport=5000, dport=9998)"), false),
            // A reply to our own address on a SNAT port, and an endpoint's DNAT reply.
            (&format!("{to_a}/{dst}/UDP(sport=80, dport=40001)"), true),
            (
                &format!("{to_client}/{hbh}/UDP(sport=7777, dport=30000)"),
                true,
            ),
            (
                &format!("{to_client}/{hbh}/UDP(sport=7778, dport=30000)"),
                false,
            ),
            // An echo request to the VIP behind extension headers: answered by the workers.
            (&format!("{to_a}/{hbh}/ICMPv6EchoRequest()"), true),
            // ICMPv6 errors from a client quoting our VIP's answer with extension headers,
            // one quoting another port, and one whose quote ends inside them.
            (
                &format!("{unreach}/{quoted}/UDP(sport=9999, dport=5000)"),
                true,
            ),
            (
                &format!("{unreach}/{quoted}/UDP(sport=9998, dport=5000)"),
                false,
            ),
            (
                &format!("{unreach}/Raw(bytes({quoted}/UDP(sport=9999, dport=5000))[:52])"),
                false,
            ),
        ],
    );
}

#[test]
fn ipv6_fragments_follow_their_datagram_first_by_ports_then_by_address() {
    let pair = NetnsPair::new();
    pair.add_ipv6();
    let mut xdp = in_netns(&pair.a, || {
        XdpRedirect::attach(&names(&[IFACE_A])).expect("attach")
    });
    let a6: Ipv6Addr = ADDR6_A.parse().unwrap();
    xdp.sync_keys(
        &BTreeSet::from([LbKey::v6(a6, 9999, UDP), LbKey::v6(a6, 0, ICMPV6)]),
        &BTreeSet::new(),
    )
    .expect("sync keys");
    let to_a = "IPv6(src='fd00::2', dst='fd00::1')";
    let to_other = "IPv6(src='fd00::2', dst='fd00::77')";
    let dst = "IPv6ExtHdrDestOpt(options=[PadN(optdata=b'\\x00'*4)])";
    let first = "IPv6ExtHdrFragment(offset=0, m=1, id=7, nh=17)";
    let later = "IPv6ExtHdrFragment(offset=100, m=0, id=7, nh=17)";
    // Five extension headers: more than the program walks.
    let deep = format!("{dst}/{dst}/{dst}/{dst}/{dst}");
    assert_steering6(
        &pair,
        &xdp,
        &[
            (&format!("{to_a}/{first}/UDP(sport=5000, dport=9999)"), true),
            (
                &format!("{to_a}/{first}/UDP(sport=5000, dport=9998)"),
                false,
            ),
            (&format!("{to_a}/{later}/Raw(b'x'*16)"), true),
            (&format!("{to_a}/{dst}/{later}/Raw(b'x'*16)"), true),
            (&format!("{to_other}/{later}/Raw(b'x'*16)"), false),
            (&format!("{to_a}/{deep}/UDP(sport=5000, dport=9999)"), false),
        ],
    );
}
