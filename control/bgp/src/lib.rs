//! A small BGP-4 speaker on tokio that advertises the appliance's service addresses as host
//! routes to configured neighbours, and learns nothing back.
//!
//! The [`Speaker`] is level-triggered: [`Speaker::set`] hands it the whole desired setup (the
//! global configuration, the neighbours, the routes), and its driver ([`Speaker::run`]) starts,
//! restarts or stops one task per neighbour and the listener to match. Each neighbour's task
//! connects out, accepts the neighbour's own connection from the listener (one session per
//! neighbour), negotiates, keeps the session alive, sends the routes and their changes, and
//! reconnects with a growing, jittered back-off ([`session`]). Messages are checked and built
//! in [`wire`].
#![forbid(unsafe_code)]

mod session;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The port BGP listens on and connects to unless told otherwise.
pub const DEFAULT_PORT: u16 = 179;
/// The hold time offered in OPEN; the session uses the smaller of both sides' offers.
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// How long a neighbour's task may take to say goodbye (a Cease) when it is stopped.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a listen port that could not be bound is tried again.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// The speaker's own identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Where neighbours' connections are accepted (on every address).
    pub listen_port: u16,
    /// NEXT_HOP of IPv4 routes; `None`: the local address of each IPv4 session.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// NEXT_HOP of IPv6 routes; `None`: the local address of each IPv6 session.
    pub next_hop_v6: Option<Ipv6Addr>,
    pub hold_time: u16,
}

impl GlobalConfig {
    /// `local_as` and `router_id` with every other setting at its default.
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> GlobalConfig {
        GlobalConfig {
            local_as,
            router_id,
            listen_port: DEFAULT_PORT,
            next_hop_v4: None,
            next_hop_v6: None,
            hold_time: DEFAULT_HOLD_TIME,
        }
    }
}

/// One neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    pub addr: IpAddr,
    pub remote_as: u32,
    pub remote_port: u16,
    /// eBGP to a neighbour more than one hop away: TTL 255 instead of 1.
    pub multihop: bool,
}

/// How strongly a route is offered. loxilb's values: an HA MASTER (or an appliance without
/// HA) advertises with LOCAL_PREF 5000 and MED 10; a BACKUP with its per-route 100/20 changed
/// by its BACKUP export policy to LOCAL_PREF 10 and MED 20+50.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Preference {
    Primary,
    Backup,
}

impl Preference {
    pub fn local_pref(self) -> u32 {
        match self {
            Preference::Primary => 5000,
            Preference::Backup => 10,
        }
    }

    pub fn med(self) -> u32 {
        match self {
            Preference::Primary => 10,
            Preference::Backup => 70,
        }
    }
}

/// Host routes to advertise (a /32 or /128 each), with their preference.
pub type Routes = BTreeMap<IpAddr, Preference>;

/// Everything the speaker should be doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// `None`: no BGP; neighbours are listed but not contacted.
    pub global: Option<GlobalConfig>,
    pub peers: Vec<PeerConfig>,
    pub routes: Routes,
}

/// A session's state, named as RFC 4271's FSM names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Idle,
        SessionState::Connect,
        SessionState::Active,
        SessionState::OpenSent,
        SessionState::OpenConfirm,
        SessionState::Established,
    ];

    /// GoBGP's name, which loxilb's neighbour listing shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Idle => "IDLE",
            SessionState::Connect => "CONNECT",
            SessionState::Active => "ACTIVE",
            SessionState::OpenSent => "OPENSENT",
            SessionState::OpenConfirm => "OPENCONFIRM",
            SessionState::Established => "ESTABLISHED",
        }
    }

    /// The number of the metric `oxlb_bgp_session_state`.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one neighbour's session is doing, and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub addr: IpAddr,
    pub remote_as: u32,
    pub state: SessionState,
    /// When the session last became established; `None` while it is not.
    pub up_since: Option<Instant>,
    /// When an established session last ended; `None` if it never did.
    pub down_since: Option<Instant>,
    /// Why the last session ended or the last connection failed.
    pub last_error: Option<String>,
    pub updates_sent: u64,
    pub updates_received: u64,
    pub established_total: u64,
    /// NOTIFICATIONs sent, by (code, subcode).
    pub notifications_sent: BTreeMap<(u8, u8), u64>,
    /// NOTIFICATIONs received, by (code, subcode).
    pub notifications_received: BTreeMap<(u8, u8), u64>,
    /// Messages received malformed or refused, by [`wire::WireError::label`].
    pub malformed: BTreeMap<&'static str, u64>,
}

impl PeerStatus {
    fn new(peer: &PeerConfig) -> PeerStatus {
        PeerStatus {
            addr: peer.addr,
            remote_as: peer.remote_as,
            state: SessionState::Idle,
            up_since: None,
            down_since: None,
            last_error: None,
            updates_sent: 0,
            updates_received: 0,
            established_total: 0,
            notifications_sent: BTreeMap::new(),
            notifications_received: BTreeMap::new(),
            malformed: BTreeMap::new(),
        }
    }

    /// How long the session has been up, or down since it last was up, as GoBGP shows it
    /// (`HH:MM:SS`, with days in front when there are any); `never` if it never was up.
    pub fn updowntime(&self, now: Instant) -> String {
        let Some(since) = self.up_since.or(self.down_since) else {
            return "never".to_owned();
        };
        let s = now.saturating_duration_since(since).as_secs();
        let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
        if d > 0 {
            format!("{d}d {h:02}:{m:02}:{s:02}")
        } else {
            format!("{h:02}:{m:02}:{s:02}")
        }
    }
}

type StatusMap = Arc<Mutex<BTreeMap<IpAddr, PeerStatus>>>;

fn lock(status: &StatusMap) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, PeerStatus>> {
    // Every update replaces whole fields: a panic mid-update leaves usable data.
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// The speaker: a handle to give desired setups to and read statuses from, and the driver
/// future ([`Speaker::run`]) that does the work on a tokio runtime.
pub struct Speaker {
    desired: watch::Sender<Arc<Desired>>,
    /// `Some(cease subcode)` once the speaker is stopping.
    stop: watch::Sender<Option<u8>>,
    status: StatusMap,
    listen_error: Arc<Mutex<Option<String>>>,
}

impl Default for Speaker {
    fn default() -> Speaker {
        Speaker::new()
    }
}

impl Speaker {
    /// A speaker with nothing to do; nothing runs until [`Speaker::run`] is polled.
    pub fn new() -> Speaker {
        Speaker {
            desired: watch::Sender::new(Arc::new(Desired::default())),
            stop: watch::Sender::new(None),
            status: Arc::default(),
            listen_error: Arc::default(),
        }
    }

    /// Makes `desired` what the speaker does; a change of only the routes reaches established
    /// sessions as UPDATEs, a change of a neighbour or the global setup restarts sessions.
    pub fn set(&self, desired: Desired) {
        self.desired.send_if_modified(|d| {
            if **d == desired {
                return false;
            }
            *d = Arc::new(desired);
            true
        });
    }

    /// The configured neighbours' sessions, by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let desired = self.desired.borrow().clone();
        let status = lock(&self.status);
        desired
            .peers
            .iter()
            .map(|p| {
                status
                    .get(&p.addr)
                    .filter(|s| s.remote_as == p.remote_as)
                    .cloned()
                    .unwrap_or_else(|| PeerStatus::new(p))
            })
            .collect()
    }

    /// Why the listen port could not be bound, while it cannot.
    pub fn listen_error(&self) -> Option<String> {
        self.listen_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends [`Speaker::run`]: every session is closed with a Cease (administrative shutdown).
    pub fn stop(&self) {
        self.stop.send_replace(Some(2));
    }

    /// The driver: runs until [`Speaker::stop`], then closes every session (bounded).
    pub fn run(&self) -> impl Future<Output = ()> + Send + 'static {
        let driver = Driver {
            desired: self.desired.subscribe(),
            stop: self.stop.subscribe(),
            status: self.status.clone(),
            listen_error: self.listen_error.clone(),
            routes: watch::Sender::new(Arc::new(Routes::new())),
            peers: HashMap::new(),
            listener: None,
        };
        driver.run()
    }

    /// Appends the speaker's Prometheus families to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        let peers = self.peers();
        let label = |p: &PeerStatus| format!("peer=\"{}\",remote_as=\"{}\"", p.addr, p.remote_as);
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        family(
            "oxlb_bgp_session_state",
            "gauge",
            "BGP session state per neighbour: 1 idle, 2 connect, 3 active, 4 opensent, 5 \
             openconfirm, 6 established.",
            peers
                .iter()
                .map(|p| (label(p), u64::from(p.state.number())))
                .collect(),
        );
        family(
            "oxlb_bgp_session_established",
            "gauge",
            "1 while the BGP session with the neighbour is established.",
            peers
                .iter()
                .map(|p| (label(p), u64::from(p.state == SessionState::Established)))
                .collect(),
        );
        family(
            "oxlb_bgp_sessions_established_total",
            "counter",
            "Times the BGP session with the neighbour became established.",
            peers
                .iter()
                .map(|p| (label(p), p.established_total))
                .collect(),
        );
        family(
            "oxlb_bgp_updates_sent_total",
            "counter",
            "BGP UPDATE messages sent to the neighbour.",
            peers.iter().map(|p| (label(p), p.updates_sent)).collect(),
        );
        family(
            "oxlb_bgp_updates_received_total",
            "counter",
            "BGP UPDATE messages received from the neighbour (checked, not installed).",
            peers
                .iter()
                .map(|p| (label(p), p.updates_received))
                .collect(),
        );
        let notes = |pick: fn(&PeerStatus) -> &BTreeMap<(u8, u8), u64>| {
            peers
                .iter()
                .flat_map(|p| {
                    pick(p).iter().map(move |((code, sub), n)| {
                        (
                            format!("{},code=\"{code}\",subcode=\"{sub}\"", label(p)),
                            *n,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            "oxlb_bgp_notifications_sent_total",
            "counter",
            "BGP NOTIFICATION messages sent, by error code and subcode.",
            notes(|p| &p.notifications_sent),
        );
        family(
            "oxlb_bgp_notifications_received_total",
            "counter",
            "BGP NOTIFICATION messages received, by error code and subcode.",
            notes(|p| &p.notifications_received),
        );
        family(
            "oxlb_bgp_malformed_messages_total",
            "counter",
            "BGP messages received malformed or refused (e.g. another AS than configured), by \
             reason; each was answered with a NOTIFICATION.",
            peers
                .iter()
                .flat_map(|p| {
                    p.malformed
                        .iter()
                        .map(move |(r, n)| (format!("{},reason=\"{r}\"", label(p)), *n))
                })
                .collect(),
        );
    }
}

/// A running neighbour task.
struct PeerTask {
    global: GlobalConfig,
    peer: PeerConfig,
    stop: watch::Sender<Option<u8>>,
    incoming: mpsc::Sender<TcpStream>,
    handle: tokio::task::JoinHandle<()>,
}

struct Listener {
    port: u16,
    /// The bound listener's task; `None` while binding failed (retried).
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Driver {
    desired: watch::Receiver<Arc<Desired>>,
    stop: watch::Receiver<Option<u8>>,
    status: StatusMap,
    listen_error: Arc<Mutex<Option<String>>>,
    routes: watch::Sender<Arc<Routes>>,
    peers: HashMap<IpAddr, PeerTask>,
    listener: Option<Listener>,
}

impl Driver {
    async fn run(mut self) {
        let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(16);
        let mut retry = tokio::time::interval(LISTEN_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let desired = self.desired.borrow_and_update().clone();
            self.reconcile(&desired, &accepted_tx);
            tokio::select! {
                changed = self.desired.changed() => if changed.is_err() { break },
                Some((stream, from)) = accepted.recv() => self.dispatch(stream, from),
                _ = retry.tick() => {}
                () = stopping(&mut self.stop) => break,
            }
        }
        let cease = (*self.stop.borrow()).unwrap_or(2);
        if let Some(l) = self.listener.take() {
            if let Some(t) = l.task {
                t.abort();
            }
        }
        let handles: Vec<_> = self
            .peers
            .drain()
            .map(|(_, t)| {
                t.stop.send_replace(Some(cease));
                t.handle
            })
            .collect();
        let _ = tokio::time::timeout(STOP_GRACE, async {
            for h in handles {
                let _ = h.await;
            }
        })
        .await;
    }

    fn reconcile(&mut self, desired: &Desired, accepted: &mpsc::Sender<(TcpStream, SocketAddr)>) {
        self.routes.send_if_modified(|r| {
            if **r == desired.routes {
                return false;
            }
            *r = Arc::new(desired.routes.clone());
            true
        });
        let Some(global) = desired.global else {
            if let Some(Listener { task: Some(t), .. }) = self.listener.take() {
                t.abort();
            }
            *self.listen_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.stop_peers(|_| true, 3);
            lock(&self.status).clear();
            return;
        };
        self.listen(global.listen_port, accepted);
        let wanted: HashMap<IpAddr, PeerConfig> =
            desired.peers.iter().map(|p| (p.addr, *p)).collect();
        // Cease subcode 3 for a removed neighbour, 6 (other configuration change) for one
        // whose setup changed.
        self.stop_peers(|t| !wanted.contains_key(&t.peer.addr), 3);
        self.stop_peers(
            |t| wanted.get(&t.peer.addr) != Some(&t.peer) || t.global != global,
            6,
        );
        {
            let mut status = lock(&self.status);
            status.retain(|a, _| wanted.contains_key(a));
            for p in wanted.values() {
                status
                    .entry(p.addr)
                    .or_insert_with(|| PeerStatus::new(p))
                    .remote_as = p.remote_as;
            }
        }
        for peer in wanted.into_values() {
            if self.peers.contains_key(&peer.addr) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(None);
            let (incoming, incoming_rx) = mpsc::channel(2);
            let ctx = session::PeerCtx {
                global,
                peer,
                routes: self.routes.subscribe(),
                incoming: incoming_rx,
                stop: stop_rx,
                status: self.status.clone(),
            };
            let handle = tokio::spawn(session::run(ctx));
            self.peers.insert(
                peer.addr,
                PeerTask {
                    global,
                    peer,
                    stop,
                    incoming,
                    handle,
                },
            );
        }
    }

    /// Stops (with Cease `subcode`) and forgets the neighbour tasks `which` picks.
    fn stop_peers(&mut self, which: impl Fn(&PeerTask) -> bool, subcode: u8) {
        let gone: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, t)| which(t))
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            if let Some(t) = self.peers.remove(&addr) {
                // The task says goodbye by itself and ends; nobody needs to wait for it.
                t.stop.send_replace(Some(subcode));
            }
        }
    }

    /// Makes sure a listener runs on `port`.
    fn listen(&mut self, port: u16, accepted: &mpsc::Sender<(TcpStream, SocketAddr)>) {
        let running = self
            .listener
            .as_ref()
            .is_some_and(|l| l.port == port && l.task.is_some());
        if running {
            return;
        }
        if let Some(Listener { task: Some(t), .. }) = self.listener.take() {
            t.abort();
        }
        let error = match bind(port) {
            Ok(listener) => {
                log::info!("BGP listening on port {port}");
                let accepted = accepted.clone();
                let task = tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok(conn) => {
                                if accepted.send(conn).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                log::warn!("BGP listener on port {port}: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
                self.listener = Some(Listener {
                    port,
                    task: Some(task),
                });
                None
            }
            Err(e) => {
                let first = self.listener.is_none();
                let msg = format!("cannot listen for BGP on port {port}: {e}");
                if first {
                    log::warn!(
                        "{msg}; outgoing sessions still work, retrying every {LISTEN_RETRY:?}"
                    );
                }
                self.listener = Some(Listener { port, task: None });
                Some(msg)
            }
        };
        *self.listen_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Hands an accepted connection to its neighbour's task; one from anyone else is closed.
    fn dispatch(&mut self, stream: TcpStream, from: SocketAddr) {
        let ip = from.ip().to_canonical();
        match self.peers.get(&ip) {
            Some(t) => {
                if t.incoming.try_send(stream).is_err() {
                    log::debug!("BGP: neighbour {ip} is busy; its connection is closed");
                }
            }
            None => log::info!("BGP: connection from {from}, which is not a neighbour, closed"),
        }
    }
}

/// Completes once `stop` says to stop, or its sender is gone.
async fn stopping(stop: &mut watch::Receiver<Option<u8>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// A listener on every address (IPv6 and, mapped, IPv4) or, without IPv6, every IPv4 address.
fn bind(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let make = |domain: Domain, addr: SocketAddr| -> std::io::Result<Socket> {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if domain == Domain::IPV6 {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(16)?;
        Ok(s)
    };
    let socket = make(
        Domain::IPV6,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    )
    .or_else(|_| {
        make(
            Domain::IPV4,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        )
    })?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests;
