//! Server side TLS: the control plane's rustls config. Client certificates
//! are verified against the Picket CA when presented, and optional, since
//! enrollment comes without one; every other service refuses such callers
//! after the handshake.

use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad CA certificate: {0}")]
    BadCa(String),
    #[error("bad server certificate or key: {0}")]
    BadIdentity(rustls::Error),
}

/// The certificate the server presents, replaceable while it serves: a
/// renewed certificate is presented from the next handshake on, and
/// connections already open keep theirs.
#[derive(Debug)]
pub struct Identity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Identity {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, ServerError> {
        Ok(Identity {
            current: RwLock::new(Arc::new(certified(chain, key)?)),
        })
    }

    /// Presents `chain`/`key` from the next handshake on. A key that does
    /// not match the certificate is refused and the old pair stays.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), ServerError> {
        let new = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The leaf certificate presented now.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert.first().cloned()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, ServerError> {
    // Checks that the key is the certificate's.
    CertifiedKey::from_der(chain, key, &crate::provider()).map_err(ServerError::BadIdentity)
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A config that presents `identity`, offers HTTP/2, and verifies a
/// client certificate, when one is presented, against `ca`.
pub fn config(
    ca: &[CertificateDer<'static>],
    identity: Arc<Identity>,
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
        .with_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
