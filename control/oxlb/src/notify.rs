//! Tells the service manager when oxlb is ready and when it is stopping (systemd's `Type=notify`
//! protocol: `READY=1` / `STOPPING=1` datagrams to the socket named by `$NOTIFY_SOCKET`); does
//! nothing when oxlb was not started by one.
//!
//! A failed notification is logged, never fatal: systemd then reports the start as timed out,
//! which says more than an oxlb that refuses to run outside the unit it was written for.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

const ENV: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// systemd also knows `vsock:` addresses; oxlb only ever runs on the host itself.
    #[error("{ENV}={0:?} is neither an absolute path nor an abstract socket name (@NAME); not notifying the service manager")]
    Unsupported(OsString),
    #[error("cannot notify the service manager at {ENV}={socket:?}: {source}")]
    Send { socket: OsString, source: io::Error },
}

/// All of oxlb serves: XDP attached, workers started, saved and configured services applied,
/// the API socket listening. `status` is what `systemctl status oxlb` shows.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// oxlb has begun to stop (the API is closed; the XDP program is detached next).
pub fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let socket = std::env::var_os(ENV);
    if let Err(e) = send(socket.as_deref(), state) {
        tracing::warn!("{e}");
    }
}

/// Sends `state` to `socket` (a `$NOTIFY_SOCKET` value). `Ok(false)`: there is no service
/// manager to tell (unset or empty).
fn send(socket: Option<&OsStr>, state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket),
        // Abstract names are bytes after a leading NUL; systemd writes that NUL as '@'.
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => return Err(NotifyError::Unsupported(socket.to_owned())),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    match sent {
        Ok(_) => Ok(true),
        Err(source) => Err(NotifyError::Send {
            socket: socket.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    fn unique(what: &str) -> String {
        format!("oxlb-notify-test-{what}-{}", std::process::id())
    }

    #[test]
    fn ready_reaches_a_socket_named_by_its_path() {
        let dir = std::env::temp_dir().join(unique("path"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");

        let sent = send(Some(path.as_os_str()), "READY=1\nSTATUS=serving lb0");
        let got = receive(&listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(sent.expect("sent"));
        assert_eq!(got, "READY=1\nSTATUS=serving lb0");
    }

    #[test]
    fn stopping_reaches_an_abstract_socket_written_with_an_at_sign() {
        let name = unique("abstract");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");

        let env_value = OsString::from(format!("@{name}"));
        assert!(send(Some(&env_value), "STOPPING=1").expect("sent"));
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn without_a_service_manager_nothing_is_sent_and_nothing_fails() {
        assert!(!send(None, "READY=1").expect("no error"));
        assert!(!send(Some(OsStr::new("")), "READY=1").expect("no error"));
    }

    #[test]
    fn a_relative_or_vsock_address_is_refused_by_name() {
        for bad in ["run/notify", "vsock:2:1234"] {
            let e = send(Some(OsStr::new(bad)), "READY=1").unwrap_err();
            assert!(matches!(e, NotifyError::Unsupported(_)), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(unique("nobody"));
        let e = send(Some(path.as_os_str()), "READY=1").unwrap_err();
        assert!(matches!(e, NotifyError::Send { .. }), "{e}");
        assert!(e.to_string().contains(&unique("nobody")), "{e}");
    }
}
