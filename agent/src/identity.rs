//! The agent's certificate: loading it, knowing when to renew, and renewing
//! it (new key, new CSR) without operator action.
//!
//! A renewal writes `agent.key.next` then `agent.crt.next`, then renames the
//! key and then the certificate into place. [`Identity::load`] finishes or
//! discards a renewal that a crash interrupted, so the key and certificate
//! on disk always match.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use picket_proto::v1::{RenewRequest, agent_service_client::AgentServiceClient};
use picket_tls::{client, csr, files};
use rustls::ClientConfig;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Tls(#[from] client::ClientError),
    #[error("{path}: not a readable X.509 certificate")]
    BadCert { path: PathBuf },
    #[error(transparent)]
    Csr(#[from] csr::CsrError),
    #[error("renewal refused: {0}")]
    Renew(tonic::Status),
    #[error("the renewal's file writes did not finish: {0}")]
    Task(String),
}

/// Where the identity lives in the state folder.
#[derive(Clone)]
pub struct Paths {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    key_next: PathBuf,
    cert_next: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Paths {
            key: dir.join("agent.key"),
            cert: dir.join("agent.crt"),
            ca: dir.join("ca.crt"),
            key_next: dir.join("agent.key.next"),
            cert_next: dir.join("agent.crt.next"),
        }
    }
}

struct Current {
    config: Arc<ClientConfig>,
    not_before: SystemTime,
    not_after: SystemTime,
}

pub struct Identity {
    paths: Paths,
    current: RwLock<Arc<Current>>,
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let paths = Paths::new(dir);
        recover(&paths)?;
        let current = read_current(&paths)?;
        Ok(Identity {
            paths,
            current: RwLock::new(Arc::new(current)),
        })
    }

    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The TLS config to dial the control plane with.
    pub fn client_config(&self) -> ClientConfig {
        (*self.current().config).clone()
    }

    /// When to renew: two thirds into the certificate's life from its
    /// issue (its start is backdated: picket_tls::skew), by the control
    /// plane's clock.
    pub fn renew_at(&self) -> SystemTime {
        let c = self.current();
        let issued = picket_tls::skew::issued(c.not_before, c.not_after);
        let life = c.not_after.duration_since(issued).unwrap_or(Duration::ZERO);
        issued + life * 2 / 3
    }

    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// Gets a new certificate for a new key over `channel`, writes both,
    /// and switches to them.
    pub async fn renew(&self, channel: Channel, name: &str) -> Result<(), IdentityError> {
        let kc = csr::new_key_and_csr(name)?;
        let resp = AgentServiceClient::new(channel)
            .renew(RenewRequest {
                csr_pem: kc.csr_pem,
            })
            .await
            .map_err(IdentityError::Renew)?
            .into_inner();
        // Written and fsynced on the blocking pool: the agent's runtime
        // has one thread, which its heartbeats and step output share.
        let p = self.paths.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            files::write_secret(&p.key_next, kc.key_pem.as_bytes())?;
            files::write_public(&p.cert_next, resp.cert_pem.as_bytes())?;
            recover(&p)?;
            read_current(&p)
        })
        .await
        .map_err(|e| IdentityError::Task(e.to_string()))??;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        Ok(())
    }
}

/// Completes a renewal whose `.next` files were fully written, or drops one
/// that was cut short before its certificate arrived.
fn recover(p: &Paths) -> Result<(), IdentityError> {
    files::KeyPair {
        key: p.key.clone(),
        cert: p.cert.clone(),
        key_next: p.key_next.clone(),
        cert_next: p.cert_next.clone(),
    }
    .recover()?;
    Ok(())
}

fn read_current(p: &Paths) -> Result<Current, IdentityError> {
    let ca = files::read_certs(&p.ca)?;
    let certs = files::read_certs(&p.cert)?;
    let key = files::read_key(&p.key)?;
    let (not_before, not_after) =
        validity(certs[0].as_ref()).ok_or_else(|| IdentityError::BadCert {
            path: p.cert.clone(),
        })?;
    let config = client::mtls_config(&ca, certs, key)?;
    Ok(Current {
        config: Arc::new(config),
        not_before,
        not_after,
    })
}

fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    let t = |ts: i64| -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).ok()?))
    };
    Some((t(v.not_before.timestamp())?, t(v.not_after.timestamp())?))
}
