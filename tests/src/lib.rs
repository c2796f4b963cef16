//! End-to-end harness: builds the demo/test topology in throwaway network namespaces, runs
//! processes inside them, drives oxlb's REST API, and removes everything again.
//!
//! Everything here panics with a message instead of returning `Result`: a failing step is a
//! failing test, and the message is what a person reads first. Every resource (namespace,
//! process) is owned by a guard whose `Drop` removes it, so a panicking test still cleans up.
//!
//! Traffic only ever goes to loopback or to addresses inside namespaces this harness created
//! (198.18.0.0/15), every wait is bounded, and only processes started here are signalled, by PID.

pub mod blob;
pub mod checks;
pub mod health;

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The client's address (`c0` in `<p>-client`).
pub const CLIENT_IP: &str = "198.18.0.2";
/// The LB's address on the client side (`lb0`), the client's default gateway.
pub const LB_CLIENT_SIDE_IP: &str = "198.18.0.1";
/// The LB's address on the backend side (`lb1`), the backends' default gateway.
pub const LB_BACKEND_SIDE_IP: &str = "198.18.31.254";
/// Backend addresses, in the order the VIP lists them.
pub const BACKEND_IPS: [&str; 3] = ["198.18.31.1", "198.18.31.2", "198.18.31.3"];
/// Names the backends answer with, index-aligned with [`BACKEND_IPS`].
pub const BACKEND_NAMES: [&str; 3] = ["b1", "b2", "b3"];
/// The port every backend serves HTTP and UDP on.
pub const BACKEND_PORT: u16 = 8080;
/// The service address.
pub const VIP: &str = "198.18.100.1";
/// The service port (TCP and UDP).
pub const VIP_PORT: u16 = 2020;
/// oxlb's API address inside the LB namespace.
pub const API_ADDR: &str = "127.0.0.1:11111";

/// With [`Topology::build_dual_stack`]: the client's IPv6 address (`c0`).
pub const CLIENT_IP6: &str = "fd00::2";
/// With [`Topology::build_dual_stack`]: the LB's IPv6 address on the client side, the client's
/// default gateway.
pub const LB_CLIENT_SIDE_IP6: &str = "fd00::1";
/// With [`Topology::build_dual_stack`]: the LB's IPv6 address on the backend side, the backends'
/// default gateway.
pub const LB_BACKEND_SIDE_IP6: &str = "fd00:31::fe";
/// With [`Topology::build_dual_stack`]: the backends' IPv6 addresses, index-aligned with
/// [`BACKEND_IPS`].
pub const BACKEND_IP6S: [&str; 3] = ["fd00:31::1", "fd00:31::2", "fd00:31::3"];
/// An IPv6 service address (outside every subnet of the topology, like [`VIP`]).
pub const VIP6: &str = "fd00:100::1";

/// How long oxlb may take from start to a 200 on `GET /netlox/v1/`. Generous: attaching XDP and
/// re-binding AF_XDP queues right after a previous instance closed them can take ~2 s of EBUSY.
const OXLB_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Preconditions and binaries

/// Panics unless running as root: namespaces and XDP need it, and an e2e test that silently
/// passes without running would hide a broken product.
/// The value of the sample `name{labels}` on a Prometheus page; panics if it is missing.
pub fn metric_sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{page}"))
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the end-to-end tests need root (they create network namespaces and attach XDP); \
         run them as root, e.g. `sudo bash tests/run.sh`"
    );
}

/// A prefix no other test in this run (or a concurrent run) uses: `oxt<pid><n>`.
/// Namespace names derive from it, so tests running in parallel threads never collide.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "oxt{}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Directory holding the workspace's built binaries (`target/release` or `target/debug`).
///
/// Derived from the running executable, so a test binary (`target/release/deps/NAME-hash`)
/// and a bin (`target/release/oxlb-demo`) find their siblings; `CARGO_TARGET_DIR` is the
/// fallback for an executable that lives elsewhere.
pub fn target_dir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(mut dir) = exe.parent().map(Path::to_path_buf) {
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            candidates.push(dir);
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release"));
    }
    candidates
        .iter()
        .find(|d| d.join("oxlb-testpeer").exists() || d.join("oxlb").exists())
        .or(candidates.first())
        .cloned()
        .expect("cannot find the target directory: no current_exe and no CARGO_TARGET_DIR")
}

/// Absolute path of a workspace binary, panicking with the command that builds it if absent.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} does not exist; build it first with `cargo build --release --workspace`",
        path.display()
    );
    path
}

/// The oxlb binary; `OXLB_BIN` overrides the workspace's own build (to test another build).
pub fn oxlb_binary() -> PathBuf {
    match std::env::var_os("OXLB_BIN") {
        Some(p) => PathBuf::from(p),
        None => binary("oxlb"),
    }
}

/// The test peer (backend server and test clients).
pub fn testpeer_binary() -> PathBuf {
    binary("oxlb-testpeer")
}

/// Runs a command to completion and returns its output; panics only if it cannot be started.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Like [`run`] but panics with stderr when the command fails: setup steps must succeed.
fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Namespaces

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (removing a leftover of the same name first) with `lo` up.
    pub fn create(name: &str) -> Netns {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `args` inside this namespace (`ip netns exec`, which execs the
    /// program itself, so the child's PID is the program's PID).
    pub fn command(&self, args: &[&str]) -> Command {
        assert!(
            !args.is_empty(),
            "empty command for namespace {}",
            self.name
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` in the namespace and returns its output, whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Runs `args` in the namespace, panicking with its stderr unless it succeeds; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run_ok(&mut self.command(args)).stdout).into_owned()
    }

    /// Starts `args` in the namespace in the background, stdout/stderr to `log` (or discarded).
    pub fn spawn(&self, args: &[&str], log: Option<&Path>) -> ChildGuard {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
                let f2 = f.try_clone().expect("dup log file");
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {}: {e}", self.name));
        ChildGuard {
            child: Some(child),
            what: format!("{} in {}", args[0], self.name),
            log: log.map(Path::to_path_buf),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns`: sockets, netlink queries
/// and ifindexes inside `f` refer to that namespace, while the test's own thread stays where
/// it is.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: setns takes a valid namespace fd that `file` keeps open for the call; it
        // changes only this thread's network namespace, and this thread ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in the namespace panicked")
}

/// Runs `ip ARGS`, panicking with its error output if it fails; returns what it printed.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ip prints UTF-8")
}

/// Deletes every namespace whose name starts with `<prefix>-`: leftovers of an earlier run
/// that was killed before its guards ran (the demo always uses the same prefix).
pub fn remove_leftover_namespaces(prefix: &str) {
    let out = run(Command::new("ip").args(["netns", "list"]));
    let listing = String::from_utf8_lossy(&out.stdout);
    let dash = format!("{prefix}-");
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&dash) {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process this harness started. Drop sends SIGTERM, waits up to [`STOP_GRACE`], then
/// SIGKILLs — always by this child's PID, never by name.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
    log: Option<PathBuf>,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` if the process has already exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// What the process wrote to its log so far (empty if it has none).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process; `None` if it was already stopped.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // Child::kill sends SIGKILL to our own, not yet reaped child; an error means it has
        // exited already, and wait() below reaps it either way.
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, bounded wait, SIGKILL. Returns the exit status and whether SIGKILL was needed.
    pub fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, false));
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; `pid` is our own child, which
            // has not been reaped yet (try_wait above returned None), so the PID is not reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, false));
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL",
            self.what,
            child.id()
        );
        let _ = child.kill();
        child.wait().ok().map(|s| (s, true))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running oxlb; dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct OxlbGuard {
    child: ChildGuard,
}

impl OxlbGuard {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything oxlb printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Kills oxlb with SIGKILL, as a crash would, and waits for it: nothing of its own cleanup
    /// runs, so whatever it leaves behind is what a crash leaves.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("oxlb already stopped")
    }

    /// Stops oxlb with SIGTERM and panics unless it exits by itself within the grace period:
    /// a clean exit on SIGTERM is what detaches XDP.
    pub fn stop(mut self) -> ExitStatus {
        let (status, killed) = self.child.stop().expect("oxlb already stopped");
        assert!(
            !killed,
            "oxlb did not exit within {STOP_GRACE:?} of SIGTERM; its output:\n{}",
            self.log()
        );
        status
    }
}

// ---------------------------------------------------------------------------------------------
// Topology

/// Options of [`Topology::build`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TopologyOptions {
    /// Sets `net.ipv4.ip_forward=1` in the LB namespace. Off by default so that traffic can
    /// only cross the LB if oxlb forwards it; on for the nftables comparison benchmark.
    pub ip_forward: bool,
    /// RX and TX queues of every veth (0 and 1 both mean one). More than one spreads flows
    /// over queues, and thus over oxlb's workers, as RSS does on a real NIC.
    pub queues: u32,
}

/// A host of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Client,
    Lb,
    Switch,
    /// Backend 1, 2 or 3.
    Backend(u8),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Client => f.write_str("client"),
            Node::Lb => f.write_str("lb"),
            Node::Switch => f.write_str("sw"),
            Node::Backend(n) => write!(f, "b{n}"),
        }
    }
}

/// The shared demo/test/benchmark topology:
///
/// ```text
///  <p>-client            <p>-lb                      <p>-sw          <p>-b1..b3
///  c0 198.18.0.2/24 ──── lb0 198.18.0.1/24
///                        lb1 198.18.31.254/24 ──── s-lb ┐
///                                                  br0  ├ s-b1 ──── eth0 198.18.31.1/24
///                                                       ├ s-b2 ──── eth0 198.18.31.2/24
///                                                       └ s-b3 ──── eth0 198.18.31.3/24
/// ```
///
/// Veths are created directly between namespaces, so nothing appears in the root namespace.
/// Offloads stay at their defaults: the product must cope with them.
/// Dropping the topology deletes its namespaces (which deletes their links). Declare process
/// guards after the topology so they drop, and their processes stop, before the namespaces go.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    logs: PathBuf,
    client: Netns,
    lb: Netns,
    sw: Netns,
    backends: [Netns; 3],
    ipv6: bool,
}

impl Topology {
    /// Builds the topology; panics (after cleaning up what it made) if any step fails.
    pub fn build(prefix: &str, opts: TopologyOptions) -> Topology {
        Topology::build_inner(prefix, opts, false)
    }

    /// [`Topology::build`] with IPv6 on the same links too: the client fd00::2/64 via fd00::1,
    /// the backends fd00:31::1..3/64 via fd00:31::fe, without duplicate address detection so
    /// the addresses work at once. IPv6 forwarding stays off in the LB namespace, and the
    /// backends' test peers listen on both families.
    pub fn build_dual_stack(prefix: &str, opts: TopologyOptions) -> Topology {
        Topology::build_inner(prefix, opts, true)
    }

    fn build_inner(prefix: &str, opts: TopologyOptions, ipv6: bool) -> Topology {
        require_root();
        remove_leftover_namespaces(prefix);
        let logs = std::env::temp_dir().join(format!("{prefix}-logs"));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", logs.display()));

        let ns = |suffix: &str| Netns::create(&format!("{prefix}-{suffix}"));
        let topo = Topology {
            prefix: prefix.to_string(),
            logs,
            client: ns("client"),
            lb: ns("lb"),
            sw: ns("sw"),
            backends: [ns("b1"), ns("b2"), ns("b3")],
            ipv6,
        };
        topo.wire(opts);
        topo
    }

    fn wire(&self, opts: TopologyOptions) {
        if self.ipv6 {
            // Before any link exists: links take the namespace's defaults when created, so
            // their link-local addresses (the source of neighbour discovery) are usable at once.
            for ns in self.all() {
                ns.exec_ok(&[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]);
            }
        }
        let queues = opts.queues.max(1).to_string();
        let veth = |a: &Netns, a_if: &str, b: &Netns, b_if: &str| {
            run_ok(Command::new("ip").args([
                "link",
                "add",
                a_if,
                "netns",
                &a.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                &b.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
            ]));
            // What a user does on a real NIC; a veth needs it on both ends, since the sender's
            // TX queue is the receiver's RX queue.
            if opts.queues > 1 {
                for (ns, dev) in [(a, a_if), (b, b_if)] {
                    ns.exec_ok(&["ethtool", "-L", dev, "rx", &queues, "tx", &queues]);
                }
            }
        };
        veth(&self.client, "c0", &self.lb, "lb0");
        veth(&self.lb, "lb1", &self.sw, "s-lb");
        for (i, b) in self.backends.iter().enumerate() {
            veth(b, "eth0", &self.sw, &format!("s-b{}", i + 1));
        }

        let sw = &self.sw;
        sw.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        for port in ["s-lb", "s-b1", "s-b2", "s-b3"] {
            sw.exec_ok(&["ip", "link", "set", port, "master", "br0"]);
            sw.exec_ok(&["ip", "link", "set", port, "up"]);
        }
        sw.exec_ok(&["ip", "link", "set", "br0", "up"]);

        let c = &self.client;
        c.exec_ok(&["ip", "addr", "add", "198.18.0.2/24", "dev", "c0"]);
        c.exec_ok(&["ip", "link", "set", "c0", "up"]);
        c.exec_ok(&["ip", "route", "add", "default", "via", LB_CLIENT_SIDE_IP]);

        let lb = &self.lb;
        lb.exec_ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "lb0"]);
        lb.exec_ok(&["ip", "addr", "add", "198.18.31.254/24", "dev", "lb1"]);
        lb.exec_ok(&["ip", "link", "set", "lb0", "up"]);
        lb.exec_ok(&["ip", "link", "set", "lb1", "up"]);
        let fwd = format!("net.ipv4.ip_forward={}", u8::from(opts.ip_forward));
        lb.exec_ok(&["sysctl", "-q", "-w", &fwd]);

        for (b, ip) in self.backends.iter().zip(BACKEND_IPS) {
            b.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            b.exec_ok(&["ip", "link", "set", "eth0", "up"]);
            b.exec_ok(&["ip", "route", "add", "default", "via", LB_BACKEND_SIDE_IP]);
        }
        if self.ipv6 {
            self.wire_ipv6();
        }
    }

    /// The IPv6 addresses and routes of [`Topology::build_dual_stack`].
    fn wire_ipv6(&self) {
        let addr6 = |ns: &Netns, addr: &str, dev: &str| {
            ns.exec_ok(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
        };
        addr6(&self.client, &format!("{CLIENT_IP6}/64"), "c0");
        self.client.exec_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            LB_CLIENT_SIDE_IP6,
        ]);
        addr6(&self.lb, &format!("{LB_CLIENT_SIDE_IP6}/64"), "lb0");
        addr6(&self.lb, &format!("{LB_BACKEND_SIDE_IP6}/64"), "lb1");
        self.lb.exec_ok(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv6.conf.default.forwarding=0",
        ]);
        for (b, ip) in self.backends.iter().zip(BACKEND_IP6S) {
            addr6(b, &format!("{ip}/64"), "eth0");
            b.exec_ok(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                LB_BACKEND_SIDE_IP6,
            ]);
        }
    }

    fn all(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.lb, &self.sw]
            .into_iter()
            .chain(self.backends.iter())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Directory for this topology's logs and scratch files; removed on drop unless the
    /// thread is panicking, so a failed test leaves its oxlb log to read.
    pub fn scratch_dir(&self) -> &Path {
        &self.logs
    }

    pub fn ns(&self, node: Node) -> &Netns {
        match node {
            Node::Client => &self.client,
            Node::Lb => &self.lb,
            Node::Switch => &self.sw,
            Node::Backend(n @ 1..=3) => &self.backends[usize::from(n) - 1],
            Node::Backend(n) => panic!("there is no backend {n}; backends are 1..=3"),
        }
    }

    /// Runs `args` in `node`'s namespace; returns its output whatever the exit status.
    pub fn exec(&self, node: Node, args: &[&str]) -> Output {
        self.ns(node).exec(args)
    }

    /// Runs `args` in `node`'s namespace and panics with stderr unless it succeeds.
    pub fn exec_ok(&self, node: Node, args: &[&str]) -> String {
        self.ns(node).exec_ok(args)
    }

    /// Starts `args` in `node`'s namespace in the background, output to `<scratch>/<log>.log`.
    pub fn spawn(&self, node: Node, args: &[&str], log: &str) -> ChildGuard {
        let path = self.logs.join(format!("{log}.log"));
        self.ns(node).spawn(args, Some(&path))
    }

    /// Starts the test peer's server in a namespace and waits until it answers from `probe_from`.
    pub fn start_testpeer(
        &self,
        node: Node,
        name: &str,
        port: u16,
        probe_from: Node,
        probe_ip: &str,
    ) -> ChildGuard {
        let peer = testpeer_binary();
        let port_s = port.to_string();
        let mut args = vec![
            peer.to_str().expect("utf-8 path"),
            "serve",
            "--name",
            name,
            "--port",
            &port_s,
        ];
        if self.ipv6 {
            // One socket for both families; IPv4 peers are still shown as IPv4.
            args.extend_from_slice(&["--bind", "::"]);
        }
        let mut guard = self.spawn(node, &args, &format!("testpeer-{name}"));
        let url = format!("http://{probe_ip}:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = guard.try_wait() {
                panic!(
                    "test peer {name} in {node} exited ({status}): {}",
                    guard.log()
                );
            }
            if self.http_get(probe_from, &url, 1).is_ok() {
                return guard;
            }
            assert!(
                Instant::now() < deadline,
                "test peer {name} did not answer {url} from {probe_from} within 10 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `oxlb-testpeer serve` as `b1`..`b3` on port 8080 in the backend namespaces, and
    /// waits until each answers from the LB namespace.
    pub fn start_backends(&self) -> Vec<ChildGuard> {
        (1..=3u8)
            .map(|n| {
                let i = usize::from(n) - 1;
                self.start_testpeer(
                    Node::Backend(n),
                    BACKEND_NAMES[i],
                    BACKEND_PORT,
                    Node::Lb,
                    BACKEND_IPS[i],
                )
            })
            .collect()
    }

    /// This topology's oxlb state directory (`<scratch>/state`): every oxlb started by
    /// [`Topology::start_oxlb`] uses it, so a restarted oxlb finds what the previous one saved,
    /// and no test touches the host's `/var/lib/oxlb`.
    pub fn state_dir(&self) -> PathBuf {
        self.logs.join("state")
    }

    /// Starts `oxlb run --iface lb0 --iface lb1 --state-dir <state_dir> EXTRA...` in the LB
    /// namespace and waits (bounded) until `GET /netlox/v1/` answers 200. Panics with oxlb's
    /// output if it exits or times out. `EXTRA` may name another `--state-dir`.
    pub fn start_oxlb(&self, extra_args: &[&str]) -> OxlbGuard {
        self.start_oxlb_with(extra_args, &ApiAccess::default())
    }

    /// [`Topology::start_oxlb`] for an API reached as `access` says (another address, HTTPS,
    /// a token): waits until `GET /netlox/v1/` answers 200 that way.
    pub fn start_oxlb_with(&self, extra_args: &[&str], access: &ApiAccess) -> OxlbGuard {
        let bin = oxlb_binary();
        let state_dir = self.state_dir();
        let mut args = vec![
            bin.to_str().expect("utf-8 path"),
            "run",
            "--iface",
            "lb0",
            "--iface",
            "lb1",
        ];
        if !extra_args.contains(&"--state-dir") {
            args.extend_from_slice(&["--state-dir", state_dir.to_str().expect("utf-8 path")]);
        }
        args.extend_from_slice(extra_args);
        let mut child = self.spawn(Node::Lb, &args, "oxlb");
        let deadline = Instant::now() + OXLB_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait() {
                panic!(
                    "oxlb exited ({status}) before its API answered; command {args:?}; output:\n{}",
                    child.log()
                );
            }
            if self.api_with(access, "GET", "/netlox/v1/", None).0 == 200 {
                return OxlbGuard { child };
            }
            if Instant::now() >= deadline {
                let log = child.log();
                drop(child);
                panic!(
                    "oxlb's API did not answer 200 on {}/netlox/v1/ within \
                     {OXLB_READY_TIMEOUT:?}; output:\n{log}",
                    access.base
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Calls oxlb's REST API with curl inside the LB namespace. Returns (HTTP status, body);
    /// status 0 means no HTTP answer at all (connection refused, timeout).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("http://{API_ADDR}{path}");
        let mut args = vec![
            "curl",
            "-s",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if let Some(b) = body {
            args.extend_from_slice(&["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        args.push(&url);
        let out = self.exec(Node::Lb, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// [`Topology::api`] reached as `access` says: its base URL, its bearer token, the CA curl
    /// trusts for HTTPS.
    pub fn api_with(
        &self,
        access: &ApiAccess,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{path}", access.base);
        let auth = access
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "curl",
            "-s",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if let Some(ca) = &access.ca_file {
            args.extend_from_slice(&["--cacert", ca.to_str().expect("utf-8 path")]);
        }
        if let Some(h) = &auth {
            args.extend_from_slice(&["-H", h]);
        }
        if let Some(b) = body {
            args.extend_from_slice(&["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        args.push(&url);
        let out = self.exec(Node::Lb, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Creates the standard VIP (198.18.100.1:2020, `protocol`) over b1..b3:8080, round robin,
    /// DNAT; panics unless the API answers 2xx.
    /// Creates the VIP for `protocol` with loxilb's `mode` and `sel`, the three backends on
    /// `target_port`.
    pub fn add_service(&self, protocol: &str, mode: u8, sel: u8, target_port: u16) {
        let endpoints: Vec<serde_json::Value> = BACKEND_IPS
            .iter()
            .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": target_port, "weight": 1}))
            .collect();
        let body = serde_json::json!({
            "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": protocol,
                                 "sel": sel, "mode": mode, "name": "modes"},
            "endpoints": endpoints,
        })
        .to_string();
        let (status, answer) = self.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
        assert_eq!(status, 200, "creating the service failed: {answer}");
    }

    pub fn add_vip(&self, protocol: &str) {
        let body = vip_request_body(protocol);
        let (status, reply) = self.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
        assert!(
            (200..300).contains(&status),
            "creating the {protocol} VIP: HTTP {status}: {reply}\nrequest: {body}"
        );
    }

    /// Deletes the standard VIP for `protocol`; returns the HTTP status and body.
    pub fn delete_vip(&self, protocol: &str) -> (u16, String) {
        self.api(
            "DELETE",
            &format!(
                "/netlox/v1/config/loadbalancer/externalipaddress/{VIP}/port/{VIP_PORT}/protocol/{protocol}"
            ),
            None,
        )
    }

    /// `GET http://IP:PORT/...` with curl from `node`, `--max-time secs`. Ok(body) on a 2xx.
    pub fn http_get(&self, node: Node, url: &str, max_time_secs: u32) -> Result<String, String> {
        let t = max_time_secs.to_string();
        let out = self.exec(node, &["curl", "-sS", "--fail", "--max-time", &t, url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "curl {url} from {node}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs the test peer as a client (`udp-request`, `tcp-loop`) from `node`.
    pub fn testpeer(&self, node: Node, args: &[&str]) -> Output {
        let peer = testpeer_binary();
        let mut all = vec![peer.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.exec(node, &all)
    }

    /// The answer to a UDP datagram with `payload` from the client to `target` (`ip:port` or
    /// `[ip6]:port`), or None after three unanswered tries of 2 s each: the first datagram may
    /// wait while the LB resolves the backend's MAC.
    pub fn udp_answer(&self, target: &str, payload: &str) -> Option<Answer> {
        (0..3).find_map(|_| {
            let out = self.testpeer(
                Node::Client,
                &["udp-request", target, payload, "--timeout-ms", "2000"],
            );
            out.status
                .success()
                .then(|| parse_answer(&String::from_utf8_lossy(&out.stdout)))
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "topology {}: logs kept in {}",
                self.prefix,
                self.logs.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
        // The Netns fields drop after this and delete the namespaces.
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

/// How the harness reaches oxlb's API; the default is plain HTTP on [`API_ADDR`] without a
/// token, as [`Topology::api`] does.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// Base URL without a trailing slash, e.g. `https://198.18.0.1:11111`.
    pub base: String,
    /// The bearer token sent with every call.
    pub token: Option<String>,
    /// PEM CA certificate curl trusts for an `https://` base.
    pub ca_file: Option<PathBuf>,
}

impl Default for ApiAccess {
    fn default() -> ApiAccess {
        ApiAccess {
            base: format!("http://{API_ADDR}"),
            token: None,
            ca_file: None,
        }
    }
}

/// The loxilb-compatible body creating the standard VIP over the three backends.
pub fn vip_request_body(protocol: &str) -> String {
    let endpoints: Vec<serde_json::Value> = BACKEND_IPS
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    serde_json::json!({
        "serviceArguments": {
            "externalIP": VIP,
            "port": VIP_PORT,
            "protocol": protocol,
            "sel": 0,
            "mode": 0,
            "name": "web",
        },
        "endpoints": endpoints,
    })
    .to_string()
}

/// A backend's answer: `NAME IP:PORT` (HTTP body), optionally followed by the UDP payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub backend: String,
    pub peer_ip: String,
    pub peer_port: u16,
    pub rest: String,
}

/// Parses a test peer answer; panics with the text if it is not one.
pub fn parse_answer(text: &str) -> Answer {
    let text = text.trim_end_matches('\n');
    let mut parts = text.splitn(3, ' ');
    let backend = parts.next().unwrap_or_default();
    let peer = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let (ip, port) = peer
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("not a test peer answer: {text:?}"));
    // An IPv6 peer is written `[addr]:port`.
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    Answer {
        backend: backend.to_string(),
        peer_ip: ip.to_string(),
        peer_port: port
            .parse()
            .unwrap_or_else(|_| panic!("bad port in answer {text:?}")),
        rest: rest.to_string(),
    }
}

/// Panics unless `seen` follows `order` cyclically from whichever element it starts with:
/// strict round robin over the configured endpoint order.
pub fn assert_strict_rotation(seen: &[String], order: &[&str]) {
    assert_strict_rotation_or(seen, order, &String::new);
}

/// Like [`assert_strict_rotation`], adding `context()` (logs, counters) to the failure.
pub fn assert_strict_rotation_or(seen: &[String], order: &[&str], context: &dyn Fn() -> String) {
    let Some(first) = seen.first() else { return };
    let start = order
        .iter()
        .position(|o| o == first)
        .unwrap_or_else(|| panic!("first answer {first:?} is not one of {order:?}"));
    let expected: Vec<&str> = (0..seen.len())
        .map(|i| order[(start + i) % order.len()])
        .collect();
    assert_eq!(
        seen,
        expected,
        "answers are not a strict rotation of {order:?}\n{}",
        context()
    );
}

/// The appliance's dataplane counters worth reading when traffic went astray: every sample
/// of `oxlb_drops_total`, `oxlb_kernel_packets_total` and the flow counters that is not zero.
pub fn nonzero_counters(topo: &Topology) -> String {
    let (status, page) = topo.api("GET", "/metrics", None);
    if status != 200 {
        return format!("metrics unavailable ({status}): {page}");
    }
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            ["oxlb_drops", "oxlb_kernel", "oxlb_flows", "oxlb_xdp"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_starting_anywhere_in_the_configured_order_is_accepted() {
        let seen: Vec<String> = ["b2", "b3", "b1", "b2"].map(String::from).to_vec();
        assert_strict_rotation(&seen, &BACKEND_NAMES);
    }

    #[test]
    #[should_panic(expected = "strict rotation")]
    fn a_repeated_backend_breaks_the_rotation() {
        let seen: Vec<String> = ["b1", "b2", "b2"].map(String::from).to_vec();
        assert_strict_rotation(&seen, &BACKEND_NAMES);
    }

    #[test]
    fn an_answer_with_a_udp_payload_keeps_the_payload_whole() {
        let a = parse_answer("b2 198.18.0.2:40000 hello world\n");
        assert_eq!(a.backend, "b2");
        assert_eq!(a.peer_ip, "198.18.0.2");
        assert_eq!(a.peer_port, 40000);
        assert_eq!(a.rest, "hello world");
    }

    #[test]
    fn an_answer_to_an_ipv6_peer_gives_its_address_without_brackets() {
        let a = parse_answer("b1 [fd00::2]:40000\n");
        assert_eq!((a.peer_ip.as_str(), a.peer_port), ("fd00::2", 40000));
    }

    #[test]
    fn the_blob_is_the_same_whether_generated_whole_or_in_chunks() {
        let whole = blob::blob_bytes(200_000);
        let mut gen = blob::Blob::default();
        let mut chunked = vec![0u8; 200_000];
        for c in chunked.chunks_mut(64 * 1024) {
            gen.fill(c);
        }
        assert_eq!(whole, chunked);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn the_vip_request_names_all_three_backends_in_order() {
        let v: serde_json::Value = serde_json::from_str(&vip_request_body("tcp")).unwrap();
        let ips: Vec<&str> = v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["endpointIP"].as_str().unwrap())
            .collect();
        assert_eq!(ips, BACKEND_IPS);
        assert_eq!(v["serviceArguments"]["port"], 2020);
    }
}
