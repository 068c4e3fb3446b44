//! Bootstrap tokens: 256 random bits, shown once, stored only as a hash.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Tokens start with this, so that a leaked one is easy to grep for.
pub const PREFIX: &str = "pkt_";

/// A new token and the key it is stored under.
pub fn generate() -> (String, String) {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    let token = format!("{PREFIX}{}", hex::encode(b));
    let h = hash(&token);
    (token, h)
}

/// The store key of a token. A plain SHA-256 suffices: the token has 256
/// bits of entropy, so there is nothing to brute-force.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A short public id (for audit lines), derived from the hash.
pub fn id_of_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, ha) = generate();
        let (b, hb) = generate();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64);
        assert_eq!(hash(&a), ha);
        assert!(!ha.contains(&a[PREFIX.len()..]));
        assert_eq!(id_of_hash(&ha).len(), 12);
    }
}
