//! ICMP errors through oxlb, with real kernels on both sides (issue #4): a backend's "port
//! unreachable" reaches the client as if the VIP had sent it (its connected socket sees the
//! refusal), in every mode that rewrites addresses; and a datagram too big for the link toward
//! the backends earns the client a "fragmentation needed", so its path MTU discovery learns.

use oxlb_tests::{
    metric_sample, unique_prefix, Node, OxlbGuard, Topology, TopologyOptions, VIP, VIP_PORT,
};

fn topology() -> Topology {
    Topology::build(&unique_prefix(), TopologyOptions::default())
}

fn log_of(oxlb: &OxlbGuard) -> impl Fn() -> String + '_ {
    move || format!("oxlb output:\n{}", oxlb.log())
}

fn counter(topo: &Topology, name: &str) -> u64 {
    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    metric_sample(&page, &format!("{name}{{worker=\"0\"}}"))
}

/// Python in the client namespace: one datagram on a connected UDP socket to the VIP, then
/// what the socket says within 3 s: "refused", "timeout" or "answer".
const UDP_REFUSED: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
# Several tries: the first may wait for the backend's neighbour entry.
for _ in range(3):
    try:
        s.send(b"anyone?")
        s.recv(100)
        print("answer"); break
    except ConnectionRefusedError:
        print("refused"); break
    except socket.timeout:
        continue
else:
    print("timeout")
"#;

#[test]
fn a_backends_port_unreachable_reaches_the_client_in_dnat_one_arm_and_full_nat() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    // Nothing listens on port 9 of the backends: their kernels answer "port unreachable".
    for mode in [0u8, 1, 2] {
        topo.add_service("udp", mode, 0, 9);
        let port = VIP_PORT.to_string();
        let out = topo.exec_ok(Node::Client, &["python3", "-c", UDP_REFUSED, VIP, &port]);
        assert_eq!(
            out.trim(),
            "refused",
            "mode {mode}: the client did not learn of the refusal\n{}",
            diag()
        );
    }
    assert!(counter(&topo, "oxlb_icmp_errors_translated_total") >= 3);
}

/// Python in the client namespace: a 1472-byte datagram (1500 bytes of IP) with DF to the VIP,
/// then the path MTU the client's kernel holds for it.
const PMTU: &str = r#"
import socket, sys, time
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(20):
    try:
        s.send(b"x" * 1472)
    except OSError:
        pass  # EMSGSIZE once the kernel knows the smaller path MTU
    time.sleep(0.1)
    if s.getsockopt(socket.IPPROTO_IP, IP_MTU) < 1500:
        break
print(s.getsockopt(socket.IPPROTO_IP, IP_MTU))
"#;

#[test]
fn a_datagram_too_big_for_the_backend_link_teaches_the_client_its_path_mtu() {
    let topo = topology();
    let _backends = topo.start_backends();
    // The link toward the backends carries 1400-byte IP packets; the client's side 1500.
    topo.exec_ok(Node::Lb, &["ip", "link", "set", "lb1", "mtu", "1400"]);
    topo.exec_ok(Node::Switch, &["ip", "link", "set", "s-lb", "mtu", "1400"]);
    let oxlb = topo.start_oxlb(&[]);
    topo.add_service("udp", 0, 0, 9);
    let port = VIP_PORT.to_string();
    let out = topo.exec_ok(Node::Client, &["python3", "-c", PMTU, VIP, &port]);
    assert_eq!(
        out.trim(),
        "1400",
        "the client's path MTU to the VIP\noxlb output:\n{}",
        oxlb.log()
    );
    assert!(counter(&topo, "oxlb_frag_needed_sent_total") >= 1);
}
