//! The data-path checks of `e2e_dnat.rs`, run against in-kernel nftables DNAT instead of oxlb.
//!
//! If these fail, the harness or the topology is wrong, not oxlb; if they pass and the e2e
//! tests fail, look at oxlb. nftables DNAT (`numgen inc` round robin, ip_forward=1) is also the
//! in-kernel comparison point of the benchmarks.

use oxlb_tests::checks;
use oxlb_tests::{
    unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_PORT, VIP, VIP_PORT,
};

/// A topology with forwarding on and nftables round-robin DNAT for the VIP (TCP and UDP).
fn nft_topology() -> Topology {
    let topo = Topology::build(
        &unique_prefix(),
        TopologyOptions {
            ip_forward: true,
            ..Default::default()
        },
    );
    let map = format!(
        "numgen inc mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }} : {BACKEND_PORT}",
        BACKEND_IPS[0], BACKEND_IPS[1], BACKEND_IPS[2]
    );
    let ruleset = format!(
        "table ip oxlbref {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
         ip daddr {VIP} tcp dport {VIP_PORT} dnat to {map}\n  \
         ip daddr {VIP} udp dport {VIP_PORT} dnat to {map}\n }}\n}}\n"
    );
    let file = topo.scratch_dir().join("ruleset.nft");
    std::fs::write(&file, ruleset).expect("write the ruleset");
    topo.exec_ok(Node::Lb, &["nft", "-f", file.to_str().expect("utf-8 path")]);
    topo
}

fn ruleset(topo: &Topology) -> impl Fn() -> String + '_ {
    move || {
        let out = topo.exec(Node::Lb, &["nft", "list", "ruleset"]);
        format!("nft ruleset:\n{}", String::from_utf8_lossy(&out.stdout))
    }
}

#[test]
fn nftables_dnat_passes_the_rotation_client_address_and_udp_checks() {
    let topo = nft_topology();
    let _backends = topo.start_backends();
    checks::twelve_requests_rotate(&topo, &ruleset(&topo));
    checks::backends_see_the_client_address(&topo, &ruleset(&topo));
    checks::udp_request_is_answered(&topo, &ruleset(&topo));
}

#[test]
fn nftables_dnat_passes_the_download_and_thousand_connection_checks() {
    let topo = nft_topology();
    let _backends = topo.start_backends();
    checks::ten_megabyte_download_is_identical(&topo, &ruleset(&topo));
    checks::thousand_sequential_connections_succeed(&topo, &ruleset(&topo));
}
