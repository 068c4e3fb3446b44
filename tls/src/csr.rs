//! Key and CSR generation. The private key is made where it will be used and
//! never leaves that host; only the CSR travels.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR (PEM) with `common_name`.
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[error("key or CSR generation failed: {0}")]
pub struct CsrError(#[from] rcgen::Error);

pub fn new_key_and_csr(common_name: &str) -> Result<KeyAndCsr, CsrError> {
    let key = KeyPair::generate()?; // ECDSA P-256 with SHA-256
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}
