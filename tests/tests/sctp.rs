//! SCTP through a real oxlb (issue #4). The test kernel has no SCTP sockets, so both ends are
//! crafted with scapy over raw IP sockets (protocol 132): the client sends an INIT to the VIP,
//! the backend checks what arrives (addresses, ports, CRC32c) and answers an INIT ACK, and the
//! client checks that answer. Everything between is the real XDP program and workers.

use oxlb_tests::{unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, VIP, VIP_PORT};

/// The backend: waits (bounded) for one SCTP INIT, prints what it saw, answers an INIT ACK.
const BACKEND: &str = r#"
import socket
from scapy.all import IP, raw
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck

def crc_ok(s):
    c = s.copy(); c.chksum = None
    return SCTP(raw(c)).chksum == s.chksum

r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r.settimeout(15)
while True:
    data, (src, _) = r.recvfrom(4096)
    p = IP(data)
    if SCTP in p and SCTPChunkInit in p:
        s = p[SCTP]
        print(f"init {p.src}:{s.sport} -> {p.dst}:{s.dport} crc_ok={crc_ok(s)}", flush=True)
        ack = SCTP(sport=s.dport, dport=s.sport, tag=p[SCTPChunkInit].init_tag) / SCTPChunkInitAck(
            init_tag=0x5678, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)
        r.sendto(raw(ack), (p.src, 0))
        break
"#;

/// The client: sends an INIT to the VIP and prints the INIT ACK it gets back (bounded).
const CLIENT: &str = r#"
import socket, sys
from scapy.all import IP, raw
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck

def crc_ok(s):
    c = s.copy(); c.chksum = None
    return SCTP(raw(c)).chksum == s.chksum

vip, port = sys.argv[1], int(sys.argv[2])
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r.settimeout(2)
init = SCTP(sport=40000, dport=port, tag=0) / SCTPChunkInit(
    init_tag=0x1234, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)
for _ in range(5):
    r.sendto(raw(init), (vip, 0))
    try:
        while True:
            data, _ = r.recvfrom(4096)
            p = IP(data)
            if SCTP in p and SCTPChunkInitAck in p and p[SCTP].dport == 40000:
                s = p[SCTP]
                print(f"init-ack {p.src}:{s.sport} tag={s.tag:#x} crc_ok={crc_ok(s)}")
                sys.exit(0)
    except socket.timeout:
        continue
print("no init-ack")
"#;

fn association_through(mode: u8, backend_sees: &str) {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": "sctp",
                             "sel": 0, "mode": mode, "name": "sctp"},
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": 8080, "weight": 1}],
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the SCTP service: {answer}");

    let mut backend = topo.spawn(
        Node::Backend(1),
        &["/usr/bin/python3", "-c", BACKEND],
        "sctp-b1.log",
    );
    // scapy takes a moment to import; the client retries its INIT meanwhile.
    let port = VIP_PORT.to_string();
    let client = topo.exec(
        Node::Client,
        &["/usr/bin/python3", "-c", CLIENT, VIP, &port],
    );
    let client_out = String::from_utf8_lossy(&client.stdout).into_owned();
    backend.kill();
    let seen = backend.log();
    let diag = format!(
        "client: {client_out} {}\nbackend: {seen}\noxlb:\n{}",
        String::from_utf8_lossy(&client.stderr),
        oxlb.log()
    );
    assert!(
        seen.contains(&format!(
            "init {backend_sees} -> {}:8080 crc_ok=True",
            BACKEND_IPS[0]
        )),
        "mode {mode}: the backend did not get the rewritten INIT with a valid CRC\n{diag}"
    );
    assert!(
        client_out.contains(&format!("init-ack {VIP}:{VIP_PORT} tag=0x1234 crc_ok=True")),
        "mode {mode}: the client did not get the INIT ACK from the VIP\n{diag}"
    );
}

#[test]
fn an_sctp_association_opens_through_the_vip_in_dnat_mode() {
    association_through(0, "198.18.0.2:40000");
}

#[test]
fn an_sctp_association_opens_through_the_vip_in_full_nat_mode() {
    // Full NAT: the backend sees the VIP and the first port of the SNAT range (40000-49999),
    // the first one a single worker hands out.
    association_through(2, "198.18.100.1:40000");
}
