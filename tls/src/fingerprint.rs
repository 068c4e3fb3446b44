//! The CA fingerprint agents pin: `sha256:` and the hex SHA-256 of the DER.

use sha2::{Digest, Sha256};

pub fn of_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

pub fn digest(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fingerprint {0:?} is not of the form sha256:<64 hex digits>")]
pub struct BadFingerprint(pub String);

/// Parses `sha256:<hex>`; accepts upper case and `:` between bytes, as
/// `openssl x509 -fingerprint` prints them.
pub fn parse(s: &str) -> Result<[u8; 32], BadFingerprint> {
    let bad = || BadFingerprint(s.to_string());
    let rest = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .ok_or_else(bad)?;
    let hex_only: String = rest.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex_only.to_ascii_lowercase()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forms() {
        let fp = of_der(b"abc");
        let d = parse(&fp).unwrap();
        assert_eq!(d, digest(b"abc"));
        let upper_colons = format!(
            "SHA256:{}",
            hex::encode_upper(d)
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(parse(&upper_colons).unwrap(), d);
        assert!(parse("md5:00").is_err());
        assert!(parse("sha256:zz").is_err());
        assert!(parse("sha256:00").is_err());
    }
}
