//! Endpoint health probes: one tokio task per monitored (service, endpoint) probes it every
//! interval and reports up/down changes to the appliance, which republishes the snapshot.
//!
//! Semantics follow loxilb: an endpoint starts up (a new service works at once), goes down after
//! `retries` consecutive failed probes and comes back after one success. A probe runs every
//! `max(1 s, timeout)`, so a slow answer never overlaps the next probe. Down only stops new
//! flows; established ones continue until they end or time out.
//!
//! Probe types: `tcp`, `udp`, `http`, `https` (the `http` probe over TLS, see [`tls`]) and
//! `ping` (ICMP echo, see [`icmp`]).

mod icmp;
mod tls;

use crate::appliance::ApplianceCore;
use crate::compile::HealthKey;
use crate::http::Appliance;
use oxlb_api::{ProbeKind, ProbeSpec};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

/// How often the supervisor compares the running probes with the desired state.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// The most of an HTTP answer read; a body substring must appear within it.
const MAX_HTTP_ANSWER: usize = 64 * 1024;

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable (an ICMP error for UDP), reset, ...
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer did not contain the expected text.
    #[error("the answer does not contain {0:?}")]
    UnexpectedAnswer(String),
    /// An HTTP status other than 2xx or 3xx, or no status line.
    #[error("HTTP status {0}")]
    BadStatus(String),
    /// Neither kind of ICMP socket could be opened, so no ping probe can run.
    #[error(
        "cannot open an ICMP socket for ping probes: a raw socket needs CAP_NET_RAW ({raw}); \
         a ping socket needs the group in net.ipv4.ping_group_range ({ping})"
    )]
    NoIcmpSocket { raw: io::Error, ping: io::Error },
}

/// Time between two probes of one endpoint.
pub fn interval(probe: &ProbeSpec) -> Duration {
    Duration::from_secs(u64::from(probe.timeout_secs.max(1)))
}

/// Probes `addr` once as `probe` says; `Ok` means healthy.
pub async fn probe_once(probe: &ProbeSpec, addr: SocketAddr) -> Result<(), ProbeError> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_secs.max(1)));
    let work = async {
        match probe.kind {
            ProbeKind::Tcp => tcp(addr).await,
            ProbeKind::Udp => udp(addr, &probe.request, &probe.response).await,
            ProbeKind::Http => http(addr, &probe.request, &probe.response).await,
            ProbeKind::Https => https(addr, &probe.request, &probe.response).await,
            // ICMP has no ports: the probe port is ignored, as loxilb does.
            ProbeKind::Ping => icmp::ping(addr.ip()).await,
            ProbeKind::None => Ok(()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// A TCP connection opens.
async fn tcp(addr: SocketAddr) -> Result<(), ProbeError> {
    TcpStream::connect(addr).await?;
    Ok(())
}

/// A datagram (`request`, or one zero byte) is answered, with `expect` in the answer if set. A
/// connected socket turns an ICMP port unreachable into an error of `recv`.
async fn udp(addr: SocketAddr, request: &str, expect: &str) -> Result<(), ProbeError> {
    let any = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    let payload: &[u8] = if request.is_empty() {
        &[0]
    } else {
        request.as_bytes()
    };
    socket.send(payload).await?;
    let mut buf = vec![0u8; 2048];
    let n = socket.recv(&mut buf).await?;
    contains(&buf[..n], expect)
}

/// `GET path` (empty: `/`) over HTTP/1.1 answers 2xx or 3xx, with `expect` in the body if set.
async fn http(addr: SocketAddr, path: &str, expect: &str) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr).await?;
    http_exchange(stream, addr, path, expect).await
}

/// The `http` probe over TLS, whatever certificate the endpoint presents (see [`tls`]).
async fn https(addr: SocketAddr, path: &str, expect: &str) -> Result<(), ProbeError> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tls::connector()
        .connect(tls::server_name(addr.ip()), tcp)
        .await?;
    http_exchange(stream, addr, path, expect).await
}

/// Sends `GET path` to `addr` on `stream` and checks the answer (see [`http`]).
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
    expect: &str,
) -> Result<(), ProbeError> {
    let path = if path.is_empty() { "/" } else { path };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: oxlb-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // Many TLS servers close without close_notify once the answer is sent; the
            // answer read so far is still the whole answer of a `Connection: close` request.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !answer.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() >= MAX_HTTP_ANSWER || http_complete(&answer) {
            break;
        }
    }
    let head_end = find(&answer, b"\r\n\r\n");
    let status_line = answer
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or("");
    if !status_line.starts_with("HTTP/1.") || !(status.starts_with('2') || status.starts_with('3'))
    {
        return Err(ProbeError::BadStatus(if status.is_empty() {
            "missing".to_owned()
        } else {
            status.to_owned()
        }));
    }
    let body = head_end.map_or(&[][..], |at| &answer[at + 4..]);
    contains(body, expect)
}

/// Whether `answer` holds the whole head and a `Content-Length` body (so the connection need
/// not be waited out).
fn http_complete(answer: &[u8]) -> bool {
    let Some(head_end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| answer.len() - head_end - 4 >= len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(answer: &[u8], expect: &str) -> Result<(), ProbeError> {
    if expect.is_empty() || find(answer, expect.as_bytes()).is_some() {
        Ok(())
    } else {
        Err(ProbeError::UnexpectedAnswer(expect.to_owned()))
    }
}

/// An endpoint's verdict from consecutive probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    failures: u32,
}

impl Default for Health {
    /// Up: a service works before its first probe.
    fn default() -> Self {
        Health {
            up: true,
            failures: 0,
        }
    }
}

impl Health {
    /// Counts one result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool, retries: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let up = ok || (self.up && self.failures < retries.max(1));
        (up != self.up).then(|| {
            self.up = up;
            up
        })
    }
}

/// What one probe task probes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    probe: ProbeSpec,
}

/// Probes `target` forever, reporting changes of its verdict to `core`.
async fn run(core: Arc<ApplianceCore>, key: HealthKey, target: Target) {
    let mut health = Health::default();
    let mut ticker = tokio::time::interval(interval(&target.probe));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe_once(&target.probe, target.addr).await;
        if let Err(e) = &result {
            log::debug!("probe of {} for {}: {e}", target.addr, key.service);
        }
        if let Some(up) = health.record(result.is_ok(), target.probe.retries) {
            let c = core.clone();
            // Republishing compiles every service's selector: off the async threads.
            let _ = tokio::task::spawn_blocking(move || c.set_health(key, up)).await;
        }
    }
}

/// The probes the desired state asks for.
fn desired(core: &ApplianceCore) -> HashMap<HealthKey, Target> {
    let mut out = HashMap::new();
    for spec in core.current().services() {
        let Some(probe) = spec.monitor.as_ref().filter(|p| p.kind != ProbeKind::None) else {
            continue;
        };
        for e in &spec.endpoints {
            let key = HealthKey {
                service: spec.key,
                endpoint: e.ip,
                target_port: e.target_port,
            };
            let addr = SocketAddr::new(e.ip, probe.port_of(e));
            out.insert(
                key,
                Target {
                    addr,
                    probe: probe.clone(),
                },
            );
        }
    }
    out
}

/// Keeps one probe task per monitored endpoint of the desired state, level-triggered: a task
/// whose endpoint left (or whose probe settings changed) is stopped and its verdict forgotten
/// (up), a new one starts. Runs until aborted; the probe tasks end with it.
pub async fn supervise(core: Arc<ApplianceCore>) {
    // Dropping the set aborts every task in it.
    let mut tasks = JoinSet::new();
    let mut running: HashMap<HealthKey, (Target, AbortHandle)> = HashMap::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let want = desired(&core);
        let stale: Vec<HealthKey> = running
            .iter()
            .filter(|(k, (t, _))| want.get(k) != Some(t))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some((_, task)) = running.remove(&key) {
                task.abort();
            }
            let c = core.clone();
            let _ = tokio::task::spawn_blocking(move || c.set_health(key, true)).await;
        }
        for (key, target) in want {
            if let Entry::Vacant(slot) = running.entry(key) {
                let task = tasks.spawn(run(core.clone(), key, target.clone()));
                slot.insert((target, task));
            }
        }
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn spec(kind: ProbeKind, request: &str, response: &str) -> ProbeSpec {
        ProbeSpec {
            kind,
            port: 0,
            request: request.to_owned(),
            response: response.to_owned(),
            timeout_secs: 1,
            retries: 2,
        }
    }

    /// A port nothing listens on (bound, then closed).
    async fn closed_tcp_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    /// An HTTP server answering every connection with `answer`.
    async fn http_server(answer: &'static str) -> SocketAddr {
        http_server_on("127.0.0.1:0", answer).await
    }

    async fn http_server_on(bind: &str, answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_probe_succeeds_on_a_listener_and_fails_on_a_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        assert!(probe_once(&spec(ProbeKind::Tcp, "", ""), open)
            .await
            .is_ok());
        let closed = closed_tcp_port().await;
        drop(l);
        assert!(probe_once(&spec(ProbeKind::Tcp, "", ""), closed)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn http_probe_checks_the_status_and_the_body() {
        let ok = http_server("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy").await;
        let p = spec(ProbeKind::Http, "/healthz", "healthy");
        assert!(probe_once(&p, ok).await.is_ok());
        let wrong_body = spec(ProbeKind::Http, "/", "ready");
        assert!(matches!(
            probe_once(&wrong_body, ok).await,
            Err(ProbeError::UnexpectedAnswer(_))
        ));
        let failing = http_server("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        assert!(matches!(
            probe_once(&spec(ProbeKind::Http, "", ""), failing).await,
            Err(ProbeError::BadStatus(s)) if s == "503"
        ));
        let redirect = http_server("HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n").await;
        assert!(probe_once(&spec(ProbeKind::Http, "", ""), redirect)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn udp_probe_needs_an_answer_containing_the_expected_text() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let mut answer = b"pong:".to_vec();
                answer.extend_from_slice(&buf[..n]);
                let _ = server.send_to(&answer, from).await;
            }
        });
        assert!(probe_once(&spec(ProbeKind::Udp, "ping", "pong:ping"), addr)
            .await
            .is_ok());
        assert!(probe_once(&spec(ProbeKind::Udp, "", "nope"), addr)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn udp_probe_fails_without_an_answer() {
        // Bound but silent: no ICMP error either, so the probe times out.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            probe_once(&spec(ProbeKind::Udp, "", ""), addr).await,
            Err(ProbeError::Timeout(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(900));
        // Nothing bound: the ICMP port unreachable fails it at once.
        drop(silent);
        assert!(matches!(
            probe_once(&spec(ProbeKind::Udp, "", ""), addr).await,
            Err(ProbeError::Io(_))
        ));
    }

    /// An HTTPS server with a fresh self-signed certificate, answering every connection with
    /// `answer` and then closing the TCP connection without a TLS close_notify.
    async fn https_server(answer: &'static str) -> SocketAddr {
        https_server_on("127.0.0.1:0", answer).await
    }

    async fn https_server_on(bind: &str, answer: &'static str) -> SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["backend.invalid".to_owned()])
            .expect("a self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.flush().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_probe_accepts_a_self_signed_certificate_and_checks_status_and_body() {
        let ok = https_server("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy").await;
        assert!(
            probe_once(&spec(ProbeKind::Https, "/healthz", "healthy"), ok)
                .await
                .is_ok()
        );
        assert!(matches!(
            probe_once(&spec(ProbeKind::Https, "/", "ready"), ok).await,
            Err(ProbeError::UnexpectedAnswer(_))
        ));
        let failing = https_server("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        assert!(matches!(
            probe_once(&spec(ProbeKind::Https, "", ""), failing).await,
            Err(ProbeError::BadStatus(s)) if s == "503"
        ));
    }

    #[tokio::test]
    async fn https_probe_reads_an_answer_ended_by_a_close_without_close_notify() {
        // No Content-Length: the answer ends where the connection does.
        let abrupt = https_server("HTTP/1.0 200 OK\r\n\r\nhealthy and done").await;
        assert!(probe_once(&spec(ProbeKind::Https, "", "and done"), abrupt)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn https_probe_fails_against_a_plain_http_server() {
        let plain = http_server("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy").await;
        assert!(matches!(
            probe_once(&spec(ProbeKind::Https, "", ""), plain).await,
            Err(ProbeError::Io(_))
        ));
    }

    #[tokio::test]
    async fn ping_probe_is_answered_by_the_loopback_address_whatever_the_port() {
        let mut p = spec(ProbeKind::Ping, "", "");
        p.port = 9;
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 9));
        if let Err(e) = probe_once(&p, addr).await {
            panic!("ping 127.0.0.1: {e}");
        }
    }

    #[tokio::test]
    async fn every_probe_type_reaches_an_ipv6_endpoint() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy";
        let http = http_server_on("[::1]:0", ok).await;
        let https = https_server_on("[::1]:0", ok).await;
        let udp = UdpSocket::bind("[::1]:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        let cases = [
            (ProbeKind::Tcp, http),
            (ProbeKind::Http, http),
            (ProbeKind::Https, https),
            (ProbeKind::Udp, udp_addr),
            (
                ProbeKind::Ping,
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
            ),
        ];
        for (kind, addr) in cases {
            let p = spec(kind, "", "");
            if let Err(e) = probe_once(&p, addr).await {
                panic!("{} probe of {addr}: {e}", kind.as_str());
            }
        }
        let closed = TcpListener::bind("[::1]:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(probe_once(&spec(ProbeKind::Tcp, "", ""), closed_addr)
            .await
            .is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_ping_probes_each_get_their_own_answer() {
        // Every raw socket sees all 32 replies (and, on loopback, all 32 requests): each
        // probe must skip the 63 messages that are not its own and still finish in time.
        let p = spec(ProbeKind::Ping, "", "");
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let mut set = JoinSet::new();
        for _ in 0..32 {
            let p = p.clone();
            set.spawn(async move { probe_once(&p, addr).await });
        }
        while let Some(done) = set.join_next().await {
            if let Err(e) = done.expect("the probe task ran") {
                panic!("a concurrent ping failed: {e}");
            }
        }
    }

    #[test]
    fn an_endpoint_goes_down_after_retries_failures_and_up_after_one_success() {
        let mut h = Health::default();
        assert!(h.up, "endpoints start up");
        assert_eq!(h.record(false, 2), None);
        assert_eq!(h.record(true, 2), None, "a success resets the count");
        assert_eq!(h.record(false, 2), None);
        assert_eq!(h.record(false, 2), Some(false));
        assert_eq!(h.record(false, 2), None);
        assert_eq!(h.record(true, 2), Some(true));
    }

    #[test]
    fn the_interval_is_the_timeout_but_at_least_a_second() {
        let mut p = spec(ProbeKind::Tcp, "", "");
        assert_eq!(interval(&p), Duration::from_secs(1));
        p.timeout_secs = 5;
        assert_eq!(interval(&p), Duration::from_secs(5));
    }
}
