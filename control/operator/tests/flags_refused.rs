//! The binary refuses, at start and by name, a kube-loxilb flag it does not implement.

use std::process::Command;

#[test]
fn an_unimplemented_flag_stops_the_binary_with_a_message_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_oxlb-operator"))
        .args(["-loxiURL=http://127.0.0.1:1", "-setBGP=65001"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--setBGP is not implemented yet"), "{err}");
}
