//! The next-hop resolver against the real kernel, in throwaway network namespaces (needs root).
//!
//! Each test builds its own three namespaces (names carry the pid and a counter); the resolver
//! always runs in `a`:
//!
//! ```text
//!   a: va0 198.18.0.1/24 ── b: vb0 198.18.0.2/24      vb1 198.18.1.1/24 ── c: vc0 198.18.1.2/24
//!          fd00::1/64             fd00::2/64            fd00:1::1/64            fd00:1::2/64
//!      route 198.18.1.0/24 via 198.18.0.2, fd00:1::/64 via fd00::2
//! ```
//!
//! IPv6 addresses skip duplicate address detection (`nodad`, `accept_dad=0`), so they are
//! usable at once.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use oxlb_control::nexthop::{NextHopResolver, Resolution, Resolved};
use oxlb_tests::{in_netns, ip};

const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const C_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// On a's connected subnet, owned by nobody.
const SILENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
/// Covered by no route in a (a has no default route).
const UNROUTED_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const SILENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
const UNROUTED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);

/// Namespaces a, b and c wired as in the module docs; deleted on drop, also when a test panics.
struct Lab {
    a: String,
    b: String,
    c: String,
}

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Own the names before creating anything, so Drop cleans up a half-built lab too.
        let lab = Lab {
            a: format!("oxlbn-{pid}-{n}-a"),
            b: format!("oxlbn-{pid}-{n}-b"),
            c: format!("oxlbn-{pid}-{n}-c"),
        };
        for ns in [&lab.a, &lab.b, &lab.c] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // Link-local addresses too: a solicitation the resolver asks for (no packet
            // waiting, so no source to copy) goes out only from a usable link-local address.
            let status = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .args(["net.ipv6.conf.all.accept_dad=0"])
                .args(["net.ipv6.conf.default.accept_dad=0"])
                .status()
                .expect("run sysctl");
            assert!(status.success(), "sysctl accept_dad in {ns}");
        }
        lab.veth(
            (&lab.a, "va0", "198.18.0.1/24", "fd00::1/64"),
            (&lab.b, "vb0", "198.18.0.2/24", "fd00::2/64"),
        );
        lab.veth(
            (&lab.b, "vb1", "198.18.1.1/24", "fd00:1::1/64"),
            (&lab.c, "vc0", "198.18.1.2/24", "fd00:1::2/64"),
        );
        ip(&[
            "-n",
            &lab.a,
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            "198.18.0.2",
        ]);
        ip(&[
            "-n",
            &lab.a,
            "-6",
            "route",
            "add",
            "fd00:1::/64",
            "via",
            "fd00::2",
        ]);
        lab
    }

    fn veth(
        &self,
        (ns1, dev1, addr1, addr6_1): (&str, &str, &str, &str),
        (ns2, dev2, addr2, addr6_2): (&str, &str, &str, &str),
    ) {
        ip(&[
            "link", "add", dev1, "netns", ns1, "type", "veth", "peer", "name", dev2, "netns", ns2,
        ]);
        for (ns, dev, addr, addr6) in [(ns1, dev1, addr1, addr6_1), (ns2, dev2, addr2, addr6_2)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "-6", "addr", "add", addr6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// `ip -j link show dev <dev>` in `ns`, first (only) entry.
    fn link(&self, ns: &str, dev: &str) -> serde_json::Value {
        let links = ip_json(&["-n", ns, "-j", "link", "show", "dev", dev]);
        links[0].clone()
    }

    fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let link = self.link(ns, dev);
        let text = link["address"].as_str().expect("link has an address");
        parse_mac(text)
    }

    fn ifindex(&self, ns: &str, dev: &str) -> u32 {
        let index = self.link(ns, dev)["ifindex"]
            .as_u64()
            .expect("link has an ifindex");
        u32::try_from(index).expect("ifindex fits u32")
    }

    /// a's neighbour entry for `addr` (`ip -s -j neigh show`), if any.
    fn neighbour_in_a(&self, addr: impl Into<IpAddr>) -> Option<serde_json::Value> {
        let addr: IpAddr = addr.into();
        let entries = ip_json(&[
            "-n",
            &self.a,
            "-s",
            "-j",
            "neigh",
            "show",
            &addr.to_string(),
        ]);
        entries.as_array().and_then(|e| e.first()).cloned()
    }

    /// Resolves `dst` in a, up to 60 times 50 ms apart, until it is Ready; returns every answer.
    /// (A fresh link may ignore the first neighbour solicitation; the second comes 1 s later.)
    fn resolve_in_a_until_ready(&self, dst: impl Into<IpAddr>) -> Vec<Resolution> {
        let dst: IpAddr = dst.into();
        in_netns(&self.a, move || {
            let mut resolver = NextHopResolver::new().expect("open the resolver");
            let mut answers = Vec::new();
            for _ in 0..60 {
                let answer = resolver.resolve(dst).expect("resolve");
                answers.push(answer);
                if matches!(answer, Resolution::Ready(_)) {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            answers
        })
    }

    /// Resolves `dst` from a until Ready and checks the answers: Pending for `next_hop` on
    /// va0 first, then Ready with vb0's MAC, the gateway (if `dst` is behind one) and a's
    /// `source` address of the family.
    fn assert_ready_through_b(
        &self,
        dst: impl Into<IpAddr>,
        next_hop: impl Into<IpAddr> + Copy,
        gateway: Option<IpAddr>,
        source: impl Into<IpAddr>,
    ) {
        let va0 = self.ifindex(&self.a, "va0");
        let answers = self.resolve_in_a_until_ready(dst);
        let expected = Resolution::Ready(Resolved {
            ifindex: va0,
            src_mac: self.mac(&self.a, "va0"),
            dst_mac: self.mac(&self.b, "vb0"),
            gateway,
            source: Some(source.into()),
        });
        assert_eq!(
            last_after_pending(&answers, va0, next_hop),
            expected,
            "{answers:?}"
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.c] {
            // Deleting a namespace destroys the veth ends inside it.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ip(args)).expect("ip -j prints JSON")
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte"))
        .collect();
    bytes.try_into().expect("six MAC bytes")
}

/// Every answer but the last is Pending for `next_hop` on `ifindex` from a's address of its
/// family; the last is returned.
fn last_after_pending(
    answers: &[Resolution],
    ifindex: u32,
    next_hop: impl Into<IpAddr>,
) -> Resolution {
    let next_hop: IpAddr = next_hop.into();
    let source = if next_hop.is_ipv4() {
        IpAddr::from(A_ADDR)
    } else {
        IpAddr::from(A6)
    };
    let (last, before) = answers.split_last().expect("at least one answer");
    for answer in before {
        assert_eq!(
            *answer,
            Resolution::Pending {
                ifindex,
                next_hop,
                source: Some(source)
            }
        );
    }
    *last
}

#[test]
fn a_connected_neighbour_that_answers_arp_resolves_to_ready_with_its_mac() {
    let lab = Lab::new();
    lab.assert_ready_through_b(B_ADDR, B_ADDR, None, A_ADDR);
}

#[test]
fn an_address_behind_a_gateway_resolves_to_the_gateways_mac_with_the_gateway_set() {
    let lab = Lab::new();
    lab.assert_ready_through_b(C_ADDR, B_ADDR, Some(B_ADDR.into()), A_ADDR);
    assert!(
        lab.neighbour_in_a(C_ADDR).is_none(),
        "no neighbour entry for the address behind the gateway"
    );
}

#[test]
fn an_address_with_no_route_is_no_route() {
    let lab = Lab::new();

    let answer = in_netns(&lab.a, || {
        NextHopResolver::new()
            .expect("open the resolver")
            .resolve(UNROUTED_ADDR.into())
            .expect("resolve")
    });

    assert_eq!(answer, Resolution::NoRoute);
}

#[test]
fn addresses_on_blackhole_prohibit_and_unreachable_routes_are_no_route() {
    let lab = Lab::new();
    for (kind, prefix) in [
        ("blackhole", "198.19.1.0/24"),
        ("prohibit", "198.19.2.0/24"),
        ("unreachable", "198.19.3.0/24"),
    ] {
        ip(&["-n", &lab.a, "route", "add", kind, prefix]);
    }

    let answers = in_netns(&lab.a, || {
        let mut resolver = NextHopResolver::new().expect("open the resolver");
        [[198, 19, 1, 1], [198, 19, 2, 1], [198, 19, 3, 1]].map(|octets| {
            resolver
                .resolve(Ipv4Addr::from(octets).into())
                .expect("resolve")
        })
    });

    assert_eq!(answers, [Resolution::NoRoute; 3]);
}

#[test]
fn a_silent_address_on_a_connected_subnet_stays_pending_and_the_kernel_is_asked_to_resolve_it() {
    let lab = Lab::new();
    let va0 = lab.ifindex(&lab.a, "va0");
    assert!(lab.neighbour_in_a(SILENT_ADDR).is_none(), "no entry yet");

    let answers = in_netns(&lab.a, || {
        let mut resolver = NextHopResolver::new().expect("open the resolver");
        let first = resolver.resolve(SILENT_ADDR.into()).expect("resolve");
        thread::sleep(Duration::from_millis(300));
        let second = resolver.resolve(SILENT_ADDR.into()).expect("resolve");
        [first, second]
    });

    let pending = Resolution::Pending {
        ifindex: va0,
        next_hop: SILENT_ADDR.into(),
        source: Some(A_ADDR.into()),
    };
    assert_eq!(answers, [pending; 2]);
    // The resolver created the entry and the kernel is resolving it: INCOMPLETE while it sends
    // ARP requests, FAILED once they went unanswered; `probes` counts the requests sent.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let entry = lab
            .neighbour_in_a(SILENT_ADDR)
            .expect("the kernel has a neighbour entry for the silent address");
        let state = entry["state"][0].as_str().unwrap_or_default().to_owned();
        assert!(
            state == "INCOMPLETE" || state == "FAILED",
            "unexpected state: {entry}"
        );
        if entry["probes"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no ARP request sent: {entry}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failed_neighbour_is_asked_again_on_the_next_resolve() {
    let lab = Lab::new();
    let va0 = lab.ifindex(&lab.a, "va0");
    let state = |lab: &Lab| {
        let entry = lab.neighbour_in_a(SILENT_ADDR).expect("an entry");
        entry["state"][0].as_str().unwrap_or_default().to_owned()
    };
    in_netns(&lab.a, || {
        NextHopResolver::new()
            .expect("open the resolver")
            .resolve(SILENT_ADDR.into())
            .expect("resolve")
    });
    // Three unanswered broadcast probes, one a second (the defaults), then FAILED.
    let deadline = Instant::now() + Duration::from_secs(6);
    while state(&lab) != "FAILED" {
        assert!(Instant::now() < deadline, "never FAILED: {}", state(&lab));
        thread::sleep(Duration::from_millis(100));
    }

    let answer = in_netns(&lab.a, || {
        NextHopResolver::new()
            .expect("open the resolver")
            .resolve(SILENT_ADDR.into())
            .expect("resolve")
    });

    assert_eq!(
        answer,
        Resolution::Pending {
            ifindex: va0,
            next_hop: SILENT_ADDR.into(),
            source: Some(A_ADDR.into()),
        }
    );
    assert_eq!(state(&lab), "INCOMPLETE", "resolution restarted");
}

#[test]
fn links_lists_the_namespaces_ethernet_interfaces_with_mac_and_mtu_by_ifindex() {
    let lab = Lab::new();
    ip(&["-n", &lab.a, "link", "set", "va0", "mtu", "1400"]);

    let links = in_netns(&lab.a, || {
        NextHopResolver::new()
            .expect("open the resolver")
            .links()
            .expect("dump links")
    });

    let va0 = lab.ifindex(&lab.a, "va0");
    let link = links.get(&va0).expect("va0 listed");
    assert_eq!(link.mac, lab.mac(&lab.a, "va0"));
    assert_eq!(link.mtu, 1400);
    assert_eq!(links.len(), 1, "lo is not Ethernet: {links:?}");
}

#[test]
fn a_stale_neighbour_is_still_ready_and_the_kernel_is_asked_to_confirm_it() {
    let lab = Lab::new();
    lab.resolve_in_a_until_ready(B_ADDR);
    let b_mac = lab.mac(&lab.b, "vb0");
    let mac_text = b_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ip(&[
        "-n",
        &lab.a,
        "neigh",
        "replace",
        "198.18.0.2",
        "dev",
        "va0",
        "lladdr",
        &mac_text,
        "nud",
        "stale",
    ]);
    let state = |lab: &Lab| {
        lab.neighbour_in_a(B_ADDR).expect("entry exists")["state"][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(state(&lab), "STALE");

    let answer = in_netns(&lab.a, move || {
        NextHopResolver::new()
            .expect("open the resolver")
            .resolve(B_ADDR.into())
            .expect("resolve")
    });

    assert!(
        matches!(answer, Resolution::Ready(r) if r.dst_mac == b_mac),
        "{answer:?}"
    );
    // NTF_USE moved the entry on from STALE (to DELAY, then PROBE/REACHABLE).
    assert_ne!(state(&lab), "STALE");
}

#[test]
fn an_ipv6_neighbour_that_answers_neighbour_discovery_resolves_to_ready_with_its_mac() {
    let lab = Lab::new();
    lab.assert_ready_through_b(B6, B6, None, A6);
}

#[test]
fn an_ipv6_address_behind_a_gateway_resolves_to_the_gateways_mac_and_our_ipv6_source() {
    let lab = Lab::new();
    lab.assert_ready_through_b(C6, B6, Some(B6.into()), A6);
}

#[test]
fn a_silent_ipv6_address_stays_pending_while_the_kernel_sends_neighbour_solicitations() {
    let lab = Lab::new();
    let va0 = lab.ifindex(&lab.a, "va0");

    let answers = in_netns(&lab.a, || {
        let mut resolver = NextHopResolver::new().expect("open the resolver");
        [
            resolver.resolve(SILENT6.into()).expect("resolve"),
            resolver.resolve(UNROUTED6.into()).expect("resolve"),
        ]
    });

    assert_eq!(
        answers,
        [
            Resolution::Pending {
                ifindex: va0,
                next_hop: SILENT6.into(),
                source: Some(A6.into()),
            },
            Resolution::NoRoute
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let entry = lab
            .neighbour_in_a(SILENT6)
            .expect("the kernel has a neighbour entry for the silent address");
        if entry["probes"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no neighbour solicitation: {entry}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
