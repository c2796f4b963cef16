//! `--setRoles`: the real binary, the stand-in API server and two fake appliances recording
//! the roles posted to `/netlox/v1/config/cistate`. One is MASTER, the other BACKUP; when the
//! MASTER stops answering its liveness probe the other becomes MASTER within a bounded time.
//! An appliance a LoxiURL object adds takes part the same way until the object goes.
//! Needs no root.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::appliance::FakeAppliance;
use support::operator::spawn_operator;
use support::{kubeconfig, wait_for, ApiServer};

/// A probe period (2 s) to notice, the probe's 1 s timeout, and the push: well under this.
const TAKEOVER_BOUND: Duration = Duration::from_secs(8);

struct Setup {
    _rt: tokio::runtime::Runtime,
    api: ApiServer,
    dir: std::path::PathBuf,
    kc: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let api = ApiServer::default();
        let dir = std::env::temp_dir().join(format!("oxlb-op-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        {
            let _g = rt.enter();
            api.serve(l);
        }
        let kc = kubeconfig(&dir, port);
        Setup {
            _rt: rt,
            api,
            dir,
            kc,
        }
    }

    fn appliance(&self, ip: &str) -> (FakeAppliance, u16) {
        let _g = self._rt.enter();
        let fake = FakeAppliance::default();
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        fake.serve(l);
        (fake, port)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_backup_becomes_master_when_the_master_stops_answering_and_the_old_one_returns_as_backup() {
    let s = Setup::new("roles");
    let (a, pa) = s.appliance("127.0.0.1");
    let (b, pb) = s.appliance("127.0.0.1");
    // The probes and role pushes carry the token too.
    let token = "roles-test-token-0123456789";
    a.require_token(token);
    b.require_token(token);
    let tf = s.dir.join("token");
    std::fs::write(&tf, token).unwrap();
    let op = spawn_operator(
        &s.dir,
        &s.kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{pa},http://127.0.0.1:{pb}"),
            "--externalCIDR=198.18.100.0/24",
            "--setRoles=0.0.0.0",
            &format!("--apiTokenFile={}", tf.display()),
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nroles a: {:?}\nroles b: {:?}",
            op.log(),
            a.roles(),
            b.roles()
        )
    };
    wait_for(
        15,
        "a MASTER, b BACKUP",
        || {
            (a.role("llb-inst0").as_deref() == Some("MASTER")
                && b.role("llb-inst0").as_deref() == Some("BACKUP"))
            .then_some(())
        },
        &diag,
    );
    assert_eq!(
        a.roles()[0],
        serde_json::json!({"instance": "llb-inst0", "state": "MASTER", "vip": "0.0.0.0"})
    );
    assert_eq!(a.refused_auth() + b.refused_auth(), 0, "{}", diag());

    a.hang(true);
    let t0 = Instant::now();
    wait_for(
        15,
        "b MASTER",
        || (b.role("llb-inst0").as_deref() == Some("MASTER")).then_some(()),
        &diag,
    );
    let took = t0.elapsed();
    assert!(
        took < TAKEOVER_BOUND,
        "the takeover took {took:?}\n{}",
        diag()
    );

    // The old MASTER answers again: it is told it is BACKUP, and b stays MASTER.
    a.hang(false);
    wait_for(
        15,
        "a BACKUP again",
        || (a.role("llb-inst0").as_deref() == Some("BACKUP")).then_some(()),
        &diag,
    );
    assert_eq!(b.role("llb-inst0").as_deref(), Some("MASTER"), "{}", diag());
    drop(op);
}

#[test]
fn an_excluded_appliance_is_never_master_and_another_zone_sets_the_default_instance_too() {
    let s = Setup::new("roles-excl");
    let (a, pa) = s.appliance("127.0.0.1");
    let (b, pb) = s.appliance("127.0.0.2");
    let op = spawn_operator(
        &s.dir,
        &s.kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{pa},http://127.0.0.2:{pb}"),
            "--externalCIDR=198.18.100.0/24",
            "--setRoles=198.18.0.10",
            "--excludeRoleList=127.0.0.1",
            "--zone=az1",
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nroles a: {:?}\nroles b: {:?}",
            op.log(),
            a.roles(),
            b.roles()
        )
    };
    wait_for(
        15,
        "b MASTER of both instances, a BACKUP",
        || {
            let ok = ["llb-inst0", "az1-inst0"].iter().all(|i| {
                b.role(i).as_deref() == Some("MASTER") && a.role(i).as_deref() == Some("BACKUP")
            });
            ok.then_some(())
        },
        &diag,
    );
    assert!(
        b.roles().iter().all(|r| r["vip"] == "198.18.0.10"),
        "{}",
        diag()
    );

    // With b gone there is no eligible appliance: a stays BACKUP.
    b.hang(true);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        a.roles().iter().all(|r| r["state"] == "BACKUP"),
        "{}",
        diag()
    );
    drop(op);
}

#[test]
fn an_appliance_a_loxiurl_adds_takes_part_in_the_roles_until_the_object_is_deleted() {
    let s = Setup::new("roles-loxiurl");
    let (a, pa) = s.appliance("127.0.0.1");
    let (b, pb) = s.appliance("127.0.0.2");
    // A long resync period: no role is sent again unasked during the test, so each push
    // counted below was caused by the change before it.
    let op = spawn_operator(
        &s.dir,
        &s.kc,
        "operator",
        &[
            &format!("--loxiURL=http://127.0.0.1:{pa}"),
            "--externalCIDR=198.18.100.0/24",
            "--setRoles=0.0.0.0",
            "--resyncPeriod=300",
        ],
    );
    let diag = || {
        format!(
            "operator log:\n{}\nroles a: {:?}\nroles b: {:?}\ncalls to b: {}",
            op.log(),
            a.roles(),
            b.roles(),
            b.calls()
        )
    };
    wait_for(
        15,
        "a MASTER",
        || (a.role("llb-inst0").as_deref() == Some("MASTER")).then_some(()),
        &diag,
    );
    assert_eq!(b.calls(), 0, "{}", diag());

    // b joins through a LoxiURL: probed and told BACKUP, while a stays MASTER.
    s.api.apply(
        "loxiurls",
        json!({"apiVersion": "loxiurl.loxilb.io/v1", "kind": "LoxiURL",
               "metadata": {"name": "second"},
               "spec": {"loxiURL": format!("http://127.0.0.2:{pb}")}}),
    );
    wait_for(
        10,
        "b BACKUP",
        || (b.role("llb-inst0").as_deref() == Some("BACKUP")).then_some(()),
        &diag,
    );
    assert_eq!(
        b.roles()[0],
        json!({"instance": "llb-inst0", "state": "BACKUP", "vip": "0.0.0.0"}),
        "{}",
        diag()
    );
    assert_eq!(states(&a, "llb-inst0"), ["MASTER"], "{}", diag());

    // The MASTER stops answering: the election picks b.
    a.hang(true);
    let t0 = Instant::now();
    wait_for(
        15,
        "b MASTER",
        || (b.role("llb-inst0").as_deref() == Some("MASTER")).then_some(()),
        &diag,
    );
    let took = t0.elapsed();
    assert!(
        took < TAKEOVER_BOUND,
        "the takeover took {took:?}\n{}",
        diag()
    );
    a.hang(false);
    wait_for(
        15,
        "a BACKUP",
        || (a.role("llb-inst0").as_deref() == Some("BACKUP")).then_some(()),
        &diag,
    );

    // The LoxiURL goes while b is MASTER: a is elected, and b is told nothing more.
    s.api.delete("loxiurls", "", "second");
    let t0 = Instant::now();
    wait_for(
        15,
        "a MASTER again",
        || (a.role("llb-inst0").as_deref() == Some("MASTER")).then_some(()),
        &diag,
    );
    let took = t0.elapsed();
    // The watch event, then a probe round without b.
    assert!(
        took < TAKEOVER_BOUND,
        "the election took {took:?}\n{}",
        diag()
    );
    // a's election ran in a round without b, after every round that still had it ended.
    let calls = b.calls();
    std::thread::sleep(3 * oxlb_operator::roles::PROBE_PERIOD);
    assert_eq!(b.calls(), calls, "{}", diag());
    assert_eq!(states(&b, "llb-inst0"), ["BACKUP", "MASTER"], "{}", diag());
    assert_eq!(
        states(&a, "llb-inst0"),
        ["MASTER", "BACKUP", "MASTER"],
        "{}",
        diag()
    );
    drop(op);
}

/// The states of `instance` an appliance was told, in order.
fn states(f: &FakeAppliance, instance: &str) -> Vec<String> {
    f.roles()
        .iter()
        .filter(|v| v["instance"] == instance)
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}
