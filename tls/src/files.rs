//! PEM files: certificates, keys, and secret files written owner-only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path} is not valid PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
}

pub fn read(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses every certificate in a PEM text; `origin` names it in errors.
pub fn parse_certs(pem: &str, origin: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::BadPem {
            path: origin.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(FileError::NoCertificate {
            path: origin.to_path_buf(),
        });
    }
    Ok(certs)
}

pub fn parse_key(pem: &str, origin: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| FileError::BadKey {
        path: origin.to_path_buf(),
        detail: e.to_string(),
    })
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    parse_certs(&read(path)?, path)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    parse_key(&read(path)?, path)
}

/// Writes a file readable by its owner only (0600), atomically: a temporary
/// file in the same folder, fsynced, then renamed over the target.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_mode(path, contents, 0o600)
}

/// Writes a public file (0644), atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_mode(path, contents, 0o644)
}

/// A key and certificate replaced together: the new pair is written to
/// `.next` files (the key first, then the certificate), then renamed into
/// place (the key first). Whatever a crash leaves, [`KeyPair::recover`]
/// gives the old pair or the new one, never a mix.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub key_next: PathBuf,
    pub cert_next: PathBuf,
}

impl KeyPair {
    /// Finishes a replacement whose new certificate was written (the new
    /// key is in place already, or still at `key_next`), or drops one cut
    /// short before its certificate was: the one recovery of `.next`
    /// files, for the agent's certificate and the server's.
    pub fn recover(&self) -> Result<(), FileError> {
        let mv = |from: &Path, to: &Path| {
            fs::rename(from, to).map_err(|source| FileError::Write {
                path: to.to_path_buf(),
                source,
            })
        };
        if self.cert_next.exists() {
            if self.key_next.exists() {
                mv(&self.key_next, &self.key)?;
            }
            mv(&self.cert_next, &self.cert)?;
        } else if self.key_next.exists() {
            fs::remove_file(&self.key_next).map_err(|source| FileError::Write {
                path: self.key_next.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Puts the written `.next` pair in place, the key first.
    pub fn commit(&self) -> Result<(), FileError> {
        self.recover()
    }
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The mode given to open() is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_replacement_ends_with_one_whole_pair() {
        let dir = std::env::temp_dir().join(format!("picket-tls-pair-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = KeyPair {
            key: dir.join("k"),
            cert: dir.join("c"),
            key_next: dir.join("k.next"),
            cert_next: dir.join("c.next"),
        };
        let put = |path: &Path, s: &str| fs::write(path, s).unwrap();
        let get = |path: &Path| fs::read_to_string(path).unwrap();
        put(&p.key, "old key");
        put(&p.cert, "old cert");
        // Cut short before the new certificate: the old pair stays.
        put(&p.key_next, "new key");
        p.recover().unwrap();
        assert_eq!(
            (get(&p.key), get(&p.cert)),
            ("old key".into(), "old cert".into())
        );
        assert!(!p.key_next.exists());
        // Both written: the new pair.
        put(&p.key_next, "new key");
        put(&p.cert_next, "new cert");
        p.recover().unwrap();
        assert_eq!(
            (get(&p.key), get(&p.cert)),
            ("new key".into(), "new cert".into())
        );
        // The key renamed, then the crash: the certificate follows.
        put(&p.key, "newer key");
        put(&p.cert_next, "newer cert");
        p.recover().unwrap();
        assert_eq!(
            (get(&p.key), get(&p.cert)),
            ("newer key".into(), "newer cert".into())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_is_owner_only_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("picket-tls-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.pem");
        write_secret(&p, b"not a key").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = read_key(&p).unwrap_err().to_string();
        assert!(e.contains("k.pem"), "{e}");
        let e = read_certs(&p).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = read_certs(&dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
