//! The Debian package as an operator gets and uses it, on this machine: built by
//! `deploy/debian/build.sh`, installed with `dpkg -i`, configured in its conffiles, its unit's
//! ExecStart started (by systemd where systemd is init, else by hand exactly as the installed
//! unit says), a service created with the installed oxlbctl carrying traffic, and finally
//! `dpkg --purge` leaving nothing behind. The commands are the README's ("Install on bare
//! metal"), which this file checks it still shows.
//!
//! Installing changes the host (dpkg's database, /usr/bin, /etc, /var/lib): these tests are
//! meant for a throwaway machine, as CI's is. A host that has oxlb installed, or state of an
//! oxlb run by hand (/var/lib/oxlb), is refused, never purged. The package is purged when a
//! test fails too. Needs root; without it every test fails, saying so.

use oxlb_tests::checks::{get_via_vip, udp_request_is_answered, vip_url};
use oxlb_tests::{
    require_root, target_dir, unique_prefix, ChildGuard, Node, Topology, TopologyOptions,
    BACKEND_NAMES, VIP,
};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Building the release binaries from scratch on the 2-core development machine takes minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// From start to READY=1: the harness's own bound for oxlb's API to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long dpkg may wait for another dpkg or apt on this host to release its lock.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(120);
/// The user oxlb runs as by hand in place of the unit's DynamicUser (`nobody`: owns nothing).
const SERVICE_UID: u32 = 65534;
/// dpkg wants ldconfig and start-stop-daemon on its PATH, whatever the test runner's is.
const DPKG_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const UNIT: &str = "/lib/systemd/system/oxlb.service";
const STATE_DIR: &str = "/var/lib/oxlb";
/// Where DynamicUser=yes moves the state directory once systemd has started the unit.
const PRIVATE_STATE_DIR: &str = "/var/lib/private/oxlb";
/// Files `dpkg -L oxlb` must list and the install must have put in place.
const PACKAGE_FILES: [&str; 8] = [
    "/usr/bin/oxlb",
    "/usr/bin/oxlbctl",
    UNIT,
    "/etc/oxlb/oxlb.toml",
    "/etc/default/oxlb",
    "/usr/share/doc/oxlb/copyright",
    "/usr/share/doc/oxlb/changelog.gz",
    "/usr/share/lintian/overrides/oxlb",
];
/// What a purge must leave no trace of, besides [`PACKAGE_FILES`]; also what must not exist
/// before a test installs (it would be somebody's oxlb, and the purge would delete it).
const PACKAGE_DIRS: [&str; 4] = [
    "/etc/oxlb",
    "/usr/share/doc/oxlb",
    STATE_DIR,
    PRIVATE_STATE_DIR,
];

// The README's commands, run as written; each must appear verbatim in its install section.
const README_BUILD: &str = "deb=$(bash deploy/debian/build.sh | tail -n 1)";
const README_INSTALL: &str = "dpkg -i \"$deb\"";
const README_EDIT_DEFAULTS: &str =
    r#"sed -i 's/^OXLB_ARGS=.*/OXLB_ARGS="--iface lb0 --iface lb1"/' /etc/default/oxlb"#;
const README_EDIT_CONFIG: &str = r#"cat >>/etc/oxlb/oxlb.toml <<'EOF'
[[loadbalancer]]
serviceArguments = { externalIP = "198.18.100.1", port = 2020, protocol = "udp", name = "echo" }
endpoints = [
  { endpointIP = "198.18.31.1", targetPort = 8080, weight = 1 },
  { endpointIP = "198.18.31.2", targetPort = 8080, weight = 1 },
  { endpointIP = "198.18.31.3", targetPort = 8080, weight = 1 },
]
EOF"#;
const README_START: &str = "systemctl start oxlb";
const README_CREATE: &str = "oxlbctl create lb 198.18.100.1 --tcp=2020:8080 \
     --endpoints=198.18.31.1:1,198.18.31.2:1,198.18.31.3:1 --name web";
const README_LIST: &str = "oxlbctl get lb";
const README_CURL: &str = "curl http://198.18.100.1:2020/";
const README_STOP: &str = "systemctl stop oxlb";
const README_PURGE: &str = "dpkg --purge oxlb";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
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

/// Runs a README command line with `sh` on this host (not in a namespace).
fn sh(script: &str) -> String {
    run_ok(Command::new("sh").arg("-c").arg(script))
}

/// The README's "Install on bare metal" section.
fn readme_install_section() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Install on bare metal\n")
        .expect("README.md has an \"Install on bare metal\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// Builds the package once per test run with the README's command (`bash
/// deploy/debian/build.sh`, into the target directory these tests were built in), killed after
/// [`BUILD_TIMEOUT`].
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

/// `dpkg ARGS`, retried while another dpkg or apt on this host holds dpkg's lock.
fn dpkg<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let deadline = Instant::now() + DPKG_LOCK_WAIT;
    loop {
        let out = run(Command::new("dpkg").args(args).env("PATH", DPKG_PATH));
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() >= deadline {
            return out;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn dpkg_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = dpkg(args);
    let argv: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    assert!(
        out.status.success(),
        "dpkg {argv:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the package oxlb (`installed`, `config-files`, ...), `None` if dpkg has
/// never heard of it.
fn dpkg_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "oxlb"]));
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && status != "not-installed").then_some(status)
}

/// Serialises this file's tests that install the package: the host has one dpkg database.
static HOST_PACKAGES: Mutex<()> = Mutex::new(());

/// The package installed on this host for one test. Dropping it purges the package, so a
/// failed test leaves nothing installed; [`Installed::purge`] purges and checks the result.
struct Installed {
    purged: bool,
    _host: MutexGuard<'static, ()>,
}

impl Installed {
    /// Refuses (panics, touching nothing) if this host has an oxlb of its own, then installs
    /// the package with the README's `dpkg -i`.
    fn install(deb: &Path) -> Installed {
        let host = HOST_PACKAGES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(status) = dpkg_status() {
            panic!(
                "dpkg says the package oxlb is {status} on this host: this test installs oxlb \
                 and purges it afterwards, which would take yours (its conffiles and saved \
                 services). Run it on a throwaway machine (CI does), or `dpkg --purge oxlb` \
                 first if you mean to."
            );
        }
        for path in PACKAGE_FILES.iter().chain(&PACKAGE_DIRS) {
            assert!(
                std::fs::symlink_metadata(path).is_err(),
                "{path} exists although the package oxlb is not installed (an oxlb run by \
                 hand keeps its saved services in {STATE_DIR}): this test would overwrite it \
                 and delete it when it purges the package. Run it on a throwaway machine (CI \
                 does), or move {path} away first."
            );
        }
        // From here on a failure purges, a half-done install too.
        let installed = Installed {
            purged: false,
            _host: host,
        };
        dpkg_ok(&[OsStr::new("-i"), deb.as_os_str()]);
        installed
    }

    /// The README's `dpkg --purge oxlb`; panics unless it succeeds and leaves none of the
    /// package's files, directories and state.
    fn purge(mut self) {
        let argv: Vec<&str> = README_PURGE.split_whitespace().skip(1).collect();
        dpkg_ok(&argv);
        self.purged = true;
        assert_eq!(dpkg_status(), None, "dpkg still knows oxlb after the purge");
        for path in PACKAGE_FILES.iter().chain(&PACKAGE_DIRS) {
            assert!(
                std::fs::symlink_metadata(path).is_err(),
                "{path} is left after `{README_PURGE}`"
            );
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.purged {
            return;
        }
        let out = dpkg(&["--purge", "oxlb"]);
        if !out.status.success() {
            eprintln!(
                "could not purge the package oxlb after a failed test; run `dpkg --purge oxlb`:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
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
        "{key}= should appear once in {UNIT}:\n{unit}"
    );
    values[0].trim().to_string()
}

/// The variables of an `EnvironmentFile=`, quotes removed as systemd removes them.
fn environment_file(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (key, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: not KEY=value: {l}"));
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.trim().to_string(), value.to_string())
        })
        .collect()
}

/// The unit's ExecStart as systemd would run it: words, an unbraced `$VAR` replaced by the
/// words of its value. Panics on syntax this expansion does not cover (quotes, specifiers,
/// `${VAR}`, a prefix such as `-`), rather than run something else than systemd would.
fn exec_start(unit: &str, env: &[(String, String)]) -> Vec<String> {
    let line = unit_value(unit, "ExecStart");
    assert!(
        line.starts_with('/') && !line.contains(['"', '\'', '\\', '%', '{', ';']),
        "this test expands only plain words and $VAR, not ExecStart={line}"
    );
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        match word.strip_prefix('$') {
            Some(name) => {
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{word} in ExecStart={line}"
                );
                let value = env
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| v.as_str());
                argv.extend(value.split_whitespace().map(String::from));
            }
            None => {
                assert!(!word.contains('$'), "{word} in ExecStart={line}");
                argv.push(word.to_string());
            }
        }
    }
    argv
}

/// `CAP_NET_ADMIN CAP_BPF` -> `+net_admin,+bpf` (setpriv's spelling).
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

/// The capability mask of `CAP_...` names, as /proc/PID/status shows it.
fn capability_mask(list: &str) -> u64 {
    list.split_whitespace().fold(0u64, |m, c| {
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
    })
}

fn systemd_is_init() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The installed unit run by hand, as systemd would run it, for a host without systemd as
/// init: in the topology's LB namespace, as user `nobody` (for DynamicUser=) with only the
/// capabilities the unit grants, no new privileges, the unit's EnvironmentFile, the state
/// directory handed to that user (StateDirectory=), and a notify socket in place of systemd's.
struct ByHand {
    unit: String,
    notify_path: PathBuf,
    notify: UnixDatagram,
}

impl ByHand {
    fn prepare(topo: &Topology) -> ByHand {
        let unit = std::fs::read_to_string(UNIT).expect("the installed unit");
        assert_eq!(unit_value(&unit, "DynamicUser"), "yes");
        assert_eq!(unit_value(&unit, "StateDirectory"), "oxlb");
        assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
        assert_eq!(
            unit_value(&unit, "CapabilityBoundingSet"),
            unit_value(&unit, "AmbientCapabilities")
        );
        std::os::unix::fs::chown(STATE_DIR, Some(SERVICE_UID), Some(SERVICE_UID))
            .unwrap_or_else(|e| panic!("chown {STATE_DIR} (postinst creates it): {e}"));

        let notify_path = topo.scratch_dir().join("notify");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        ByHand {
            unit,
            notify_path,
            notify,
        }
    }

    /// Starts the unit's ExecStart with the capabilities `caps` (the unit's spelling) as the
    /// bounding, inheritable and ambient sets. Returns the process and its command line.
    fn start(&self, topo: &Topology, caps: &str, log: &str) -> (ChildGuard, Vec<String>) {
        let env = environment_file(&unit_value(&self.unit, "EnvironmentFile"));
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
        args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend(exec_start(&self.unit, &env));
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

/// Where systemd is init: the unit started with systemctl, pointed at the topology's LB
/// namespace by a runtime drop-in (the only difference from the installed unit). Dropping it
/// stops the unit and removes the drop-in.
struct UnderSystemd {
    dropin: PathBuf,
}

impl UnderSystemd {
    fn start(topo: &Topology) -> UnderSystemd {
        let dir = Path::new("/run/systemd/system/oxlb.service.d");
        std::fs::create_dir_all(dir).expect("create the drop-in directory");
        let dropin = dir.join("50-oxlb-test-netns.conf");
        std::fs::write(
            &dropin,
            format!(
                "[Service]\nNetworkNamespacePath=/run/netns/{}\n",
                topo.ns(Node::Lb).name()
            ),
        )
        .expect("write the drop-in");
        let unit = UnderSystemd { dropin };
        run_ok(Command::new("systemctl").arg("daemon-reload"));
        // Type=notify: returns once oxlb sent READY=1, or fails.
        let out = run(Command::new("sh").arg("-c").arg(README_START));
        assert!(
            out.status.success(),
            "{README_START} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            unit.log()
        );
        unit
    }

    fn show(&self, property: &str) -> String {
        run_ok(Command::new("systemctl").args(["show", "--value", "-p", property, "oxlb"]))
            .trim()
            .to_string()
    }

    fn log(&self) -> String {
        let out = run(Command::new("journalctl").args(["-u", "oxlb", "--no-pager", "-n", "200"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for UnderSystemd {
    fn drop(&mut self) {
        let _ = run(Command::new("systemctl").args(["stop", "oxlb"]));
        let _ = std::fs::remove_file(&self.dropin);
        if let Some(dir) = self.dropin.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = run(Command::new("systemctl").arg("daemon-reload"));
    }
}

/// The installed oxlb, running from its unit.
enum Service {
    ByHand {
        hand: ByHand,
        oxlb: ChildGuard,
        argv: Vec<String>,
    },
    Systemd(UnderSystemd),
}

impl Service {
    /// Starts the unit (README: `systemctl start oxlb`) and returns once oxlb said READY=1.
    fn start(topo: &Topology) -> Service {
        if systemd_is_init() {
            return Service::Systemd(UnderSystemd::start(topo));
        }
        let hand = ByHand::prepare(topo);
        let caps = unit_value(&hand.unit, "AmbientCapabilities");
        let (mut oxlb, argv) = hand.start(topo, &caps, "oxlb-installed");
        let ready = match hand.first_notification(&mut oxlb) {
            Ok(msg) => msg,
            Err(status) => panic!(
                "oxlb exited ({status}) before READY=1; command {argv:?}; output:\n{}",
                oxlb.log()
            ),
        };
        assert!(
            ready.starts_with("READY=1\nSTATUS=serving lb0, lb1"),
            "{ready:?}"
        );
        Service::ByHand { hand, oxlb, argv }
    }

    fn pid(&self) -> u32 {
        match self {
            Service::ByHand { oxlb, .. } => oxlb.pid(),
            Service::Systemd(unit) => unit.show("MainPID").parse().expect("MainPID"),
        }
    }

    fn log(&self) -> String {
        match self {
            Service::ByHand { oxlb, argv, .. } => {
                format!("command {argv:?}; output:\n{}", oxlb.log())
            }
            Service::Systemd(unit) => format!("journal:\n{}", unit.log()),
        }
    }

    /// `systemctl stop oxlb` (or SIGTERM by hand): panics unless oxlb says STOPPING=1 and
    /// exits 0 by itself.
    fn stop(self) {
        match self {
            Service::ByHand {
                hand,
                mut oxlb,
                argv,
            } => {
                let (status, killed) = oxlb.stop().expect("oxlb was running");
                let log = || format!("command {argv:?}; output:\n{}", oxlb.log());
                assert!(!killed && status.success(), "{status}; {}", log());
                let mut buf = [0u8; 64];
                let stopping = hand.notify.recv(&mut buf).map(|n| buf[..n].to_vec());
                assert_eq!(
                    stopping.as_deref().ok(),
                    Some(&b"STOPPING=1"[..]),
                    "{}",
                    log()
                );
            }
            Service::Systemd(unit) => {
                sh(README_STOP);
                assert_eq!(unit.show("ActiveState"), "inactive", "{}", unit.log());
                assert_eq!(unit.show("ExecMainStatus"), "0", "{}", unit.log());
            }
        }
    }
}

fn xdp_on(topo: &Topology, dev: &str) -> bool {
    topo.exec_ok(Node::Lb, &["ip", "-d", "link", "show", "dev", dev])
        .contains("xdp")
}

/// A README `oxlbctl ...` line run in the LB namespace with the installed oxlbctl.
fn installed_oxlbctl(topo: &Topology, line: &str) -> String {
    let mut argv: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(argv[0], "oxlbctl", "{line}");
    argv[0] = "/usr/bin/oxlbctl";
    let out = topo.exec(Node::Lb, &argv);
    assert!(
        out.status.success(),
        "{line}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode_and_owner(path: &str) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(meta.is_dir(), "{path} is not a directory");
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

#[test]
fn the_package_holds_binaries_unit_conffiles_and_maintainer_scripts() {
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
        "md5sums",
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
        ("./etc/oxlb/", "drwxr-xr-x root/root"),
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
    // The state directory is postinst's: under systemd it becomes a symlink (DynamicUser=).
    assert!(!contents.contains("./var/"), "{contents}");

    let control = std::env::temp_dir().join(format!("{}-pkg-control", unique_prefix()));
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    for script in ["postinst", "prerm", "postrm"] {
        run_ok(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let _ = std::fs::remove_dir_all(&control);
    assert_eq!(conffiles, "/etc/oxlb/oxlb.toml\n/etc/default/oxlb\n");

    // lintian is not a dependency of the build or the tests; where it is installed it must
    // find no error. The placeholder Maintainer (build.sh's OXLB_MAINTAINER) is known.
    if Command::new("lintian").arg("--version").output().is_ok() {
        let out = run(Command::new("lintian")
            .args(["--fail-on", "error", "--suppress-tags"])
            .arg("bogus-mail-host,bogus-mail-host-in-debian-changelog")
            .arg(deb));
        let said = String::from_utf8_lossy(&out.stdout);
        eprintln!("lintian:\n{said}");
        assert!(out.status.success(), "lintian {}:\n{said}", out.status);
    } else {
        eprintln!("lintian is not installed: not run");
    }
}

#[test]
fn dpkg_installs_the_package_its_unit_serves_a_vip_created_with_the_installed_oxlbctl_and_purge_leaves_nothing(
) {
    let readme = readme_install_section();
    for command in [
        README_BUILD,
        README_INSTALL,
        README_EDIT_DEFAULTS,
        README_EDIT_CONFIG,
        README_START,
        README_CREATE,
        README_LIST,
        README_CURL,
        README_STOP,
        README_PURGE,
    ] {
        assert!(
            readme.contains(command),
            "the README's install section no longer shows `{command}`, which this test runs"
        );
    }
    let deb = package();
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let installed = Installed::install(deb);

    // Everything landed where dpkg says, unchanged.
    let listed = dpkg_ok(&["-L", "oxlb"]);
    for path in PACKAGE_FILES {
        assert!(
            listed.lines().any(|l| l == path),
            "dpkg -L oxlb lacks {path}:\n{listed}"
        );
        assert!(Path::new(path).is_file(), "{path} is listed but missing");
    }
    let verify = dpkg_ok(&["--verify", "oxlb"]);
    assert!(verify.trim().is_empty(), "dpkg --verify oxlb:\n{verify}");
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "oxlb"]));
    for path in ["/etc/oxlb/oxlb.toml", "/etc/default/oxlb"] {
        assert!(
            conffiles.contains(path),
            "{path} is no conffile:\n{conffiles}"
        );
    }
    assert_eq!(mode_and_owner("/etc/oxlb"), (0o755, 0, 0));
    assert_eq!(mode_and_owner(STATE_DIR), (0o700, 0, 0), "made by postinst");
    let shipped = std::fs::read_to_string(repo_root().join("deploy/systemd/oxlb.service"))
        .expect("deploy/systemd/oxlb.service");
    let unit = std::fs::read_to_string(UNIT).expect("the installed unit");
    assert_eq!(unit, shipped, "{UNIT} is not deploy/systemd/oxlb.service");
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "EnvironmentFile"), "/etc/default/oxlb");
    // verify exits 0 even for unknown keys and bad values, which it only prints: any output
    // is a failure.
    let out = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{said}",
        out.status
    );
    // Every library the binaries link is in Depends.
    for bin in ["/usr/bin/oxlb", "/usr/bin/oxlbctl"] {
        let ldd = run_ok(Command::new("ldd").arg(bin));
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

    // The operator's edits: the interfaces, and a service applied at every start.
    sh(README_EDIT_DEFAULTS);
    let defaults = std::fs::read_to_string("/etc/default/oxlb").expect("/etc/default/oxlb");
    assert!(
        defaults.contains("\nOXLB_ARGS=\"--iface lb0 --iface lb1\"\n"),
        "{defaults}"
    );
    sh(README_EDIT_CONFIG);

    let oxlb = Service::start(&topo);
    // READY=1 means ready: the API answers at once, no polling.
    let (code, body) = topo.api("GET", "/netlox/v1/", None);
    assert_eq!(code, 200, "API right after READY=1: {body}; {}", oxlb.log());
    // Not root, and exactly the unit's capabilities.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", oxlb.pid())).expect("oxlb's status");
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
    assert_ne!(field("Uid:"), "0", "{status}");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("hex");
    let caps = unit_value(&unit, "AmbientCapabilities");
    assert_eq!(eff, capability_mask(&caps), "CapEff of oxlb; {status}");

    let diag = || oxlb.log();
    // The UDP service of /etc/oxlb/oxlb.toml.
    udp_request_is_answered(&topo, &diag);
    // The TCP service, created with the installed oxlbctl, answers curl from the client.
    installed_oxlbctl(&topo, README_CREATE);
    let listing = installed_oxlbctl(&topo, README_LIST);
    for needle in ["| web ", "| echo ", "198.18.31.3"] {
        assert!(listing.contains(needle), "{README_LIST}:\n{listing}");
    }
    let url = README_CURL.strip_prefix("curl ").expect("curl URL");
    assert_eq!(url, vip_url("/"));
    let answer = get_via_vip(&topo, &diag);
    assert!(
        BACKEND_NAMES.contains(&answer.backend.as_str()),
        "{answer:?}"
    );
    let saved = std::fs::read_to_string(Path::new(STATE_DIR).join("state.json"))
        .unwrap_or_else(|e| panic!("the service's user saved no state: {e}; {}", diag()));
    assert!(saved.contains(VIP) && saved.contains("\"web\""), "{saved}");

    oxlb.stop();
    for dev in ["lb0", "lb1"] {
        assert!(!xdp_on(&topo, dev), "XDP left on {dev} after stopping");
    }

    // An upgrade (the same package again) keeps the operator's edits and saved services.
    dpkg_ok(&[OsStr::new("-i"), deb.as_os_str()]);
    let after = std::fs::read_to_string("/etc/default/oxlb").expect("/etc/default/oxlb");
    assert_eq!(after, defaults, "an upgrade replaced the edited conffile");
    assert!(Path::new(STATE_DIR).join("state.json").exists());

    installed.purge();
}

#[test]
fn without_any_one_of_the_units_capabilities_the_installed_oxlb_refuses_to_start() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let installed = Installed::install(package());
    sh(README_EDIT_DEFAULTS);
    let hand = ByHand::prepare(&topo);
    let caps = unit_value(&hand.unit, "AmbientCapabilities");
    for left_out in caps.split_whitespace() {
        let fewer: Vec<&str> = caps.split_whitespace().filter(|c| c != &left_out).collect();
        let (mut oxlb, argv) = hand.start(&topo, &fewer.join(" "), "oxlb-fewer-caps");
        match hand.first_notification(&mut oxlb) {
            Err(status) => {
                assert!(!status.success(), "without {left_out}: {status}");
                let log = oxlb.log();
                let why = log
                    .lines()
                    .rfind(|l| l.contains("oxlb:"))
                    .unwrap_or_default();
                eprintln!("without {left_out}: {why}");
            }
            Ok(msg) => panic!(
                "without {left_out} oxlb still notified {msg:?}: the unit grants more than it \
                 needs; command {argv:?}"
            ),
        }
        for dev in ["lb0", "lb1"] {
            assert!(!xdp_on(&topo, dev), "without {left_out}: XDP left on {dev}");
        }
    }
    drop(hand);
    installed.purge();
}
