//! TLS to PostgreSQL, on rustls. `sslmode=require` in the URL turns it
//! on, and then the server's certificate is always checked, for its name
//! and its issuer (libpq's `verify-full`; Picket has no "encrypt but
//! trust anyone" mode): the system's roots, and the CA certificates in
//! `PGSSLROOTCERT` (libpq's variable; tokio-postgres takes no
//! `sslrootcert` in the URL). Without it (`prefer`, the default, or
//! `disable`) the connection is plain TCP.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PgError;

/// The connector for `config`: `None` for plain TCP (and the URL's
/// `prefer` made `disable`, so that a server offering TLS is not tried
/// with a connector that has none).
pub(crate) fn connector(
    config: &mut tokio_postgres::Config,
    root_cert: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, PgError> {
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    // Roots that do not parse are skipped, as every client does.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = root_cert {
        let bad = |e: String| PgError::Config(format!("PGSSLROOTCERT {}: {e}", file.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(tls)))
}
