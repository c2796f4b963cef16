//! One neighbour's task: connect (or take the neighbour's own connection), OPEN, keep the
//! session alive, advertise the routes and their changes, and start over with back-off.
//!
//! Collisions are resolved simply, one session per neighbour: a connection from the
//! neighbour replaces ours while ours has not received an OPEN yet, and is refused with a
//! Cease (connection collision resolution) once ours has.

use crate::wire::{self, Family, MessageType, Notification, Open, RouteAttrs, WireError};
use crate::{lock, GlobalConfig, PeerConfig, PeerStatus, Routes, SessionState, StatusMap};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one message may take to be written; a neighbour that reads nothing for this long
/// is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The hold time until OPENs are exchanged (RFC 4271 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// The first retry's delay; each failed attempt doubles it up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session established for this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// What a neighbour's task gets from the driver.
pub(crate) struct PeerCtx {
    pub global: GlobalConfig,
    pub peer: PeerConfig,
    pub routes: watch::Receiver<Arc<Routes>>,
    pub incoming: mpsc::Receiver<TcpStream>,
    /// `Some(cease subcode)` when the task is to end.
    pub stop: watch::Receiver<Option<u8>>,
    pub status: StatusMap,
}

impl PeerCtx {
    fn ebgp(&self) -> bool {
        self.global.local_as != self.peer.remote_as
    }

    /// Applies `f` to this neighbour's status (if it is still listed).
    fn status(&self, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(s) = lock(&self.status).get_mut(&self.peer.addr) {
            f(s);
        }
    }

    fn set_state(&self, state: SessionState) {
        self.status(|s| {
            let now = Instant::now().into_std();
            if s.state == SessionState::Established && state != SessionState::Established {
                s.up_since = None;
                s.down_since = Some(now);
            }
            if state == SessionState::Established && s.state != SessionState::Established {
                s.up_since = Some(now);
                s.established_total += 1;
            }
            s.state = state;
        });
    }

    fn error(&self, what: String) {
        self.status(|s| s.last_error = Some(what));
    }
}

/// How a session ended.
enum End {
    /// Told to stop: the task ends.
    Stopped,
    /// The neighbour's own connection replaces the session's.
    Replaced(TcpStream),
    /// Closed for a reason already logged; `established` says how long it was up.
    Closed { established: Duration },
}

/// Runs the neighbour until told to stop.
pub(crate) async fn run(mut ctx: PeerCtx) {
    let mut backoff = Backoff::new(ctx.peer.addr);
    let mut pending: Option<TcpStream> = None;
    loop {
        let stream = match pending.take() {
            Some(s) => s,
            None => {
                ctx.set_state(SessionState::Connect);
                let attempt = timeout(CONNECT_TIMEOUT, connect(&ctx.global, &ctx.peer));
                let failure = tokio::select! {
                    r = attempt => match r {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
                    },
                    s = ctx.incoming.recv() => match s {
                        Some(s) => Ok(s),
                        None => return,
                    },
                    _ = stopped(&mut ctx.stop) => return,
                };
                match failure {
                    Ok(s) => s,
                    Err(e) => {
                        let to = SocketAddr::new(ctx.peer.addr, ctx.peer.remote_port);
                        log::debug!("BGP: cannot connect to {to}: {e}");
                        ctx.error(format!("connect: {e}"));
                        ctx.set_state(SessionState::Active);
                        match wait(&mut ctx, backoff.next()).await {
                            Some(Some(s)) => s,
                            Some(None) => continue,
                            None => return,
                        }
                    }
                }
            }
        };
        match session(&mut ctx, stream).await {
            End::Stopped => {
                ctx.set_state(SessionState::Idle);
                return;
            }
            End::Replaced(s) => pending = Some(s),
            End::Closed { established } => {
                ctx.set_state(SessionState::Active);
                if established >= STABLE {
                    backoff.reset();
                }
                match wait(&mut ctx, backoff.next()).await {
                    Some(s) => pending = s,
                    None => return,
                }
            }
        }
    }
}

/// Waits `delay` while accepting the neighbour's connection: `None` if told to stop,
/// `Some(Some(conn))` for a connection, `Some(None)` when the time is up.
async fn wait(ctx: &mut PeerCtx, delay: Duration) -> Option<Option<TcpStream>> {
    tokio::select! {
        _ = sleep(delay) => Some(None),
        s = ctx.incoming.recv() => s.map(Some),
        _ = stopped(&mut ctx.stop) => None,
    }
}

/// Completes when the task is told to stop (or the driver is gone).
async fn stopped(stop: &mut watch::Receiver<Option<u8>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// The TTL of the session's packets: 1 for a directly connected eBGP neighbour, 255 for a
/// multihop one (RFC 4271's default), the system's for iBGP.
fn ttl(global: &GlobalConfig, peer: &PeerConfig) -> Option<u32> {
    match (global.local_as != peer.remote_as, peer.multihop) {
        (true, true) => Some(255),
        (true, false) => Some(1),
        (false, _) => None,
    }
}

fn set_ttl(sock: socket2::SockRef<'_>, ttl: Option<u32>, v6: bool) -> io::Result<()> {
    let Some(ttl) = ttl else { return Ok(()) };
    if v6 {
        sock.set_unicast_hops_v6(ttl)?;
        // An IPv4 neighbour on the dual-stack listener: its packets take the IPv4 TTL.
        let _ = sock.set_ttl(ttl);
        Ok(())
    } else {
        sock.set_ttl(ttl)
    }
}

async fn connect(global: &GlobalConfig, peer: &PeerConfig) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let to = SocketAddr::new(peer.addr, peer.remote_port);
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    set_ttl(
        socket2::SockRef::from(&sock),
        ttl(global, peer),
        to.is_ipv6(),
    )?;
    sock.set_nonblocking(true)?;
    let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
    sock.connect(to).await
}

/// A received message, or why reading stopped.
type Frame = Result<(MessageType, Vec<u8>), ReadEnd>;

enum ReadEnd {
    Closed(String),
    Malformed(WireError),
}

/// Reads whole messages off the connection for the session, which may be busy with timers.
/// Why reading ended is sent once, unchecked: a session already gone needs no reason.
async fn read_frames(mut rd: OwnedReadHalf, tx: mpsc::Sender<Frame>) {
    loop {
        let mut head = [0u8; wire::HEADER_LEN];
        if let Err(e) = rd.read_exact(&mut head).await {
            let _ = tx.send(Err(ReadEnd::Closed(closed_reason(&e)))).await;
            return;
        }
        let header = match wire::parse_header(&head) {
            Ok(h) => h,
            Err(e) => {
                let _ = tx.send(Err(ReadEnd::Malformed(e))).await;
                return;
            }
        };
        let mut body = vec![0; header.len - wire::HEADER_LEN];
        if let Err(e) = rd.read_exact(&mut body).await {
            let _ = tx.send(Err(ReadEnd::Closed(closed_reason(&e)))).await;
            return;
        }
        if tx.send(Ok((header.kind, body))).await.is_err() {
            return;
        }
    }
}

fn closed_reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "the neighbour closed the connection".to_owned()
    } else {
        e.to_string()
    }
}

/// Aborts the reader when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection's session.
struct Conn {
    wr: OwnedWriteHalf,
    /// Reused for every message sent.
    buf: Vec<u8>,
    last_sent: Instant,
}

impl Conn {
    async fn send_buf(&mut self) -> Result<(), String> {
        let r = timeout(WRITE_TIMEOUT, self.wr.write_all(&self.buf)).await;
        self.buf.clear();
        self.last_sent = Instant::now();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("write: not read within {WRITE_TIMEOUT:?}")),
        }
    }

    /// Sends `n` and counts it; the session ends after this, so errors only matter to logs.
    async fn notify(&mut self, ctx: &PeerCtx, n: &Notification) {
        if n.code == 6 {
            // A Cease is an ordinary goodbye (stop, removal, collision).
            log::info!("BGP: to neighbour {}: NOTIFICATION {n}", ctx.peer.addr);
        } else {
            log::warn!("BGP: to neighbour {}: NOTIFICATION {n}", ctx.peer.addr);
        }
        n.emit(&mut self.buf);
        if let Err(e) = self.send_buf().await {
            log::debug!(
                "BGP: to neighbour {}: NOTIFICATION not sent: {e}",
                ctx.peer.addr
            );
        }
        ctx.status(|s| *s.notifications_sent.entry((n.code, n.subcode)).or_default() += 1);
        let _ = self.wr.shutdown().await;
    }
}

/// The FSM subcode (RFC 6608) of an unexpected message in `state`.
fn fsm_subcode(state: SessionState) -> u8 {
    match state {
        SessionState::OpenSent => 1,
        SessionState::OpenConfirm => 2,
        SessionState::Established => 3,
        _ => 0,
    }
}

/// Checks a received OPEN against the neighbour's configuration.
fn check_open(ctx: &PeerCtx, open: Open) -> Result<Open, WireError> {
    if open.my_as != ctx.peer.remote_as {
        return Err(WireError::BadPeerAs(open.my_as));
    }
    if !ctx.ebgp() && open.bgp_id == ctx.global.router_id {
        return Err(WireError::BadBgpId(open.bgp_id));
    }
    Ok(open)
}

async fn session(ctx: &mut PeerCtx, stream: TcpStream) -> End {
    let closed = |ctx: &PeerCtx, why: String, established: Duration| {
        log::info!("BGP: session with {} closed: {why}", ctx.peer.addr);
        ctx.error(why);
        End::Closed { established }
    };
    let local = match stream.local_addr() {
        Ok(a) => a.ip().to_canonical(),
        Err(e) => return closed(ctx, format!("local address: {e}"), Duration::ZERO),
    };
    let _ = stream.set_nodelay(true);
    let v6_socket = stream.local_addr().is_ok_and(|a| a.is_ipv6());
    if let Err(e) = set_ttl(
        socket2::SockRef::from(&stream),
        ttl(&ctx.global, &ctx.peer),
        v6_socket,
    ) {
        return closed(ctx, format!("setting the TTL: {e}"), Duration::ZERO);
    }
    let (rd, wr) = stream.into_split();
    let (tx, mut frames) = mpsc::channel(8);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(rd, tx)));
    let mut conn = Conn {
        wr,
        buf: Vec::with_capacity(wire::MAX_LEN),
        last_sent: Instant::now(),
    };
    let g = ctx.global;
    Open::ours(g.local_as, g.hold_time, g.router_id, &Family::ALL).emit(&mut conn.buf);
    if let Err(e) = conn.send_buf().await {
        return closed(ctx, e, Duration::ZERO);
    }
    ctx.set_state(SessionState::OpenSent);
    let mut state = SessionState::OpenSent;
    let mut hold = Some(OPEN_HOLD);
    let mut keepalive: Option<Duration> = None;
    let mut last_heard = Instant::now();
    let mut peer_open: Option<Open> = None;
    let mut sent = Advertised::default();
    let mut established_at: Option<Instant> = None;
    let up = |at: Option<Instant>| at.map_or(Duration::ZERO, |t| t.elapsed());
    loop {
        let hold_at = hold.map(|h| last_heard + h);
        let keepalive_at = keepalive.map(|k| conn.last_sent + k);
        tokio::select! {
            frame = frames.recv() => {
                let (kind, body) = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(ReadEnd::Malformed(e))) => {
                        ctx.status(|s| *s.malformed.entry(e.label()).or_default() += 1);
                        conn.notify(ctx, &e.notification()).await;
                        return closed(ctx, format!("malformed message: {e}"), up(established_at));
                    }
                    Some(Err(ReadEnd::Closed(why))) => return closed(ctx, why, up(established_at)),
                    None => return closed(ctx, "reader ended".into(), up(established_at)),
                };
                last_heard = Instant::now();
                match (state, kind) {
                    (SessionState::OpenSent, MessageType::Open) => {
                        let open = match Open::parse(&body).and_then(|o| check_open(ctx, o)) {
                            Ok(o) => o,
                            Err(e) => {
                                ctx.status(|s| *s.malformed.entry(e.label()).or_default() += 1);
                                conn.notify(ctx, &e.notification()).await;
                                return closed(ctx, format!("OPEN refused: {e}"), Duration::ZERO);
                            }
                        };
                        let negotiated = open.hold_time.min(ctx.global.hold_time);
                        hold = (negotiated > 0).then(|| Duration::from_secs(negotiated.into()));
                        keepalive = hold.map(|h| (h / 3).max(Duration::from_secs(1)));
                        wire::emit_keepalive(&mut conn.buf);
                        if let Err(e) = conn.send_buf().await {
                            return closed(ctx, e, Duration::ZERO);
                        }
                        log::debug!(
                            "BGP: OPEN from {} (AS {}, id {}, hold {} s, families {:?})",
                            ctx.peer.addr, open.my_as, open.bgp_id, open.hold_time, open.families
                        );
                        peer_open = Some(open);
                        state = SessionState::OpenConfirm;
                        ctx.set_state(state);
                    }
                    (SessionState::OpenConfirm, MessageType::Keepalive) => {
                        state = SessionState::Established;
                        established_at = Some(Instant::now());
                        ctx.set_state(state);
                        ctx.status(|s| s.last_error = None);
                        log::info!(
                            "BGP: session with {} (AS {}) established",
                            ctx.peer.addr, ctx.peer.remote_as
                        );
                        let Some(open) = peer_open.as_ref() else {
                            return closed(ctx, "no OPEN".into(), Duration::ZERO);
                        };
                        let routes = ctx.routes.borrow_and_update().clone();
                        let target = target(ctx, &routes, open, local);
                        if let Err(e) = sync(ctx, &mut conn, &mut sent, target, open, true).await {
                            return closed(ctx, e, up(established_at));
                        }
                    }
                    (SessionState::Established, MessageType::Keepalive) => {}
                    (SessionState::Established, MessageType::Update) => {
                        let four = peer_open.as_ref().is_some_and(|o| o.four_octet);
                        match wire::parse_update(&body, four) {
                            Ok(summary) => {
                                log::trace!("BGP: UPDATE from {}: {summary:?}", ctx.peer.addr);
                                ctx.status(|s| s.updates_received += 1);
                            }
                            Err(e) => {
                                ctx.status(|s| *s.malformed.entry(e.label()).or_default() += 1);
                                conn.notify(ctx, &e.notification()).await;
                                return closed(ctx, format!("malformed UPDATE: {e}"), up(established_at));
                            }
                        }
                    }
                    (_, MessageType::Notification) => {
                        let why = match Notification::parse(&body) {
                            Ok(n) => {
                                ctx.status(|s| {
                                    *s.notifications_received.entry((n.code, n.subcode)).or_default() += 1
                                });
                                format!("NOTIFICATION from the neighbour: {n}")
                            }
                            Err(e) => format!("NOTIFICATION from the neighbour: {e}"),
                        };
                        return closed(ctx, why, up(established_at));
                    }
                    (state, kind) => {
                        conn.notify(ctx, &Notification::fsm(fsm_subcode(state))).await;
                        return closed(
                            ctx,
                            format!("unexpected {kind:?} in state {state}"),
                            up(established_at),
                        );
                    }
                }
            }
            _ = sleep_until(hold_at.unwrap_or_else(far_future)), if hold_at.is_some() => {
                conn.notify(ctx, &Notification::hold_timer_expired()).await;
                return closed(ctx, "hold timer expired".into(), up(established_at));
            }
            _ = sleep_until(keepalive_at.unwrap_or_else(far_future)),
                if keepalive_at.is_some() && state >= SessionState::OpenConfirm =>
            {
                wire::emit_keepalive(&mut conn.buf);
                if let Err(e) = conn.send_buf().await {
                    return closed(ctx, e, up(established_at));
                }
            }
            changed = ctx.routes.changed(), if state == SessionState::Established => {
                if changed.is_err() {
                    conn.notify(ctx, &Notification::cease(2)).await;
                    return End::Stopped;
                }
                let routes = ctx.routes.borrow_and_update().clone();
                if let Some(open) = peer_open.as_ref() {
                    let target = target(ctx, &routes, open, local);
                    if let Err(e) = sync(ctx, &mut conn, &mut sent, target, open, false).await {
                        return closed(ctx, e, up(established_at));
                    }
                }
            }
            s = ctx.incoming.recv() => match s {
                None => {
                    // The driver dropped this neighbour, usually right after saying why.
                    let subcode = (*ctx.stop.borrow()).unwrap_or(3);
                    conn.notify(ctx, &Notification::cease(subcode)).await;
                    return End::Stopped;
                }
                Some(s) if state < SessionState::OpenConfirm => {
                    log::debug!("BGP: {}'s own connection replaces ours", ctx.peer.addr);
                    conn.notify(ctx, &Notification::cease(7)).await;
                    return End::Replaced(s);
                }
                Some(s) => {
                    tokio::spawn(refuse(s));
                    ctx.status(|st| *st.notifications_sent.entry((6, 7)).or_default() += 1);
                }
            },
            _ = stopped(&mut ctx.stop) => {
                let subcode = (*ctx.stop.borrow()).unwrap_or(2);
                conn.notify(ctx, &Notification::cease(subcode)).await;
                return End::Stopped;
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Closes a second connection of a neighbour that has a session: Cease, connection collision
/// resolution.
async fn refuse(mut s: TcpStream) {
    let mut buf = Vec::new();
    Notification::cease(7).emit(&mut buf);
    let _ = timeout(Duration::from_secs(2), s.write_all(&buf)).await;
    let _ = s.shutdown().await;
}

/// What a session has announced: each route's attributes and next hop.
type Advertised = BTreeMap<IpAddr, (RouteAttrs, IpAddr)>;

/// What the session should have announced: the routes of families both sides speak that
/// have a next hop, with this neighbour's attributes.
fn target(ctx: &PeerCtx, routes: &Routes, open: &Open, local: IpAddr) -> Advertised {
    let g = &ctx.global;
    let nh_v4 = g
        .next_hop_v4
        .map(IpAddr::V4)
        .or(local.is_ipv4().then_some(local));
    let nh_v6 = g
        .next_hop_v6
        .map(IpAddr::V6)
        .or(local.is_ipv6().then_some(local));
    let ebgp = ctx.ebgp();
    routes
        .iter()
        .filter_map(|(&addr, pref)| {
            let (family, nh) = match addr {
                IpAddr::V4(_) => (Family::Ipv4Unicast, nh_v4),
                IpAddr::V6(_) => (Family::Ipv6Unicast, nh_v6),
            };
            if !open.supports(family) {
                return None;
            }
            let Some(nh) = nh else {
                log::debug!(
                    "BGP: no {family:?} next hop toward {}: {addr} not advertised",
                    ctx.peer.addr
                );
                return None;
            };
            let attrs = RouteAttrs {
                origin_as: ebgp.then_some(g.local_as),
                med: Some(pref.med()),
                local_pref: (!ebgp).then_some(pref.local_pref()),
            };
            Some((addr, (attrs, nh)))
        })
        .collect()
}

/// Sends the UPDATEs that turn `sent` into `target`, and `target` becomes `sent`. The first
/// sync of a session ends with an End-of-RIB per family.
async fn sync(
    ctx: &PeerCtx,
    conn: &mut Conn,
    sent: &mut Advertised,
    target: Advertised,
    open: &Open,
    first: bool,
) -> Result<(), String> {
    let mut gone_v4 = Vec::new();
    let mut gone_v6 = Vec::new();
    for addr in sent.keys().filter(|a| !target.contains_key(a)) {
        match addr {
            IpAddr::V4(a) => gone_v4.push(*a),
            IpAddr::V6(a) => gone_v6.push(*a),
        }
    }
    // New or changed announcements, grouped by what they carry.
    let mut new_v4: BTreeMap<(RouteAttrs, Ipv4Addr), Vec<Ipv4Addr>> = BTreeMap::new();
    let mut new_v6: BTreeMap<(RouteAttrs, Ipv6Addr), Vec<Ipv6Addr>> = BTreeMap::new();
    for (addr, entry) in &target {
        if sent.get(addr) == Some(entry) {
            continue;
        }
        match (addr, entry.1) {
            (IpAddr::V4(a), IpAddr::V4(nh)) => new_v4.entry((entry.0, nh)).or_default().push(*a),
            (IpAddr::V6(a), IpAddr::V6(nh)) => new_v6.entry((entry.0, nh)).or_default().push(*a),
            _ => {}
        }
    }
    let four = open.four_octet;
    let mut updates = 0u64;
    for chunk in gone_v4.chunks(wire::MAX_V4_PREFIXES) {
        wire::emit_update_v4(
            &mut conn.buf,
            chunk,
            &[],
            &RouteAttrs::default(),
            Ipv4Addr::UNSPECIFIED,
            four,
        );
        conn.send_buf().await?;
        updates += 1;
    }
    for chunk in gone_v6.chunks(wire::MAX_V6_PREFIXES) {
        wire::emit_withdraw_v6(&mut conn.buf, chunk);
        conn.send_buf().await?;
        updates += 1;
    }
    for ((attrs, nh), addrs) in &new_v4 {
        for chunk in addrs.chunks(wire::MAX_V4_PREFIXES) {
            wire::emit_update_v4(&mut conn.buf, &[], chunk, attrs, *nh, four);
            conn.send_buf().await?;
            updates += 1;
        }
    }
    for ((attrs, nh), addrs) in &new_v6 {
        for chunk in addrs.chunks(wire::MAX_V6_PREFIXES) {
            wire::emit_update_v6(&mut conn.buf, chunk, attrs, *nh, four);
            conn.send_buf().await?;
            updates += 1;
        }
    }
    if first {
        if open.supports(Family::Ipv4Unicast) {
            let none = RouteAttrs::default();
            wire::emit_update_v4(&mut conn.buf, &[], &[], &none, Ipv4Addr::UNSPECIFIED, four);
            conn.send_buf().await?;
            updates += 1;
        }
        if open.supports(Family::Ipv6Unicast) {
            wire::emit_withdraw_v6(&mut conn.buf, &[]);
            conn.send_buf().await?;
            updates += 1;
        }
    }
    let (announced, withdrawn) = (
        new_v4.values().map(Vec::len).sum::<usize>() + new_v6.values().map(Vec::len).sum::<usize>(),
        gone_v4.len() + gone_v6.len(),
    );
    if announced + withdrawn > 0 {
        log::info!(
            "BGP: to {}: {announced} route(s) announced, {withdrawn} withdrawn",
            ctx.peer.addr
        );
    }
    ctx.status(|s| s.updates_sent += updates);
    *sent = target;
    Ok(())
}

/// Retry delays: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each with up to a quarter
/// added at random so that two speakers retrying each other drift apart.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(addr: IpAddr) -> Backoff {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(addr.to_string().as_bytes());
        Backoff {
            next: BACKOFF_MIN,
            seed: h.finish() | 1,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: enough randomness for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(0).max(1);
        base + Duration::from_millis(self.seed % quarter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_ceiling_with_at_most_a_quarter_of_jitter() {
        let mut b = Backoff::new("198.18.1.2".parse().unwrap());
        let mut base = BACKOFF_MIN;
        for _ in 0..10 {
            let d = b.next();
            assert!(d >= base && d <= base + base / 4, "{d:?} for {base:?}");
            base = (base * 2).min(BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next() < BACKOFF_MIN * 2);
    }

    #[test]
    fn ebgp_gets_ttl_1_or_255_with_multihop_and_ibgp_keeps_the_default() {
        let g = GlobalConfig::new(65001, Ipv4Addr::new(198, 18, 0, 1));
        let mut p = PeerConfig {
            addr: "198.18.1.2".parse().unwrap(),
            remote_as: 65002,
            remote_port: 179,
            multihop: false,
        };
        assert_eq!(ttl(&g, &p), Some(1));
        p.multihop = true;
        assert_eq!(ttl(&g, &p), Some(255));
        p.remote_as = 65001;
        assert_eq!(ttl(&g, &p), None);
    }
}
