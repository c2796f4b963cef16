//! `oxlb-perf-httpd`: the HTTP/1.1 server behind the load balancer in the e2e benchmark.
//!
//! The test peer (`oxlb-testpeer serve`) answers every request with `Connection: close` and
//! spawns a thread per connection, so it cannot serve a keep-alive benchmark, and its spawn
//! cost would dominate a connection-rate one. This server keeps a connection open unless the
//! request asks for `Connection: close`, and serves from a fixed pool of threads that all block
//! in `accept` on one listener, so a new connection costs no thread creation.
//!
//! std only, GET without a body only: it exists to be cheap and predictable, not general.
#![forbid(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

const USAGE: &str = "usage: oxlb-perf-httpd [--port 8080] [--threads 64]";

/// Larger request heads are refused: wrk's are about 60 bytes.
const MAX_HEAD: usize = 16 * 1024;
/// An idle keep-alive connection is closed after this, so a vanished client frees its thread.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Small on purpose: the benchmark measures packets and connections, not bandwidth.
const BODY: &str = "oxlb-perf-httpd\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|(port, threads)| serve(port, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxlb-perf-httpd: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<(u16, usize), String> {
    let (mut port, mut threads) = (8080u16, 64usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--port" => port = value.parse().map_err(|e| format!("--port {value}: {e}"))?,
            "--threads" => {
                threads = value
                    .parse()
                    .map_err(|e| format!("--threads {value}: {e}"))?
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if !(1..=1024).contains(&threads) {
        return Err(format!("--threads must be 1..=1024, not {threads}"));
    }
    Ok((port, threads))
}

/// Binds, then runs `threads` accept loops on the one listener; never returns unless binding
/// or spawning fails.
fn serve(port: u16, threads: usize) -> Result<(), String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind 0.0.0.0:{port}: {e}"))?;
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = listener
            .try_clone()
            .map_err(|e| format!("listener clone: {e}"))?;
        let handle = thread::Builder::new()
            .name(format!("httpd-{i}"))
            .spawn(move || accept_loop(&listener))
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(handle);
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            // A connection's I/O errors (reset, timeout) only end that connection.
            Ok((stream, _)) => {
                let _ = connection(stream);
            }
            // EMFILE and aborted handshakes are transient; back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves requests on one connection until the client closes, asks to close, or misbehaves.
fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        // A client may pipeline: a complete head may already be buffered.
        let end = loop {
            if let Some(end) = head_end(&buf[..filled]) {
                break end;
            }
            if filled == buf.len() {
                return respond(&mut stream, "431 Request Header Fields Too Large", true);
            }
            match stream.read(&mut buf[filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let head = Head::parse(&buf[..end]);
        if head.has_body {
            // Bodies are never read, so the stream could not be resynchronised.
            return respond(&mut stream, "400 Bad Request", true);
        }
        respond(&mut stream, "200 OK", head.close)?;
        if head.close {
            return Ok(());
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}

/// Index just past the `\r\n\r\n` ending the first request head, if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What the server needs from a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    close: bool,
    has_body: bool,
}

impl Head {
    fn parse(head: &[u8]) -> Head {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        // HTTP/1.0 closes by default; wrk speaks 1.1.
        let mut close = !request_line.ends_with("HTTP/1.1");
        let mut has_body = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close")
                    || (close && !value.eq_ignore_ascii_case("keep-alive"));
            } else if name.eq_ignore_ascii_case("content-length") {
                has_body |= value != "0";
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                has_body = true;
            }
        }
        Head { close, has_body }
    }
}

/// One write per response, so a response is one segment and Nagle never delays it.
fn respond(stream: &mut TcpStream, status: &str, close: bool) -> std::io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.write_all(response.as_bytes())?;
    if close {
        // The server closes first, so TIME_WAIT stays on the server and the client's ports
        // are free for new connections at once.
        let _ = stream.shutdown(Shutdown::Write);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_the_default_for_http_1_1_and_close_is_honoured() {
        let keep = Head::parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            keep,
            Head {
                close: false,
                has_body: false
            }
        );
        let close = Head::parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n");
        assert!(close.close);
        let old = Head::parse(b"GET / HTTP/1.0\r\n\r\n");
        assert!(old.close);
        let old_keep = Head::parse(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert!(!old_keep.close);
    }

    #[test]
    fn a_request_with_a_body_is_flagged_so_it_can_be_refused() {
        assert!(Head::parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
        assert!(!Head::parse(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(Head::parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
    }

    #[test]
    fn the_head_ends_after_the_first_blank_line_even_when_a_second_request_follows() {
        let two = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(two), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn options_default_to_port_8080_and_64_threads() {
        assert_eq!(parse(&[]), Ok((8080, 64)));
        let args: Vec<String> = ["--port", "81", "--threads", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse(&args), Ok((81, 4)));
        assert!(parse(&["--threads".to_string(), "0".to_string()]).is_err());
    }
}
