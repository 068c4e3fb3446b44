//! Clock skew: a peer whose clock runs behind the control plane's sees the
//! certificates the control plane just issued as not valid yet. Picket
//! backdates what it issues by 5 minutes (as step-ca and cfssl do); beyond
//! that, a client accepts a certificate that only starts within the next
//! 15 minutes. Only the start is relaxed: an expired certificate is refused as
//! ever, and the issuer, name and signature are checked as before (a
//! certificate that starts later was still issued by the CA it trusts).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How far before its issue every certificate Picket issues starts.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// When a certificate Picket issued was issued: its start, less the
/// backdate (for one that lives longer than that).
pub fn issued(
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> std::time::SystemTime {
    let later = not_before + BACKDATE;
    if later < not_after { later } else { not_before }
}

/// How far ahead of the local clock a certificate may start: with the
/// backdate, a clock up to 20 minutes behind the control plane's.
pub const NOT_BEFORE_ALLOWANCE: Duration = Duration::from_secs(15 * 60);

/// Whether `e` says a certificate is not valid yet.
pub fn not_yet_valid(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// Runs `check` at `now`, and once more at `now` + the allowance when the
/// certificate was not valid yet.
pub fn allowing<T>(
    now: UnixTime,
    check: impl Fn(UnixTime) -> Result<T, rustls::Error>,
) -> Result<T, rustls::Error> {
    match check(now) {
        Err(e) if not_yet_valid(&e) => {
            let later = UnixTime::since_unix_epoch(
                Duration::from_secs(now.as_secs()) + NOT_BEFORE_ALLOWANCE,
            );
            check(later).map_err(|again| if not_yet_valid(&again) { e } else { again })
        }
        r => r,
    }
}

/// A server verifier that allows for a clock behind the server's.
#[derive(Debug)]
pub struct Lenient(pub Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        allowing(now, |at| {
            self.0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
