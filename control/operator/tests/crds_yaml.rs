//! The committed CRD manifests are exactly what `oxlb-operator crd` generates from the types,
//! so the two never drift apart.

use std::process::Command;

#[test]
fn the_committed_crd_yaml_equals_the_generated_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_oxlb-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kube/crds.yaml");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        generated == committed,
        "deploy/kube/crds.yaml differs from the generated CRDs; regenerate it with\n  \
         cargo run --release -p oxlb-operator -- crd > deploy/kube/crds.yaml"
    );
    assert_eq!(
        generated,
        oxlb_operator::crds::crds_yaml(),
        "the subcommand prints the library's YAML"
    );
}
