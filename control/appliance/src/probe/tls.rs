//! The TLS client of the `https` probe: rustls on ring, accepting whatever certificate the
//! endpoint presents.
//!
//! Deliberately unverified, and for health probes only: backends behind a load balancer
//! usually serve self-signed certificates or ones issued for the service's name, never for the
//! endpoint address probed, and loxilb does not verify them either. A probe asks "does this
//! endpoint complete a TLS handshake and answer 200", not "is it who it claims to be"; it sends
//! no secrets and its answer only decides whether new flows go there. Never use this client
//! for anything that carries data.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use tokio_rustls::TlsConnector;

/// Accepts every certificate chain (see the module doc for why), but still checks the
/// handshake signature against the certificate's key, so the handshake itself is a real one.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The probe's TLS client, built once: building it compiles the provider's tables.
pub fn connector() -> TlsConnector {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        // Named explicitly rather than the process default, which is ambiguous (and panics)
        // when another crate in the build enables a second provider.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth();
        Arc::new(config)
    });
    TlsConnector::from(config.clone())
}

/// The server name of a probe to `ip`: the address itself. rustls sends no SNI for an
/// address (RFC 6066 allows only host names there), which is what a backend serving its
/// default certificate expects of a client that knows no name.
pub fn server_name(ip: IpAddr) -> ServerName<'static> {
    ServerName::from(ip)
}
