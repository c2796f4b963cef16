//! Endpoint health probes: one tokio task per monitored (service, endpoint) probes it every
//! interval and reports up/down changes to the appliance, which republishes the snapshot.
//!
//! Semantics follow loxilb: an endpoint starts up (a new service works at once), goes down after
//! `retries` consecutive failed probes and comes back after one success. A probe runs every
//! `max(1 s, timeout)`, so a slow answer never overlaps the next probe. Down only stops new
//! flows; established ones continue until they end or time out.

use crate::appliance::ApplianceCore;
use crate::compile::HealthKey;
use crate::http::Appliance;
use oxlb_api::{ProbeKind, ProbeSpec};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
}

/// Time between two probes of one endpoint.
pub fn interval(probe: &ProbeSpec) -> Duration {
    Duration::from_secs(u64::from(probe.timeout_secs.max(1)))
}

/// Probes `addr` once as `probe` says; `Ok` means healthy.
pub async fn probe_once(probe: &ProbeSpec, addr: SocketAddrV4) -> Result<(), ProbeError> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_secs.max(1)));
    let work = async {
        match probe.kind {
            ProbeKind::Tcp => tcp(addr).await,
            ProbeKind::Udp => udp(addr, &probe.request, &probe.response).await,
            ProbeKind::Http => http(addr, &probe.request, &probe.response).await,
            ProbeKind::None => Ok(()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// A TCP connection opens.
async fn tcp(addr: SocketAddrV4) -> Result<(), ProbeError> {
    TcpStream::connect(addr).await?;
    Ok(())
}

/// A datagram (`request`, or one zero byte) is answered, with `expect` in the answer if set. A
/// connected socket turns an ICMP port unreachable into an error of `recv`.
async fn udp(addr: SocketAddrV4, request: &str, expect: &str) -> Result<(), ProbeError> {
    let socket = UdpSocket::bind("0.0.0.0:0").await?;
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
async fn http(addr: SocketAddrV4, path: &str, expect: &str) -> Result<(), ProbeError> {
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: oxlb-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
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
    addr: SocketAddrV4,
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
            let addr = SocketAddrV4::new(e.ip, probe.port_of(e));
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
    use std::net::SocketAddr;
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

    fn v4(addr: SocketAddr) -> SocketAddrV4 {
        match addr {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        }
    }

    /// A port nothing listens on (bound, then closed).
    async fn closed_tcp_port() -> SocketAddrV4 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        v4(l.local_addr().unwrap())
    }

    /// An HTTP server answering every connection with `answer`.
    async fn http_server(answer: &'static str) -> SocketAddrV4 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = v4(l.local_addr().unwrap());
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
        let open = v4(l.local_addr().unwrap());
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
        let addr = v4(server.local_addr().unwrap());
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
        let addr = v4(silent.local_addr().unwrap());
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
