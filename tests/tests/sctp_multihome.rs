//! A multi-homed SCTP association through a real oxlb with secondary addresses (loxilb's
//! `secondaryIPs`). The test kernel has no SCTP sockets, so both ends are crafted with scapy
//! over raw IP sockets (protocol 132), as in `sctp.rs`:
//!
//! - the client (198.18.0.2 and 198.18.0.3) sends an INIT to the VIP listing both addresses;
//! - the backend that gets it answers an INIT ACK listing its own two addresses and an IPv6 one;
//!   the client must see the secondary addresses instead;
//! - the client then sends a HEARTBEAT from its second address to a secondary address (a second
//!   path); the same backend must get it and its HEARTBEAT ACK must come back from the
//!   secondary address. The other backend must see nothing.

use oxlb_tests::{unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, VIP, VIP_PORT};

const SECONDARIES: [&str; 2] = ["198.18.101.1", "198.18.102.1"];
const CLIENT_IP2: &str = "198.18.0.3";

/// A backend: answers an INIT with an INIT ACK and a HEARTBEAT with a HEARTBEAT ACK, printing
/// what it saw, until its deadline.
const BACKEND: &str = r#"
import socket, sys, time
from scapy.all import IP, raw
from scapy.layers.sctp import (SCTP, SCTPChunkInit, SCTPChunkInitAck, SCTPChunkHeartbeatReq,
    SCTPChunkHeartbeatAck, SCTPChunkParamStateCookie, SCTPChunkParamIPv4Addr,
    SCTPChunkParamIPv6Addr)

def crc_ok(s):
    c = s.copy(); c.chksum = None
    return SCTP(raw(c)).chksum == s.chksum

me, other = sys.argv[1], sys.argv[2]
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r.settimeout(1)
deadline = time.time() + 20
peer_tag = 0
while time.time() < deadline:
    try:
        data, _ = r.recvfrom(4096)
    except socket.timeout:
        continue
    p = IP(data)
    if SCTP not in p:
        continue
    s = p[SCTP]
    if SCTPChunkInit in p:
        peer_tag = p[SCTPChunkInit].init_tag
        print(f"init {p.src}:{s.sport} -> {p.dst}:{s.dport} crc_ok={crc_ok(s)}", flush=True)
        ack = SCTP(sport=s.dport, dport=s.sport, tag=peer_tag) / SCTPChunkInitAck(
            init_tag=0x5678, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1,
            params=[SCTPChunkParamStateCookie(cookie=b"cookie-of-13b"),
                    SCTPChunkParamIPv4Addr(addr=me), SCTPChunkParamIPv4Addr(addr=other),
                    SCTPChunkParamIPv6Addr(addr="fd00:31::9")])
        r.sendto(raw(ack), (p.src, 0))
    elif SCTPChunkHeartbeatReq in p:
        print(f"heartbeat {p.src}:{s.sport} -> {p.dst}:{s.dport} tag={s.tag:#x} "
              f"crc_ok={crc_ok(s)}", flush=True)
        info = p[SCTPChunkHeartbeatReq].params
        hb = SCTP(sport=s.dport, dport=s.sport, tag=peer_tag) / SCTPChunkHeartbeatAck(params=info)
        r.sendto(raw(hb), (p.src, 0))
"#;

/// The client: INIT from its first address, then a HEARTBEAT on a second path (bounded).
const CLIENT: &str = r#"
import socket, sys
from scapy.all import IP, raw
from scapy.layers.sctp import (SCTP, SCTPChunkInit, SCTPChunkInitAck, SCTPChunkHeartbeatReq,
    SCTPChunkHeartbeatAck, SCTPChunkParamIPv4Addr, SCTPChunkParamIPv6Addr,
    SCTPChunkParamHeartbeatInfo)

def crc_ok(s):
    c = s.copy(); c.chksum = None
    return SCTP(raw(c)).chksum == s.chksum

vip, port, ip1, ip2 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r.bind((ip1, 0))
r.settimeout(2)
init = SCTP(sport=40000, dport=port, tag=0) / SCTPChunkInit(
    init_tag=0x1234, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1,
    params=[SCTPChunkParamIPv4Addr(addr=ip1), SCTPChunkParamIPv4Addr(addr=ip2)])

def wait_for(sock, chunk):
    try:
        while True:
            data, _ = sock.recvfrom(4096)
            p = IP(data)
            if SCTP in p and chunk in p and p[SCTP].dport == 40000:
                return p
    except socket.timeout:
        return None

ack = None
for _ in range(5):
    r.sendto(raw(init), (vip, 0))
    ack = wait_for(r, SCTPChunkInitAck)
    if ack is not None:
        break
if ack is None:
    print("no init-ack"); sys.exit(0)
s = ack[SCTP]
addrs = [p.addr for p in ack[SCTPChunkInitAck].params
         if isinstance(p, (SCTPChunkParamIPv4Addr, SCTPChunkParamIPv6Addr))]
print(f"init-ack {ack.src}:{s.sport} tag={s.tag:#x} crc_ok={crc_ok(s)} addrs={','.join(addrs)}",
      flush=True)
if not addrs:
    sys.exit(0)

r2 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r2.bind((ip2, 0))
r2.settimeout(2)
hb = SCTP(sport=40000, dport=port, tag=ack[SCTPChunkInitAck].init_tag) / SCTPChunkHeartbeatReq(
    params=[SCTPChunkParamHeartbeatInfo(data=b"path-two")])
for _ in range(5):
    r2.sendto(raw(hb), (addrs[0], 0))
    got = wait_for(r2, SCTPChunkHeartbeatAck)
    if got is not None:
        g = got[SCTP]
        print(f"heartbeat-ack {got.src}:{g.sport} -> {got.dst} tag={g.tag:#x} "
              f"crc_ok={crc_ok(g)}")
        sys.exit(0)
print("no heartbeat-ack")
"#;

#[test]
fn a_second_path_through_a_secondary_address_reaches_the_associations_backend() {
    second_path(1);
}

/// Two queues, so two workers: the paths of one association (two client addresses) may
/// arrive at either, and must meet the worker that knows the association.
#[test]
fn with_two_workers_a_second_path_still_reaches_the_associations_backend() {
    second_path(2);
}

fn second_path(queues: u32) {
    let opts = TopologyOptions {
        queues,
        ..TopologyOptions::default()
    };
    let topo = Topology::build(&unique_prefix(), opts);
    topo.exec_ok(
        Node::Client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP2}/24"),
            "dev",
            "c0",
        ],
    );
    let oxlb = topo.start_oxlb(&[]);
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": "sctp",
                             "sel": 0, "mode": 0, "name": "sctp-mh"},
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": 8080, "weight": 1},
                      {"endpointIP": BACKEND_IPS[1], "targetPort": 8080, "weight": 1}],
        "secondaryIPs": [{"secondaryIP": SECONDARIES[1]}, {"secondaryIP": SECONDARIES[0]}],
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the SCTP service: {answer}");
    assert_secondaries_listed(&topo);

    let mut backends: Vec<_> = [1u8, 2]
        .iter()
        .map(|&n| {
            let me = BACKEND_IPS[usize::from(n) - 1];
            let other = format!("198.18.32.{n}");
            topo.spawn(
                Node::Backend(n),
                &["/usr/bin/python3", "-c", BACKEND, me, &other],
                &format!("sctp-mh-b{n}.log"),
            )
        })
        .collect();
    // scapy takes a moment to import; the client retries meanwhile.
    let port = VIP_PORT.to_string();
    let client = topo.exec(
        Node::Client,
        &[
            "/usr/bin/python3",
            "-c",
            CLIENT,
            VIP,
            &port,
            "198.18.0.2",
            CLIENT_IP2,
        ],
    );
    let client_out = String::from_utf8_lossy(&client.stdout).into_owned();
    for b in &mut backends {
        b.kill();
    }
    let (b1, b2) = (backends[0].log(), backends[1].log());
    let diag = format!(
        "client: {client_out} {}\nb1: {b1}\nb2: {b2}\noxlb:\n{}",
        String::from_utf8_lossy(&client.stderr),
        oxlb.log()
    );
    assert!(
        b1.contains(&format!(
            "init 198.18.0.2:40000 -> {}:8080 crc_ok=True",
            BACKEND_IPS[0]
        )),
        "backend 1 did not get the INIT\n{diag}"
    );
    assert!(
        client_out.contains(&format!(
            "init-ack {VIP}:{VIP_PORT} tag=0x1234 crc_ok=True addrs={}",
            SECONDARIES.join(",")
        )),
        "the client did not get an INIT ACK from the VIP listing the secondaries only\n{diag}"
    );
    assert!(
        b1.contains(&format!(
            "heartbeat {CLIENT_IP2}:40000 -> {}:8080 tag=0x5678 crc_ok=True",
            BACKEND_IPS[0]
        )),
        "the second path did not reach the association's backend\n{diag}"
    );
    assert!(
        client_out.contains(&format!(
            "heartbeat-ack {}:{VIP_PORT} -> {CLIENT_IP2} tag=0x1234 crc_ok=True",
            SECONDARIES[0]
        )),
        "the second path's answer did not come from the secondary address\n{diag}"
    );
    assert!(
        b2.trim().is_empty(),
        "backend 2 saw the association\n{diag}"
    );

    // The secondary addresses are kept with the rule across a restart (the state file).
    oxlb.kill();
    let _oxlb = topo.start_oxlb(&[]);
    assert_secondaries_listed(&topo);
}

/// The listing shows the rule's secondary addresses, sorted as loxilb lists them.
fn assert_secondaries_listed(topo: &Topology) {
    let (status, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert_eq!(status, 200, "{listing}");
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(
        listing["lbAttr"][0]["secondaryIPs"],
        serde_json::json!([{"secondaryIP": SECONDARIES[0]}, {"secondaryIP": SECONDARIES[1]}]),
        "{listing}"
    );
}
