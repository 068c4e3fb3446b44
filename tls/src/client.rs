//! Client side TLS: an mTLS config (Picket CA as the only root, a client
//! certificate), a pinned-CA config for enrollment, and a tonic `Channel`
//! that runs over either.
//!
//! tonic's own TLS cannot take a custom certificate verifier, so the channel
//! is built on a connector of our own: TCP, then a rustls handshake, then
//! HTTP/2 over it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::fingerprint;
use crate::skew::{Lenient, allowing};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad CA certificate: {0}")]
    BadCa(rustls::Error),
    #[error("bad client certificate or key: {0}")]
    BadIdentity(rustls::Error),
    #[error("server address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("no control plane answered: {0}")]
    NoneAnswered(String),
}

/// A config that trusts only `ca` and presents `certs`/`key` (allowing
/// for a clock behind the server's: [`crate::skew`]).
pub fn mtls_config(
    ca: &[CertificateDer<'static>],
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(ClientError::BadCa)?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::provider())
        .build()
        .map_err(|e| ClientError::BadCa(rustls::Error::General(e.to_string())))?;
    let mut cfg = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientError::BadCa)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient(verifier)))
        .with_client_auth_cert(certs, key)
        .map_err(ClientError::BadIdentity)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Checks, before connecting, that the client certificate chains to `ca`
/// and is within its validity, as the server will: a foreign or expired
/// certificate then gets a clear local error instead of a closed connection
/// (in TLS 1.3 the server's verdict arrives after the handshake, and its
/// alert is often lost in the close).
pub fn check_client_cert(
    ca: &[CertificateDer<'static>],
    certs: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::provider(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let (leaf, rest) = certs
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    // The server checks with its own clock; a certificate it issued just
    // now may start after ours.
    allowing(UnixTime::now(), |at| {
        verifier.verify_client_cert(leaf, rest, at)
    })?;
    Ok(())
}

/// What the pinned verifier saw, so that a mismatch can be explained in one
/// line ("expected X, server presented Y") rather than as a handshake error.
#[derive(Debug, Default, Clone)]
pub struct PinReport(Arc<Mutex<Option<String>>>);

impl PinReport {
    /// The fingerprint of the CA the server presented when it did not match.
    pub fn mismatch(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// A config with no client certificate that trusts the server only if its
/// chain carries a CA whose SHA-256 fingerprint is `pin`, and the server
/// certificate verifies against that CA (name, dates allowing for a clock
/// behind: [`crate::skew`], signature).
pub fn pinned_config(pin: [u8; 32]) -> (ClientConfig, PinReport) {
    let report = PinReport::default();
    let verifier = PinnedCa {
        pin,
        provider: crate::provider(),
        report: report.clone(),
    };
    let mut cfg = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient(Arc::new(verifier))))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    (cfg, report)
}

#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    report: PinReport,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint::digest(c.as_ref()) == self.pin)
        else {
            let presented = intermediates.last().unwrap_or(end_entity).as_ref().to_vec();
            if let Ok(mut g) = self.report.0.lock() {
                *g = Some(fingerprint::of_der(&presented));
            }
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// Splits `HOST:PORT` (or `[V6]:PORT`) into the TLS server name and the
/// address to dial.
fn split_addr(addr: &str) -> Result<(ServerName<'static>, String), ClientError> {
    let bad = || ClientError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let name = ServerName::try_from(host.to_string()).map_err(|_| bad())?;
    Ok((name, addr.to_string()))
}

/// Connects to one of `addrs` (tried in a random order, so that many
/// clients given the same list spread over it) and says which answered.
/// Fails with every address's error when none does.
pub async fn connect_any<S: AsRef<str>>(
    addrs: &[S],
    config: ClientConfig,
) -> Result<(Channel, String), ClientError> {
    let mut order: Vec<&str> = addrs.iter().map(AsRef::as_ref).collect();
    order.shuffle(&mut rand::rng());
    let mut failed = Vec::new();
    for a in order {
        match connect(a, config.clone()).await {
            Ok(c) => return Ok((c, a.to_string())),
            Err(e) => failed.push(e),
        }
    }
    Err(match <[ClientError; 1]>::try_from(failed) {
        Ok([one]) => one,
        Err(all) => ClientError::NoneAnswered(
            all.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    })
}

/// Dials `dial` (`HOST:PORT`): each of the host's addresses in a random
/// order (a name with several records spreads its clients), until one
/// accepts.
async fn dial_any(dial: &str) -> std::io::Result<tokio::net::TcpStream> {
    let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(dial).await?.collect();
    addrs.shuffle(&mut rand::rng());
    // Each address gets a share of the channel's connect timeout.
    let each = Duration::from_secs(10) / u32::try_from(addrs.len().max(1)).unwrap_or(1);
    let mut last = None;
    for a in addrs {
        match tokio::time::timeout(each.max(Duration::from_secs(2)), TcpStream::connect(a)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {a} timed out"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{dial} has no address"),
        )
    }))
}

/// Connects a gRPC channel to `addr` over TLS with `config`. Fails fast,
/// with the TLS or socket error in the message, when the server cannot be
/// reached or the handshake fails.
pub async fn connect(addr: &str, config: ClientConfig) -> Result<Channel, ClientError> {
    let (server_name, dial) = split_addr(addr)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://{dial}"))
        .map_err(|_| ClientError::BadAddress(addr.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let svc = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let dial = dial.clone();
        async move {
            let tcp = dial_any(&dial).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(svc)
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_string(),
            detail: error_chain(&e),
        })
}

/// Joins an error and its sources into one line, skipping repeats, so that
/// "transport error" becomes "transport error: invalid peer certificate: ...".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(split_addr("127.0.0.1:7443").is_ok());
        assert!(split_addr("localhost:7443").is_ok());
        assert!(split_addr("[::1]:7443").is_ok());
        assert!(split_addr("localhost").is_err());
        assert!(split_addr(":7443").is_err());
        assert!(split_addr("host:port").is_err());
    }
}
