//! `picket-agent enroll`: make a key here, pin the CA, trade the token and
//! a CSR for a certificate. The token is sent only after the server has
//! proven it holds a certificate issued by the pinned CA.

use std::path::PathBuf;

use picket_model::{Labels, validate_label, validate_name};
use picket_proto::v1::{EnrollRequest, enrollment_client::EnrollmentClient};
use picket_tls::{client, csr, files, fingerprint};
use tonic::Code;

use crate::identity;
use picket_config::agent::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    BadFingerprint(#[from] fingerprint::BadFingerprint),
    #[error("--name: {0}")]
    BadName(picket_model::NameError),
    #[error("--label: {0}")]
    BadLabel(picket_model::LabelError),
    #[error("already enrolled: {0} exists (remove the state folder to enroll again)")]
    AlreadyEnrolled(PathBuf),
    #[error(
        "CA fingerprint mismatch: expected {expected}, the server at {server} presented {presented}; the token was not sent"
    )]
    FingerprintMismatch {
        server: String,
        expected: String,
        presented: String,
    },
    #[error(transparent)]
    Connect(#[from] client::ClientError),
    #[error("enrollment refused: {0}")]
    Refused(String),
    #[error("enrollment failed: {0}")]
    Rpc(String),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error("cannot create {path}: {error}")]
    StateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] csr::CsrError),
}

pub struct EnrollOptions {
    pub server: picket_config::Servers,
    pub token: String,
    pub ca_fingerprint: String,
    pub name: Option<String>,
    pub labels: Labels,
    pub state_dir: PathBuf,
}

pub struct Enrolled {
    pub name: String,
    pub labels: Labels,
    pub config_path: PathBuf,
    pub config_written: bool,
}

pub async fn enroll(o: EnrollOptions) -> Result<Enrolled, EnrollError> {
    let pin = fingerprint::parse(&o.ca_fingerprint)?;
    let name = o.name.clone().unwrap_or_else(crate::inventory::hostname);
    validate_name(&name).map_err(EnrollError::BadName)?;
    for (k, v) in &o.labels {
        validate_label(k, v).map_err(EnrollError::BadLabel)?;
    }
    let paths = identity::Paths::new(&o.state_dir);
    if paths.cert.exists() {
        return Err(EnrollError::AlreadyEnrolled(paths.cert));
    }
    create_private_dir(&o.state_dir)?;

    let kc = csr::new_key_and_csr(&name)?;
    let (tls, report) = client::pinned_config(pin);
    let channel = match client::connect_any(o.server.as_slice(), tls).await {
        Ok((c, _)) => c,
        Err(e) => {
            return Err(match report.mismatch() {
                Some(presented) => EnrollError::FingerprintMismatch {
                    server: o.server.to_string(),
                    expected: o.ca_fingerprint.clone(),
                    presented,
                },
                None => e.into(),
            });
        }
    };
    let resp = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            token: o.token.clone(),
            name: name.clone(),
            labels: o.labels.clone().into_iter().collect(),
            csr_pem: kc.csr_pem,
        })
        .await
        .map_err(|s| match s.code() {
            Code::Unauthenticated | Code::AlreadyExists | Code::InvalidArgument => {
                EnrollError::Refused(s.message().to_string())
            }
            _ => EnrollError::Rpc(format!("{}: {}", s.code(), s.message())),
        })?
        .into_inner();

    files::write_secret(&paths.key, kc.key_pem.as_bytes())?;
    files::write_public(&paths.ca, resp.ca_pem.as_bytes())?;
    files::write_public(&paths.cert, resp.cert_pem.as_bytes())?;

    let labels: Labels = resp.labels.into_iter().collect();
    let config_path = o.state_dir.join("agent.toml");
    let config_written = !config_path.exists();
    if config_written {
        let cfg = AgentConfig {
            server: o.server,
            state_dir: std::path::absolute(&o.state_dir).unwrap_or(o.state_dir.clone()),
            name: resp.name.clone(),
            labels: labels.clone(),
            metrics_interval: std::time::Duration::from_secs(10),
            buffer_max_bytes: 256 * 1024 * 1024,
            max_line_bytes: 64 * 1024,
            sources: Vec::new(),
            exec: Default::default(),
        };
        files::write_public(&config_path, cfg.render().as_bytes())?;
    }
    Ok(Enrolled {
        name: resp.name,
        labels,
        config_path,
        config_written,
    })
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), EnrollError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| EnrollError::StateDir {
            path: dir.to_path_buf(),
            error,
        })
}
