//! CA files in the data folder and certificate issuing.
//!
//! Layout: `ca.crt`, `ca.key` (0600), `server.crt` (server certificate then
//! CA, so that agents can pin the CA), `server.key` (0600), `admin.crt`,
//! `admin.key` (0600). Keys are ECDSA P-256.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use picket_tls::{files, fingerprint};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a CA already exists at {0}; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot create {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Csr(#[from] picket_tls::csr::CsrError),
    #[error("bad certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    #[error("bad --san {0:?}: {1}")]
    BadSan(String, String),
    #[error("the server certificate in {path} cannot be used: {detail}")]
    ServerCert { path: PathBuf, detail: String },
    #[error("cannot write {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What a certificate is for: the organisational unit in its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    Agent,
    User,
    Server,
}

impl SubjectKind {
    pub fn unit(self) -> &'static str {
        match self {
            SubjectKind::Agent => "agent",
            SubjectKind::User => "user",
            SubjectKind::Server => "server",
        }
    }
}

pub struct Issued {
    pub cert_pem: String,
    pub serial_hex: String,
    pub not_after: SystemTime,
}

pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub struct InitReport {
    pub fingerprint: String,
    pub ca_cert: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

/// Lifetime of the CA and of the server and first admin certificates.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
const ADMIN_LIFETIME: Duration = Duration::from_secs(365 * 86400);
/// Allowance for clocks that run behind the control plane's.
use picket_tls::skew::BACKDATE;

pub(super) fn dn(cn: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "picket");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, cn);
    dn
}

/// A DNS name as a SAN: dot-separated labels of letters, digits and '-',
/// with an optional leading `*.` wildcard.
pub(super) fn is_dns_name(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub(super) fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    // Positive, and no leading zero byte: DER drops it, so the serial read
    // back from the certificate would differ from the one issued (1 in 256).
    b[0] = (b[0] & 0x7f).max(1);
    SerialNumber::from_slice(&b)
}

pub(super) fn validity(params: &mut CertificateParams, lifetime: Duration) -> SystemTime {
    let now = picket_clock::now();
    let not_after = now + lifetime;
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(not_after);
    not_after
}

/// `dir` made (0700: it holds the CA key and the store, outside systemd
/// too, where no StateDirectoryMode applies) and holding no CA; the
/// server certificate's names (loopback always, plus `sans`) checked
/// before anything is written.
fn prepare(dir: &Path, sans: &[String]) -> Result<Vec<String>, PkiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| PkiError::CreateDir {
            path: dir.to_path_buf(),
            error,
        })?;
    for existing in ["ca.crt", "ca.key"] {
        let p = dir.join(existing);
        if p.exists() {
            return Err(PkiError::Exists(p));
        }
    }
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(sans.iter().cloned());
    super::server::check_names(&names)?;
    Ok(names)
}

/// Creates the CA, the server certificate and the first admin bundle in
/// `dir`. Refuses if a CA is already there.
pub fn init(dir: &Path, sans: &[String]) -> Result<InitReport, PkiError> {
    let names = prepare(dir, sans)?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // A unique name, so that two Picket CAs are never mistaken for each
    // other by name when a certificate is checked against the wrong one.
    let mut tag = [0u8; 4];
    rand::rng().fill_bytes(&mut tag);
    params.distinguished_name = dn(&format!("Picket CA {}", hex::encode(tag)), "ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, CA_LIFETIME);
    let ca_cert = params.self_signed(&ca_key)?;
    files::write_secret(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    files::write_public(&dir.join("ca.crt"), ca_cert.pem().as_bytes())?;
    let ca = Ca::load(dir)?;

    super::server::issue(dir, &ca, &names)?;

    // First admin bundle, made here since there is no one yet to sign a CSR.
    let admin = picket_tls::csr::new_key_and_csr("admin")?;
    let issued = ca.issue(&admin.csr_pem, "admin", SubjectKind::User, ADMIN_LIFETIME)?;
    files::write_secret(&dir.join("admin.key"), admin.key_pem.as_bytes())?;
    files::write_public(&dir.join("admin.crt"), issued.cert_pem.as_bytes())?;

    Ok(InitReport {
        fingerprint: ca.fingerprint(),
        ca_cert: dir.join("ca.crt"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
    })
}

/// A cluster replica's folder from the cluster's CA (read from etcd by
/// `picket-control join`): the CA's files, and a server certificate of
/// this replica's own for loopback and `sans`. No admin bundle: the
/// cluster's is the one `init` made. Returns the CA's fingerprint.
pub fn join(
    dir: &Path,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
) -> Result<String, PkiError> {
    let names = prepare(dir, sans)?;
    files::write_secret(&dir.join("ca.key"), ca_key_pem.as_bytes())?;
    files::write_public(&dir.join("ca.crt"), ca_cert_pem.as_bytes())?;
    let ca = Ca::load(dir)?;
    super::server::issue(dir, &ca, &names)?;
    Ok(ca.fingerprint())
}

impl Ca {
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem = files::read(&cert_path)?;
        let der = files::parse_certs(&cert_pem, &cert_path)?
            .into_iter()
            .next()
            .ok_or(files::FileError::NoCertificate { path: cert_path })?;
        let key =
            KeyPair::from_pem(&files::read(&key_path)?).map_err(|e| files::FileError::BadKey {
                path: key_path.clone(),
                detail: e.to_string(),
            })?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Ca {
            cert_pem,
            cert_der: der.as_ref().to_vec(),
            issuer,
        })
    }

    /// Signs `params` for `key` (the server certificate).
    pub(super) fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, PkiError> {
        Ok(params.signed_by(key, &self.issuer)?)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn fingerprint(&self) -> String {
        fingerprint::of_der(&self.cert_der)
    }

    /// Signs the public key of `csr_pem` into a client certificate for
    /// `name`. Only the CSR's key is used: subject, names and usages come
    /// from the control plane, never from the request.
    pub fn issue(
        &self,
        csr_pem: &str,
        name: &str,
        kind: SubjectKind,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(name, kind.unit());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        p.serial_number = Some(serial);
        let not_after = validity(&mut p, lifetime);
        let cert = p.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial_hex,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_owner_only_keys_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let r = init(dir.path(), &["picket.example".into(), "10.0.1.50".into()]).unwrap();
        assert!(r.fingerprint.starts_with("sha256:") && r.fingerprint.len() == 71);
        for key in ["ca.key", "server.key", "admin.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let chain = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        // A data folder init makes is the owner's alone.
        let fresh = dir.path().join("new/data");
        init(&fresh, &[]).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(matches!(init(dir.path(), &[]), Err(PkiError::Exists(_))));
        let ca = Ca::load(dir.path()).unwrap();
        assert_eq!(ca.fingerprint(), r.fingerprint);
        assert!(matches!(
            ca.issue("garbage", "x", SubjectKind::Agent, Duration::from_secs(60)),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn bad_san_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["bad name", "a..b", "-x.example", "x\u{0}"] {
            let e = init(dir.path(), &[bad.into()]).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("--san")),
                "{bad}: {e:?}"
            );
        }
        assert!(is_dns_name("picket.example.com") && is_dns_name("*.example.com"));
    }
}
