//! The mTLS channel to the admin API, and turning failures into one line a
//! person can act on.

use anyhow::anyhow;
use picket_proto::v1::admin_service_client::AdminServiceClient;
use picket_tls::{client, files};
use tonic::transport::Channel;

use crate::BadConfig;
use crate::settings::Settings;

pub type Admin = AdminServiceClient<Channel>;

/// Reads the credentials (bad files are configuration errors, exit 2) and
/// connects (failures are runtime errors, exit 1).
pub async fn connect(s: &Settings) -> anyhow::Result<Admin> {
    let ca = files::read_certs(&s.ca).map_err(|e| BadConfig(e.into()))?;
    let certs = files::read_certs(&s.cert).map_err(|e| BadConfig(e.into()))?;
    let key = files::read_key(&s.key).map_err(|e| BadConfig(e.into()))?;
    if let Err(e) = client::check_client_cert(&ca, &certs) {
        let why = match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                ..
            }) => "has expired; ask an admin for a new bundle (`picketctl user add`)".to_string(),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            ) => format!("was not issued by the CA in {}", s.ca.display()),
            other => format!("is not usable: {other}"),
        };
        return Err(BadConfig(anyhow!("client certificate {} {why}", s.cert.display())).into());
    }
    let cfg = client::mtls_config(&ca, certs, key).map_err(|e| BadConfig(e.into()))?;
    let (channel, _) = client::connect_any(s.server.as_slice(), cfg)
        .await
        .map_err(|e| anyhow!(hint(&e.to_string())))?;
    Ok(AdminServiceClient::new(channel))
}

/// One line for a failed call: the status code in words, the message, and
/// for TLS failures what to check.
pub fn describe(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = s.message().to_string();
    if let Some(src) = s.source() {
        let chain = client::error_chain(src);
        if !text.contains(&chain) {
            text = format!("{text}: {chain}");
        }
    }
    let code = match s.code() {
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    };
    hint(&format!("{code}: {text}"))
}

/// Adds what to check to the TLS errors people meet most.
fn hint(msg: &str) -> String {
    let advice = if msg.contains("UnknownIssuer")
        || msg.contains("invalid peer certificate: BadSignature")
    {
        Some("the server's certificate is not signed by the CA given with --ca")
    } else if msg.contains("NotValidForName") {
        Some(
            "the server's certificate does not name this address; use a name given to `picket-control init --san`",
        )
    } else if msg.contains("UnknownCA")
        || msg.contains("BadCertificate")
        || msg.contains("DecryptError")
    {
        Some(
            "the control plane rejected the client certificate: it was not issued by this control plane's CA",
        )
    } else if msg.contains("CertificateExpired") || msg.contains("Expired") {
        Some("a certificate has expired; ask an admin for a new bundle (`picketctl user add`)")
    } else if msg.contains("CertificateRequired") {
        Some("the control plane requires a client certificate")
    } else {
        None
    };
    match advice {
        Some(a) => format!("{msg} ({a})"),
        None => msg.to_string(),
    }
}
