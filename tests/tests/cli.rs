//! The oxlb command line refuses what it cannot do, in one sentence, before touching anything.

use oxlb_tests::{oxlb_binary, require_root, unique_prefix, Netns};
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line oxlb printed: the error, after any log lines.
fn error_line(o: &Output) -> String {
    stderr(o).lines().last().unwrap_or_default().to_string()
}

#[test]
fn without_capabilities_oxlb_refuses_in_one_sentence_naming_what_is_missing() {
    require_root();
    // Root with an empty bounding set: the same uid, but no capability survives the exec.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all"])
        .arg(oxlb_binary())
        .args(["run", "--iface", "lo"])
        .output()
        .expect("run setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("as root or with the capabilities"), "{line}");
    assert!(
        line.contains("missing: CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF"),
        "{line}"
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one sentence only: {}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_interface_is_refused_by_name() {
    require_root();
    let ns = Netns::create(&format!("{}-cli", unique_prefix()));
    let out = ns
        .command(&[oxlb_binary().to_str().unwrap(), "run", "--iface", "nosuch0"])
        .output()
        .expect("run oxlb");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("\"nosuch0\" does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_invalid_config_file_is_refused_before_any_interface_is_touched() {
    require_root();
    let ns = Netns::create(&format!("{}-cfg", unique_prefix()));
    ns.exec_ok(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.exec_ok(&["ip", "link", "set", "v0", "up"]);
    ns.exec_ok(&["ip", "link", "set", "v1", "up"]);
    let dir = std::env::temp_dir().join(format!("{}-cfg", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[[loadbalancer]]\nserviceArguments = { externalIP = \"198.18.100.1\", port = 2020, protocol = \"tcp\", mode = 4 }\nendpoints = [ { endpointIP = \"198.18.31.1\", targetPort = 8080, weight = 1 } ]\n",
    )
    .unwrap();
    let out = ns
        .command(&[
            oxlb_binary().to_str().unwrap(),
            "run",
            "--iface",
            "v0",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .expect("run oxlb");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("loadbalancer #1") && line.contains("fullproxy"),
        "{line}"
    );
    let links = ns.exec_ok(&["ip", "-j", "link", "show", "dev", "v0"]);
    assert!(
        !links.contains("\"xdp\""),
        "XDP was attached despite the bad config: {links}"
    );
}
