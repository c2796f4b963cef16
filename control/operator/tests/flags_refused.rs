//! The binary refuses, at start and by name, a kube-loxilb flag it does not implement.

use std::process::Command;

#[test]
fn an_unimplemented_flag_stops_the_binary_with_a_message_naming_it() {
    for (flag, name) in [
        ("-gatewayAPI", "gatewayAPI"),
        ("-loxilbGatewayClass=example.com/gw", "loxilbGatewayClass"),
        ("-privateCIDR=10.0.0.0/24", "privateCIDR"),
    ] {
        let err = start_error(&["-loxiURL=http://127.0.0.1:1", flag]);
        assert!(
            err.contains(&format!("--{name} is not implemented yet by oxlb-operator")),
            "{err}"
        );
    }
}

#[test]
fn bad_external_bgp_peers_stop_the_binary_at_start() {
    let err = start_error(&[
        "-loxiURL=http://127.0.0.1:1",
        "-extBGPPeers=198.18.0.9:65001",
    ]);
    assert!(err.contains("--extBGPPeers needs --setBGP"), "{err}");
    let err = start_error(&[
        "-loxiURL=http://127.0.0.1:1",
        "-setBGP=64512",
        "-extBGPPeers=198.18.0.9",
    ]);
    assert!(err.contains("\"198.18.0.9\" is not IP:ASN"), "{err}");
}

fn start_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oxlb-operator"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_role_settings_a_missing_token_file_and_https_urls_stop_the_binary_at_start() {
    let err = start_error(&["-loxiURL=http://127.0.0.1:1", "-setRoles=master"]);
    assert!(
        err.contains("--setRoles \"master\" is not an IP address"),
        "{err}"
    );
    let err = start_error(&["-loxiURL=http://127.0.0.1:1", "-excludeRoleList=127.0.0.9"]);
    assert!(
        err.contains("--excludeRoleList 127.0.0.9 is not the address of any --loxiURL"),
        "{err}"
    );
    let err = start_error(&[
        "-loxiURL=http://127.0.0.1:1",
        "-apiTokenFile=/nonexistent/t",
    ]);
    assert!(err.contains("--apiTokenFile /nonexistent/t"), "{err}");
    let err = start_error(&["-loxiURL=https://127.0.0.1:1"]);
    assert!(
        err.contains("HTTPS appliance URLs are not implemented yet"),
        "{err}"
    );
}

#[test]
fn bad_external_secondary_cidrs_stop_the_binary_at_start() {
    let err = start_error(&[
        "-loxiURL=http://127.0.0.1:1",
        "-externalSecondaryCIDRs=124.124.124.0/24,bogus",
    ]);
    assert!(
        err.contains("--externalSecondaryCIDRs entry \"bogus\" is invalid"),
        "{err}"
    );
    let err = start_error(&[
        "-loxiURL=http://127.0.0.1:1",
        "-externalSecondaryCIDRs=10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24",
    ]);
    assert!(err.contains("has 4 pools; at most 3"), "{err}");
}
