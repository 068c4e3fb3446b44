//! The control plane's own certificate (`server.crt`, the leaf then the
//! CA; `server.key`): issued by `init`, renewed by `picket-control
//! rotate-server-cert` or by the running control plane itself when fewer
//! than [`RENEW_BEFORE`] remain, and presented from the next handshake on
//! once reloaded (SIGHUP, or at once after an automatic renewal). Agents
//! pin the CA, not this certificate, so a renewal needs nothing of them.
//!
//! A renewal writes `server.next.key` and `server.next.crt` (each
//! atomically), then renames the key, then the certificate;
//! [`finish_interrupted`] completes or drops a renewal that a crash cut
//! short, so the pair in place always matches.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use picket_tls::files;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::ca::{Ca, PkiError, SubjectKind, dn, is_dns_name, random_serial, validity};

/// How long a server certificate is valid.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86400);
/// The running control plane renews its certificate when fewer than this
/// remain.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

const KEY: &str = "server.key";
const CERT: &str = "server.crt";
const NEXT_KEY: &str = "server.next.key";
const NEXT_CERT: &str = "server.next.crt";

/// What a server certificate says of itself.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub serial_hex: String,
    pub not_after: SystemTime,
    /// Its DNS names and IP addresses.
    pub names: Vec<String>,
}

fn san(n: &str) -> Result<SanType, PkiError> {
    match n.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) if !is_dns_name(n) => Err(PkiError::BadSan(
            n.into(),
            "not an IP address or a DNS name".into(),
        )),
        Err(_) => n
            .to_string()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e: rcgen::Error| PkiError::BadSan(n.into(), e.to_string())),
    }
}

/// Checks `names` (every one must be a DNS name or an IP address) before
/// anything is written.
pub fn check_names(names: &[String]) -> Result<(), PkiError> {
    names.iter().try_for_each(|n| san(n).map(drop))
}

/// Issues a certificate for `names` with a new key and puts it in place
/// in `dir`, owned as `dir` is (so that a root `rotate-server-cert` leaves
/// files the `picket` user can read).
pub fn issue(dir: &Path, ca: &Ca, names: &[String]) -> Result<ServerCert, PkiError> {
    let sans = names
        .iter()
        .map(|n| san(n))
        .collect::<Result<Vec<_>, _>>()?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("picket-control", SubjectKind::Server.unit());
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let serial = random_serial();
    let serial_hex = hex::encode(serial.to_bytes());
    p.serial_number = Some(serial);
    let not_after = validity(&mut p, SERVER_LIFETIME);
    let cert = ca.sign(&p, &key)?;
    let chain = format!("{}{}", cert.pem(), ca.cert_pem());
    files::write_secret(&dir.join(NEXT_KEY), key.serialize_pem().as_bytes())?;
    files::write_public(&dir.join(NEXT_CERT), chain.as_bytes())?;
    own_like_dir(dir, &[NEXT_KEY, NEXT_CERT])?;
    pair(dir).commit()?;
    Ok(ServerCert {
        serial_hex,
        not_after,
        names: names.to_vec(),
    })
}

/// Renews the certificate in `dir` for the names it has plus `extra`.
pub fn rotate(dir: &Path, ca: &Ca, extra: &[String]) -> Result<ServerCert, PkiError> {
    check_names(extra)?;
    finish_interrupted(dir)?;
    let mut names = current(dir)?.names;
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    issue(dir, ca, &names)
}

/// Completes a renewal that a crash interrupted, or drops it if its new
/// certificate was not written yet.
pub fn finish_interrupted(dir: &Path) -> Result<(), PkiError> {
    Ok(pair(dir).recover()?)
}

/// The server's key and certificate, and their `.next` files.
fn pair(dir: &Path) -> files::KeyPair {
    files::KeyPair {
        key: dir.join(KEY),
        cert: dir.join(CERT),
        key_next: dir.join(NEXT_KEY),
        cert_next: dir.join(NEXT_CERT),
    }
}

/// The certificate in place: its serial, end of validity and names.
pub fn current(dir: &Path) -> Result<ServerCert, PkiError> {
    let path = dir.join(CERT);
    let der = files::read_certs(&path)?
        .into_iter()
        .next()
        .ok_or(files::FileError::NoCertificate { path: path.clone() })?;
    describe(&der).ok_or_else(|| PkiError::ServerCert {
        path,
        detail: "not an X.509 certificate".into(),
    })
}

/// What `der` says of itself.
pub fn describe(der: &[u8]) -> Option<ServerCert> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(ServerCert {
        serial_hex: hex::encode(cert.raw_serial()),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        names,
    })
}

/// The chain and key in place, for the TLS identity, after finishing a
/// rotation a crash interrupted.
pub fn load(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    finish_interrupted(dir)?;
    Ok((
        files::read_certs(&dir.join(CERT))?,
        files::read_key(&dir.join(KEY))?,
    ))
}

/// Whether a certificate valid until `not_after` is due for renewal at `now`.
pub fn due(not_after: SystemTime, now: SystemTime) -> bool {
    not_after
        .duration_since(now)
        .map_or(true, |left| left < RENEW_BEFORE)
}

fn io(dir: &Path, name: &str, error: std::io::Error) -> PkiError {
    PkiError::Io {
        path: dir.join(name),
        error,
    }
}

fn own_like_dir(dir: &Path, names: &[&str]) -> Result<(), PkiError> {
    let owner = std::fs::metadata(dir).map_err(|e| io(dir, "", e))?;
    for n in names {
        let p = dir.join(n);
        let m = std::fs::metadata(&p).map_err(|e| io(dir, n, e))?;
        if (m.uid(), m.gid()) != (owner.uid(), owner.gid()) {
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid()))
                .map_err(|e| io(dir, n, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_names_adds_new_ones_and_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        super::super::init(dir.path(), &["picket.example".into(), "10.0.1.50".into()]).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let before = current(dir.path()).unwrap();
        let old_key = std::fs::read(dir.path().join(KEY)).unwrap();
        for n in [
            "localhost",
            "127.0.0.1",
            "::1",
            "picket.example",
            "10.0.1.50",
        ] {
            assert!(
                before.names.iter().any(|x| x == n),
                "{n} in {:?}",
                before.names
            );
        }
        let after = rotate(dir.path(), &ca, &["control.example".into()]).unwrap();
        assert_ne!(after.serial_hex, before.serial_hex);
        assert_ne!(std::fs::read(dir.path().join(KEY)).unwrap(), old_key);
        let read = current(dir.path()).unwrap();
        assert_eq!(read.serial_hex, after.serial_hex);
        assert!(read.names.iter().any(|x| x == "control.example"));
        assert!(read.names.iter().any(|x| x == "10.0.1.50"));
        let (chain, key) = load(dir.path()).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(picket_tls::server::Identity::new(chain, key).is_ok());
        assert!(matches!(
            rotate(dir.path(), &ca, &["bad name".into()]),
            Err(PkiError::BadSan(..))
        ));
        assert!(!due(after.not_after, SystemTime::now()));
        assert!(due(after.not_after, after.not_after - RENEW_BEFORE / 2));
    }

    #[test]
    fn an_interrupted_rotation_is_finished_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        super::super::init(dir.path(), &[]).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let serial = current(dir.path()).unwrap().serial_hex;
        // Cut after the new key was written, before its certificate: dropped.
        std::fs::write(dir.path().join(NEXT_KEY), b"half").unwrap();
        finish_interrupted(dir.path()).unwrap();
        assert!(!dir.path().join(NEXT_KEY).exists());
        assert_eq!(current(dir.path()).unwrap().serial_hex, serial);
        // Cut after the key was renamed: the certificate follows it.
        let issued = issue(dir.path(), &ca, &["localhost".into()]).unwrap();
        std::fs::rename(dir.path().join(CERT), dir.path().join(NEXT_CERT)).unwrap();
        std::fs::copy(dir.path().join("ca.crt"), dir.path().join(CERT)).unwrap();
        finish_interrupted(dir.path()).unwrap();
        assert_eq!(current(dir.path()).unwrap().serial_hex, issued.serial_hex);
        let (chain, key) = load(dir.path()).unwrap();
        assert!(picket_tls::server::Identity::new(chain, key).is_ok());
    }
}
