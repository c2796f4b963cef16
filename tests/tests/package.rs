//! The Debian package as an operator gets it: built by `deploy/debian/build.sh`, inspected with
//! `dpkg-deb`, and unpacked (never installed: `dpkg -i` would change this host). Its oxlb is
//! started the way `oxlb.service` starts it (the unit's own ExecStart, an unprivileged user with
//! only the unit's capabilities, a `NOTIFY_SOCKET`) in the test topology's
//! LB namespace, and its oxlbctl creates a service that carries traffic.
//!
//! This machine has no systemd as PID 1, so the unit itself is checked with
//! `systemd-analyze verify`. Needs root; without it every test fails, saying so.

use oxlb_tests::checks::get_via_vip;
use oxlb_tests::{
    require_root, target_dir, unique_prefix, ChildGuard, Node, Topology, TopologyOptions,
    BACKEND_NAMES, VIP,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Building the release binaries from scratch on the 2-core development machine takes minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// From start to READY=1: the harness's own bound for oxlb's API to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The user oxlb runs as in place of the unit's DynamicUser (`nobody`: owns nothing).
const SERVICE_UID: u32 = 65534;
const UNIT: &str = "lib/systemd/system/oxlb.service";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A directory removed on drop (kept if the test fails, and named in the failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{}-{what}", unique_prefix()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package once per test run with `bash deploy/debian/build.sh` (into the target
/// directory these tests were built in), killed after [`BUILD_TIMEOUT`].
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require_root();
        let target = target_dir()
            .parent()
            .expect("target/release has a parent")
            .to_path_buf();
        let log = std::env::temp_dir().join(format!("{}-build.log", unique_prefix()));
        let file = std::fs::File::create(&log).expect("build log");
        let mut child = Command::new("bash")
            .arg(repo_root().join("deploy/debian/build.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start deploy/debian/build.sh");
        let deadline = Instant::now() + BUILD_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for build.sh") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "build.sh did not finish within {BUILD_TIMEOUT:?}; its output is in {}",
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(500));
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "build.sh failed ({status}):\n{output}");
        let _ = std::fs::remove_file(&log);
        let deb = PathBuf::from(output.lines().last().unwrap_or_default().trim());
        assert!(
            deb.starts_with(target.join("debian"))
                && deb.extension().is_some_and(|e| e == "deb")
                && deb.exists(),
            "build.sh's last line should name the package it built; output:\n{output}"
        );
        deb
    })
}

fn unpack(deb: &Path, into: &Path) {
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into));
}

/// `Key=value` of the unit; panics unless the key is there exactly once.
fn unit_value(unit: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{key}= should appear once in oxlb.service:\n{unit}"
    );
    values[0].trim().to_string()
}

/// `CAP_NET_ADMIN CAP_BPF` -> `net_admin,bpf` (setpriv's spelling).
fn setpriv_caps(list: &str) -> String {
    list.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{c} is not a capability name"))
                .to_lowercase()
        })
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_package_holds_binaries_unit_and_conffiles_and_its_scripts_pass_without_systemd() {
    let deb = package();
    let name = deb.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        name.starts_with("oxlb_") && name.ends_with("_amd64.deb"),
        "{name}"
    );

    let info = run_ok(Command::new("dpkg-deb").arg("--info").arg(deb));
    for needle in [
        "Package: oxlb",
        "Architecture: amd64",
        "Depends: libc6 (>= 2.",
        "libelf1",
        "zlib1g",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(
            info.contains(needle),
            "dpkg-deb --info lacks {needle:?}:\n{info}"
        );
    }
    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for (path, mode) in [
        ("./usr/bin/oxlb", "-rwxr-xr-x root/root"),
        ("./usr/bin/oxlbctl", "-rwxr-xr-x root/root"),
        ("./lib/systemd/system/oxlb.service", "-rw-r--r-- root/root"),
        ("./etc/oxlb/oxlb.toml", "-rw-r--r-- root/root"),
        ("./etc/default/oxlb", "-rw-r--r-- root/root"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} ({mode}) missing from the package:\n{contents}"
        );
    }

    let tmp = TempDir::new("pkg-control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&tmp.0));
    let conffiles = std::fs::read_to_string(tmp.0.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles, "/etc/oxlb/oxlb.toml\n/etc/default/oxlb\n");

    // Every binary's libraries are in Depends (ldd finds them all on this machine).
    let files = TempDir::new("pkg-files");
    unpack(deb, &files.0);
    for bin in ["usr/bin/oxlb", "usr/bin/oxlbctl"] {
        let ldd = run_ok(Command::new("ldd").arg(files.0.join(bin)));
        assert!(!ldd.contains("not found"), "{bin}: {ldd}");
        for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
            let known = [
                "linux-vdso",
                "libelf.so",
                "libz.so",
                "libgcc_s.so",
                "libm.so",
                "libc.so",
                "/lib64/ld-linux",
            ];
            assert!(
                known.iter().any(|k| lib.starts_with(k)),
                "{bin} links {lib}, which Depends does not cover:\n{ldd}"
            );
        }
    }

    // Without systemd as PID 1 (this machine), configuring and upgrading touch nothing and
    // succeed. `remove` is not run: it would disable a unit of this host.
    let offline = !Path::new("/run/systemd/system").exists();
    assert!(
        offline,
        "this test expects a host without systemd as init; running the maintainer scripts here would change the host's services"
    );
    for (script, args) in [
        ("postinst", &["configure", ""][..]),
        ("postinst", &["configure", "0.0.1"][..]),
        ("prerm", &["upgrade", "0.2.0"][..]),
        ("postrm", &["upgrade", "0.2.0"][..]),
    ] {
        let path = tmp.0.join(script);
        run_ok(Command::new("sh").arg("-n").arg(&path));
        run_ok(Command::new("sh").arg(&path).args(args));
    }
    for script in ["prerm", "postrm"] {
        run_ok(Command::new("sh").arg("-n").arg(tmp.0.join(script)));
    }
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify_against_the_packaged_binary() {
    let deb = package();
    let tmp = TempDir::new("pkg-verify");
    unpack(deb, &tmp.0);
    let root = tmp.0.to_str().expect("utf-8");
    // verify checks that ExecStart's program exists; the package is not installed on this host,
    // so the unit under test points at the unpacked copy, and nothing else changes.
    let unit = std::fs::read_to_string(tmp.0.join(UNIT)).expect("unit");
    let shipped = std::fs::read_to_string(repo_root().join("deploy/systemd/oxlb.service"))
        .expect("deploy/systemd/oxlb.service");
    assert_eq!(
        unit, shipped,
        "the package holds another unit than deploy/systemd/"
    );
    let relocated = unit
        .replace("/usr/bin/oxlb ", &format!("{root}/usr/bin/oxlb "))
        .replace("=/etc/default/oxlb", &format!("={root}/etc/default/oxlb"));
    let path = tmp.0.join("oxlb.service");
    std::fs::write(&path, relocated).expect("write unit copy");

    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 even for unknown keys and bad values, which it only prints: any output
    // is a failure.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{said}",
        path.display(),
        out.status
    );
}

/// The package unpacked into a topology's scratch directory, prepared to be started the way
/// `oxlb.service` starts it: the operator's interfaces in its `/etc/default/oxlb`, a state
/// directory owned by the service's user, and a notify socket in place of systemd's.
struct Unpacked {
    root: PathBuf,
    unit: String,
    state: PathBuf,
    notify_path: PathBuf,
    notify: UnixDatagram,
}

impl Unpacked {
    fn prepare(topo: &Topology) -> Unpacked {
        let scratch = topo.scratch_dir();
        let root = scratch.join("pkg");
        unpack(package(), &root);
        let unit = std::fs::read_to_string(root.join(UNIT)).expect("unit");

        // The operator's one edit: the interfaces, in the packaged /etc/default/oxlb.
        let defaults_path = root.join("etc/default/oxlb");
        let defaults = std::fs::read_to_string(&defaults_path).expect("defaults");
        assert!(defaults.contains("\nOXLB_ARGS=\"\"\n"), "{defaults}");
        std::fs::write(
            &defaults_path,
            defaults.replace(
                "\nOXLB_ARGS=\"\"\n",
                "\nOXLB_ARGS=\"--iface lb0 --iface lb1\"\n",
            ),
        )
        .expect("edit defaults");

        // StateDirectory=: created for the service's user.
        let state = scratch.join("state-pkg");
        std::fs::create_dir(&state).expect("state dir");
        std::os::unix::fs::chown(&state, Some(SERVICE_UID), Some(SERVICE_UID)).expect("chown");

        // systemd's notify socket: a datagram socket anyone may write to.
        let notify_path = scratch.join("notify");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Unpacked {
            root,
            unit,
            state,
            notify_path,
            notify,
        }
    }

    fn bin(&self, name: &str) -> String {
        format!("{}/usr/bin/{name}", self.root.display())
    }

    /// The unit's ExecStart word by word, `$OXLB_ARGS` expanded from the unpacked
    /// `/etc/default/oxlb`, the package's paths relocated to the unpacked tree.
    fn exec_start(&self) -> Vec<String> {
        let defaults =
            std::fs::read_to_string(self.root.join("etc/default/oxlb")).expect("defaults");
        let oxlb_args = defaults
            .lines()
            .find_map(|l| l.strip_prefix("OXLB_ARGS="))
            .expect("OXLB_ARGS=")
            .trim_matches('"')
            .split_whitespace();
        let mut exec: Vec<String> = Vec::new();
        let mut oxlb_args = Some(oxlb_args);
        for word in unit_value(&self.unit, "ExecStart").split_whitespace() {
            match word {
                "$OXLB_ARGS" => exec.extend(oxlb_args.take().expect("once").map(String::from)),
                "/var/lib/oxlb" => exec.push(self.state.to_str().expect("utf-8").into()),
                w if w.starts_with("/usr/") || w.starts_with("/etc/") => {
                    exec.push(format!("{}{w}", self.root.display()));
                }
                w => exec.push(w.into()),
            }
        }
        exec
    }

    /// Starts ExecStart in the LB namespace as the service's user with the capabilities `caps`
    /// (the unit's spelling) as its bounding, inheritable and ambient sets, as systemd would.
    /// Returns the process and its command line.
    fn start(&self, topo: &Topology, caps: &str, log: &str) -> (ChildGuard, Vec<String>) {
        let caps_arg = format!("-all,{}", setpriv_caps(caps));
        let uid = SERVICE_UID.to_string();
        let mut args: Vec<String> = vec![
            "setpriv".into(),
            "--reuid".into(),
            uid.clone(),
            "--regid".into(),
            uid,
            "--clear-groups".into(),
            "--no-new-privs".into(),
        ];
        for flag in ["--inh-caps", "--ambient-caps", "--bounding-set"] {
            args.push(flag.into());
            args.push(caps_arg.clone());
        }
        args.push("env".into());
        args.push(format!("NOTIFY_SOCKET={}", self.notify_path.display()));
        args.extend(self.exec_start());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        (topo.spawn(Node::Lb, &argv, log), args)
    }

    /// The first notification, or how oxlb exited before sending one; panics after
    /// [`READY_TIMEOUT`] with neither.
    fn first_notification(&self, oxlb: &mut ChildGuard) -> Result<String, ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            if let Some(status) = oxlb.try_wait() {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "oxlb neither notified nor exited within {READY_TIMEOUT:?}; output:\n{}",
                oxlb.log()
            );
        }
    }
}

fn xdp_on(topo: &Topology, dev: &str) -> bool {
    topo.exec_ok(Node::Lb, &["ip", "-d", "link", "show", "dev", dev])
        .contains("xdp")
}

#[test]
fn the_unpacked_oxlb_started_as_the_unit_starts_it_notifies_serves_and_stops_cleanly() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let pkg = Unpacked::prepare(&topo);
    let unit = &pkg.unit;
    assert_eq!(unit_value(unit, "Type"), "notify");
    assert_eq!(unit_value(unit, "DynamicUser"), "yes");
    assert_eq!(unit_value(unit, "StateDirectory"), "oxlb");
    assert_eq!(unit_value(unit, "EnvironmentFile"), "/etc/default/oxlb");
    let caps = unit_value(unit, "AmbientCapabilities");
    assert_eq!(unit_value(unit, "CapabilityBoundingSet"), caps);

    let (mut oxlb, argv) = pkg.start(&topo, &caps, "oxlb-pkg");
    let log = |oxlb: &ChildGuard| format!("command {argv:?}; output:\n{}", oxlb.log());
    let ready = match pkg.first_notification(&mut oxlb) {
        Ok(msg) => msg,
        Err(status) => panic!("oxlb exited ({status}) before READY=1; {}", log(&oxlb)),
    };
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving lb0, lb1"),
        "{ready:?}"
    );
    // READY=1 means ready: the API answers at once, no polling.
    let (code, body) = topo.api("GET", "/netlox/v1/", None);
    assert_eq!(code, 200, "API right after READY=1: {body}; {}", log(&oxlb));
    let uid = SERVICE_UID.to_string();
    // It really runs unprivileged with exactly the unit's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", oxlb.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .next()
            .expect("value")
            .to_string()
    };
    assert_eq!(field("Uid:"), uid, "{status}");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("hex");
    let wanted = caps.split_whitespace().fold(0u64, |m, c| {
        m | 1
            << match c {
                "CAP_NET_ADMIN" => 12,
                "CAP_NET_RAW" => 13,
                "CAP_IPC_LOCK" => 14,
                "CAP_SYS_ADMIN" => 21,
                "CAP_PERFMON" => 38,
                "CAP_BPF" => 39,
                other => panic!("add {other} to this test's table"),
            }
    });
    assert_eq!(eff, wanted, "CapEff of oxlb; {status}");
    let reserved = topo.exec_ok(
        Node::Lb,
        &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"],
    );
    assert!(reserved.contains("40000-49999"), "{reserved}");

    // The packaged oxlbctl creates a service; traffic passes through the VIP.
    let oxlbctl = pkg.bin("oxlbctl");
    let created = topo.exec(
        Node::Lb,
        &[
            &oxlbctl,
            "create",
            "lb",
            VIP,
            "--tcp=2020:8080",
            "--endpoints=198.18.31.1:1,198.18.31.2:1,198.18.31.3:1",
            "--name",
            "web",
        ],
    );
    assert!(
        created.status.success(),
        "oxlbctl create: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    let diag = || log(&oxlb);
    let answer = get_via_vip(&topo, &diag);
    assert!(
        BACKEND_NAMES.contains(&answer.backend.as_str()),
        "{answer:?}"
    );
    assert!(std::fs::read_to_string(pkg.state.join("state.json"))
        .expect("the service user saved its state")
        .contains(VIP));

    // systemctl stop: SIGTERM, STOPPING=1, exit 0, no XDP program left.
    let (status, killed) = oxlb.stop().expect("oxlb was running");
    assert!(!killed && status.success(), "{status}; {}", log(&oxlb));
    let mut buf = [0u8; 64];
    let stopping = pkg.notify.recv(&mut buf).map(|n| buf[..n].to_vec());
    assert_eq!(
        stopping.as_deref().ok(),
        Some(&b"STOPPING=1"[..]),
        "{}",
        log(&oxlb)
    );
    for dev in ["lb0", "lb1"] {
        assert!(!xdp_on(&topo, dev), "XDP left on {dev}; {}", log(&oxlb));
    }
}

#[test]
fn without_any_one_of_the_units_capabilities_oxlb_refuses_to_start_and_leaves_nothing() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let pkg = Unpacked::prepare(&topo);
    let caps = unit_value(&pkg.unit, "AmbientCapabilities");
    for left_out in caps.split_whitespace() {
        let fewer: Vec<&str> = caps.split_whitespace().filter(|c| c != &left_out).collect();
        let (mut oxlb, argv) = pkg.start(&topo, &fewer.join(" "), "oxlb-fewer-caps");
        match pkg.first_notification(&mut oxlb) {
            Err(status) => {
                assert!(!status.success(), "without {left_out}: {status}");
                let log = oxlb.log();
                let why = log.lines().rfind(|l| l.contains("oxlb:")).unwrap_or_default();
                eprintln!("without {left_out}: {why}");
            }
            Ok(msg) => panic!(
                "without {left_out} oxlb still notified {msg:?}: the unit grants more than it needs; command {argv:?}"
            ),
        }
        for dev in ["lb0", "lb1"] {
            assert!(!xdp_on(&topo, dev), "without {left_out}: XDP left on {dev}");
        }
    }
}
