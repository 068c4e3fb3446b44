//! Server side TLS: the control plane's rustls config. Client certificates
//! are verified against the Picket CA when presented, and optional, since
//! enrollment comes without one; every other service refuses such callers
//! after the handshake.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad CA certificate: {0}")]
    BadCa(String),
    #[error("bad server certificate or key: {0}")]
    BadIdentity(rustls::Error),
}

/// A config that presents `chain`/`key`, offers HTTP/2, and verifies a
/// client certificate, when one is presented, against `ca`.
pub fn config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, ServerError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| ServerError::BadCa(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::BadCa(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::BadCa(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(ServerError::BadIdentity)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
