//! Picket's TLS plumbing, shared by the agent, the control plane and the CLI.
//!
//! - [`files`] — reading PEM certificates and keys, writing secrets 0600.
//! - [`fingerprint`] — the `sha256:<hex>` fingerprint that agents pin.
//! - [`csr`] — a fresh ECDSA P-256 key and a CSR for it (keys never travel).
//! - [`client`] — rustls client configs (mTLS, or a pinned CA for enrollment)
//!   and a tonic `Channel` over them.
//! - [`server`] — the control plane's rustls config (client certificates
//!   verified against the CA, optional for enrollment).
//! - [`skew`] — certificates that start a little after a client's clock
//!   (one behind the control plane's) are accepted.
//!
//! Everything here uses rustls with the ring provider; there is no OpenSSL.

pub mod client;
pub mod csr;
pub mod files;
pub mod fingerprint;
pub mod server;
pub mod skew;

/// The rustls crypto provider every Picket binary uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider; harmless if done twice.
/// Binaries call it first thing, so tonic's own TLS setup finds it.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
