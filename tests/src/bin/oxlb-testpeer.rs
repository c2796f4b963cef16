//! The test peer: a tiny HTTP/UDP backend that names itself and echoes the peer address it saw,
//! and the small clients the end-to-end tests need (one UDP request, a loop of TCP connections).
//!
//! std only and thread-per-connection on purpose: it runs inside throwaway network namespaces,
//! must start instantly and must not be the thing a test ends up debugging. The one exception
//! is the raw socket `syn-flood` needs (module `raw`, socket2): std has no raw sockets.
#![forbid(unsafe_code)]

#[allow(
    dead_code,
    reason = "blob_bytes serves the tests; the peer streams with Blob"
)]
#[path = "../blob.rs"]
mod blob;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  oxlb-testpeer serve --name NAME [--port 8080] [--bind 0.0.0.0 | --bind ::] [--verbose]
  oxlb-testpeer udp-request ADDR:PORT PAYLOAD [--timeout-ms 2000]
  oxlb-testpeer tcp-loop ADDR:PORT --count N [--timeout-ms 2000] [--deadline-ms 120000]
  oxlb-testpeer syn-flood ADDR:PORT --count N [--rate 20000] [--ports 1024-32767] [--seed 1]
                [--deadline-ms 20000]   (ADDR in 198.18.0.0/15 only; needs CAP_NET_RAW)";

/// Largest blob served; a typo in a test must not make a backend stream for minutes.
const MAX_BLOB: usize = 1 << 30;
/// How long a connection may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("udp-request") => udp_request(&args[1..]),
        Some("tcp-loop") => tcp_loop(&args[1..]),
        Some("syn-flood") => syn_flood(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("oxlb-testpeer: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Command-line arguments split into positionals and `--flag value` options (`--verbose` alone).
struct Args {
    positional: Vec<String>,
    options: BTreeMap<String, String>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut options = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if name == "verbose" {
                    options.insert(name.to_string(), String::new());
                    continue;
                }
                let value = it
                    .next()
                    .ok_or(format!("--{name} needs a value\n{USAGE}"))?;
                options.insert(name.to_string(), value.clone());
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args {
            positional,
            options,
        })
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match self.options.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {v:?}")),
            None => default.ok_or(format!("--{name} is required\n{USAGE}")),
        }
    }

    fn addr(&self, index: usize) -> Result<SocketAddr, String> {
        let s = self
            .positional
            .get(index)
            .ok_or(format!("missing ADDR:PORT\n{USAGE}"))?;
        s.to_socket_addrs()
            .map_err(|e| format!("{s}: {e}"))?
            .next()
            .ok_or(format!("{s}: no address"))
    }
}

// ---------------------------------------------------------------------------------------------
// serve

fn serve(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args)?;
    let name: String = args.get("name", None)?;
    let port: u16 = args.get("port", Some(8080))?;
    let bind: String = args.get("bind", Some("0.0.0.0".to_string()))?;
    let verbose = args.options.contains_key("verbose");
    // `::` takes both families (IPv4 peers then arrive IPv4-mapped, shown as IPv4).
    let addr = match bind.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{bind}:{port}"),
    };

    let udp = UdpSocket::bind(&addr).map_err(|e| format!("udp bind {addr}: {e}"))?;
    let tcp = TcpListener::bind(&addr).map_err(|e| format!("tcp bind {addr}: {e}"))?;
    if verbose {
        eprintln!("{name}: serving http and udp on {addr}");
    }

    let udp_name = name.clone();
    thread::spawn(move || udp_echo(&udp, &udp_name, verbose));

    for stream in tcp.incoming() {
        match stream {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || {
                    if let Err(e) = handle_http(stream, &name, verbose) {
                        if verbose {
                            eprintln!("{name}: connection: {e}");
                        }
                    }
                });
            }
            // Accept errors (EMFILE, aborted handshakes) are transient; the loop goes on.
            Err(e) => {
                if verbose {
                    eprintln!("{name}: accept: {e}");
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn udp_echo(sock: &UdpSocket, name: &str, verbose: bool) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                if verbose {
                    eprintln!("{name}: udp recv: {e}");
                }
                continue;
            }
        };
        let mut reply = format!("{name} {} ", shown(peer)).into_bytes();
        reply.extend_from_slice(&buf[..n]);
        if verbose {
            eprintln!("{name}: udp {n} bytes from {peer}");
        }
        let _ = sock.send_to(&reply, peer);
    }
}

/// `peer` as answers show it: an IPv4-mapped address (a peer of a `::` socket) as IPv4.
fn shown(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

fn handle_http(stream: TcpStream, name: &str, verbose: bool) -> std::io::Result<()> {
    let peer = shown(stream.peer_addr()?);
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the header block so closing the socket does not turn into an RST with unread data.
    let mut header_bytes = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        header_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || header_bytes > 16 * 1024 {
            break;
        }
    }
    if verbose {
        eprintln!("{name}: {peer} {}", request_line.trim_end());
    }
    let mut out = stream;
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => {
            let body = format!("{name} {peer}\n");
            write_head(&mut out, "200 OK", body.len())?;
            out.write_all(body.as_bytes())?;
        }
        "/blob" => {
            let size = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("size="))
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n <= MAX_BLOB);
            let Some(size) = size else {
                let body = "size=N missing or too large\n";
                write_head(&mut out, "400 Bad Request", body.len())?;
                return out.write_all(body.as_bytes());
            };
            write_head(&mut out, "200 OK", size)?;
            let mut gen = blob::Blob::default();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                gen.fill(&mut chunk[..n]);
                out.write_all(&chunk[..n])?;
                left -= n;
            }
        }
        _ => {
            let body = "not found\n";
            write_head(&mut out, "404 Not Found", body.len())?;
            out.write_all(body.as_bytes())?;
        }
    }
    out.flush()
}

fn write_head(out: &mut TcpStream, status: &str, len: usize) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// udp-request

fn udp_request(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args)?;
    let addr = args.addr(0)?;
    let payload = args
        .positional
        .get(1)
        .ok_or(format!("missing PAYLOAD\n{USAGE}"))?;
    let timeout: u64 = args.get("timeout-ms", Some(2000))?;
    let any = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(any).map_err(|e| format!("udp bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(timeout.max(1))))
        .map_err(|e| e.to_string())?;
    sock.send_to(payload.as_bytes(), addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_millis(timeout);
    // A stray datagram from another source is ignored, still within the one deadline.
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => {
                println!("{}", String::from_utf8_lossy(&buf[..n]));
                return Ok(ExitCode::SUCCESS);
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    eprintln!("oxlb-testpeer: no reply from {addr} within {timeout} ms");
    Ok(ExitCode::FAILURE)
}

// ---------------------------------------------------------------------------------------------
// tcp-loop

fn tcp_loop(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args)?;
    let addr = args.addr(0)?;
    let count: u64 = args.get("count", None)?;
    let timeout = Duration::from_millis(args.get("timeout-ms", Some(2000))?);
    let deadline = Instant::now() + Duration::from_millis(args.get("deadline-ms", Some(120_000))?);

    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error: Option<String> = None;
    for i in 0..count {
        if Instant::now() >= deadline {
            failed += count - i;
            first_error.get_or_insert(format!("overall deadline reached after {i} connections"));
            break;
        }
        match one_get(addr, timeout) {
            Ok(name) => {
                ok += 1;
                *backends.entry(name).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("connection {}: {e}", i + 1));
            }
        }
    }

    println!("ok={ok} failed={failed}");
    let per_backend: Vec<String> = backends
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_string(k)))
        .collect();
    println!(
        "{{\"ok\":{ok},\"failed\":{failed},\"backends\":{{{}}},\"first_error\":{}}}",
        per_backend.join(","),
        first_error
            .as_deref()
            .map_or("null".to_string(), json_string)
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One connection: `GET /`, read to EOF, return the backend name (first word of the body).
fn one_get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("incomplete reply ({} bytes)", reply.len()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {:?}", head.lines().next()));
    }
    body.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or("empty body".to_string())
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// syn-flood

/// Bounds whatever the arguments say: this is a test tool, a typo must not flood for long.
const MAX_FLOOD_SYNS: u64 = 1_000_000;
const MAX_FLOOD_TIME: Duration = Duration::from_secs(60);
/// How long a full socket buffer (ENOBUFS) may hold up one SYN before it is given up.
const FLOOD_SEND_RETRY: Duration = Duration::from_millis(100);

/// Sends `--count` TCP SYNs from random source ports (and sequence numbers) of this host's
/// address toward ADDR:PORT, paced at `--rate` per second, through a raw socket. Nothing
/// answers them: the kernel of this host resets whatever SYN-ACK comes back, as it has no
/// such connection. Prints `sent=N failed=M`.
fn syn_flood(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args)?;
    let SocketAddr::V4(target) = args.addr(0)? else {
        return Err("syn-flood: IPv4 targets only".into());
    };
    // RFC 2544's benchmarking range, which the test topologies use and nothing else routes.
    if u32::from(*target.ip()) & 0xfffe_0000 != u32::from(Ipv4Addr::new(198, 18, 0, 0)) {
        return Err(format!(
            "syn-flood: {target} is outside 198.18.0.0/15, the test network"
        ));
    }
    let count: u64 = args.get("count", None)?;
    if count > MAX_FLOOD_SYNS {
        return Err(format!(
            "syn-flood: --count {count} exceeds {MAX_FLOOD_SYNS}"
        ));
    }
    let rate: u64 = args.get("rate", Some(20_000))?;
    if rate == 0 {
        return Err("syn-flood: --rate must be at least 1".into());
    }
    let ports: String = args.get("ports", Some("1024-32767".to_string()))?;
    let (first, last) = ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| 0 < *a && a <= b)
        .ok_or(format!("syn-flood: --ports {ports:?} is not FIRST-LAST"))?;
    let mut rng: u64 = args.get::<u64>("seed", Some(1))?.max(1);
    let deadline =
        Duration::from_millis(args.get("deadline-ms", Some(20_000))?).min(MAX_FLOOD_TIME);

    // The source address the kernel picks toward the target (a connected UDP socket knows it).
    let probe = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp bind: {e}"))?;
    probe
        .connect(target)
        .map_err(|e| format!("no route to {target}: {e}"))?;
    let IpAddr::V4(source) = probe.local_addr().map_err(|e| e.to_string())?.ip() else {
        return Err("syn-flood: no IPv4 source address".into());
    };
    let sock =
        raw::TcpSender::open().map_err(|e| format!("raw socket (needs CAP_NET_RAW): {e}"))?;

    let start = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..count {
        // Paced against the start, so a slow send does not lower the average rate.
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        let now = start.elapsed();
        if now >= deadline {
            failed += count - i;
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let r = next();
        let port = first + (r % (u64::from(last - first) + 1)) as u16;
        let segment = syn_segment(source, port, *target.ip(), target.port(), (r >> 32) as u32);
        let retry_until = Instant::now() + FLOOD_SEND_RETRY;
        loop {
            match sock.send_to(&segment, *target.ip()) {
                Ok(()) => {
                    sent += 1;
                    break;
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < retry_until =>
                {
                    thread::sleep(Duration::from_micros(200));
                }
                Err(_) => {
                    failed += 1;
                    break;
                }
            }
        }
    }
    println!("sent={sent} failed={failed}");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A 20-byte TCP header with only SYN set and its checksum complete.
fn syn_segment(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, seq: u32) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut sum: u32 = 6 + t.len() as u32;
    for word in src
        .octets()
        .chunks(2)
        .chain(dst.octets().chunks(2))
        .chain(t.chunks(2))
    {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    t[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    t
}

/// The raw socket `syn-flood` sends through: the kernel writes the IP header, we the TCP one.
mod raw {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// A raw IPv4 socket for TCP segments: the kernel adds the IP header.
    pub struct TcpSender(Socket);

    impl TcpSender {
        pub fn open() -> io::Result<TcpSender> {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).map(TcpSender)
        }

        pub fn send_to(&self, segment: &[u8], dst: Ipv4Addr) -> io::Result<()> {
            let addr = SockAddr::from(SocketAddrV4::new(dst, 0));
            self.0.send_to(segment, &addr).map(|_| ())
        }
    }
}
