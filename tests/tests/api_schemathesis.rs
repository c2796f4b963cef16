//! Property-based test of the REST API: schemathesis (from PyPI, installed into a venv by
//! `tests/run.sh`) reads the OpenAPI document a real oxlb serves, generates requests from it
//! (the documented examples, boundary and invalid values, random ones) and checks that no
//! answer is a 5xx and that every answer has a documented status, content type and schema.
//! Also: HA state set through the API survives a restart. Needs root.

use oxlb_tests::{unique_prefix, Node, Topology, TopologyOptions, API_ADDR};
use std::path::PathBuf;

/// Where `tests/run.sh` installs schemathesis; `OXLB_SCHEMATHESIS` names another one.
const DEFAULT_SCHEMATHESIS: &str = "/opt/oxlb-test-venv/bin/schemathesis";
/// Test cases per operation and phase: enough to reach every documented answer of every
/// operation, few enough to stay well under a minute on two cores (about 10 s here).
/// `OXLB_SCHEMATHESIS_EXAMPLES` asks for more in a deeper run by hand.
const MAX_EXAMPLES: &str = "100";
/// The whole schemathesis run is killed after this many seconds (`timeout`), so a hung API
/// fails the test instead of stalling CI.
const RUN_LIMIT_SECS: &str = "100";

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("OXLB_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCHEMATHESIS));
    assert!(
        path.exists(),
        "{} does not exist: install schemathesis with `bash tests/run.sh` (its venv step), or \
         `python3 -m venv /opt/oxlb-test-venv && /opt/oxlb-test-venv/bin/pip install \
         'schemathesis>=4,<5'`, or point OXLB_SCHEMATHESIS at one",
        path.display()
    );
    path
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe() {
    let st = schemathesis();
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _oxlb = topo.start_oxlb(&[]);
    let base = format!("http://{API_ADDR}");
    let spec = format!("{base}/netlox/v1/openapi.json");
    let report = topo.scratch_dir().join("schemathesis-report");
    let examples =
        std::env::var("OXLB_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.to_owned());
    let out = topo.exec(
        Node::Lb,
        &[
            // In the scratch directory: schemathesis and hypothesis write caches into their
            // working directory, which would otherwise be the source tree.
            "env",
            "-C",
            topo.scratch_dir().to_str().expect("utf-8 path"),
            "timeout",
            "--kill-after=5",
            RUN_LIMIT_SECS,
            st.to_str().expect("utf-8 path"),
            "run",
            &spec,
            "--url",
            &base,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--max-examples",
            &examples,
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
            "--report-dir",
            report.to_str().expect("utf-8 path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture (and on failure): what was tested, and the seed to repeat it.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Exit 0 with nothing tested would pass vacuously.
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "schemathesis tested nothing:\n{stdout}\n{stderr}"
    );
    // The API still answers after the run, and the appliance is still running it.
    let (status, body) = topo.api("GET", "/netlox/v1/status", None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn ha_state_set_through_the_api_is_listed_and_survives_a_restart() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let (status, body) = topo.api("GET", "/netlox/v1/config/cistate/all", None);
    assert_eq!((status, body.as_str()), (200, r#"{"Attr":[]}"#));
    let set = r#"{"instance":"llb-inst0","state":"BACKUP","vip":"198.18.100.1"}"#;
    let (status, body) = topo.api("POST", "/netlox/v1/config/cistate", Some(set));
    assert_eq!(status, 200, "{body}");
    let (status, body) = topo.api(
        "POST",
        "/netlox/v1/config/cistate",
        Some(r#"{"instance":"llb-inst0","state":"ACTIVE"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""fields":["state"]"#), "{body}");
    let expected = serde_json::json!({"Attr": [
        {"instance": "llb-inst0", "state": "BACKUP", "vip": "198.18.100.1", "sync": 0}
    ]});
    let listed = |topo: &Topology| {
        let (status, body) = topo.api("GET", "/netlox/v1/config/cistate/all", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("a JSON listing")
    };
    assert_eq!(listed(&topo), expected);
    // SIGKILL, as a crash: an answered change was saved before the answer.
    oxlb.kill();
    let _oxlb = topo.start_oxlb(&[]);
    assert_eq!(
        listed(&topo),
        expected,
        "the HA state was lost by the restart"
    );
}
