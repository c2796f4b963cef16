//! HTTPS for the REST API: the rustls server configuration from `--api-tls-cert` and
//! `--api-tls-key` (PEM), and a listener that hands axum only connections whose TLS handshake
//! completed.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client has this long to finish its handshake; one that stalls cannot hold a slot longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond it are closed at once, so a flood of
/// half-open connections costs bounded memory.
const MAX_HANDSHAKES: usize = 256;

/// Why the API's certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the API's TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block, or a broken one.
    #[error("the API's TLS certificate file {path} holds no PEM certificate ({detail}); give the server certificate, then any intermediates, as `-----BEGIN CERTIFICATE-----` blocks")]
    NoCertificate { path: PathBuf, detail: String },
    /// The key file holds no PEM private key.
    #[error("the API's TLS key file {path} holds no PEM private key ({detail}); give an unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key")]
    NoKey { path: PathBuf, detail: String },
    /// rustls refused the pair: the key does not belong to the certificate, or an
    /// unsupported algorithm.
    #[error("the API's TLS certificate {cert} and key {key} cannot be used together: {source}")]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The server configuration for the certificate chain in `cert` and the key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("certificate", cert)?;
    let no_cert = |detail: String| TlsError::NoCertificate {
        path: cert.to_owned(),
        detail,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(no_cert("none found".into()));
    }
    let key_pem = read("key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let invalid = |source| TlsError::Invalid {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    // The provider is named rather than taken from the process default, which is ambiguous
    // (and a panic) when another dependency enables a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(invalid)?;
    // The API server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// Accepts TCP connections and yields them once their TLS handshake completed. Handshakes
/// run concurrently (a slow client delays no one else) and are bounded in time and number.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            log::warn!("API: {MAX_HANDSHAKES} TLS handshakes in progress; closing the connection from {peer}");
            return;
        }
        let accept = self.acceptor.accept(stream);
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    // Plain HTTP to the HTTPS port ends here too; it is the client's mistake.
                    log::debug!("API: TLS handshake with {peer} failed: {e}");
                    None
                }
                Err(_) => {
                    log::debug!("API: TLS handshake with {peer} took over {HANDSHAKE_TIMEOUT:?}");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as axum's graceful shutdown needs: both awaited futures are, and pending
    // handshakes live in `self`, not in this future.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(e) => {
                        // Out of file descriptors and the like: give the system a moment
                        // instead of spinning, as axum's own TCP listener does.
                        log::warn!("API: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
