//! omnifold's signature on the records only it may write.
//!
//! Identity claims, joins and their parts, and forwards (the
//! `omnifold-route` header) decide who a person is and move their history
//! and points. On the events topic anyone who may produce could write
//! them, so omnifold signs every one it writes with HMAC-SHA256 under a
//! cluster secret (`kafka.internal_secret`), over the record key, the route
//! header and the value, and the processor refuses one without a valid
//! signature into the dead-letter topic (kind `forged`). Identity-index
//! records are signed too; the index reader drops unsigned ones.
//! Verification also accepts `kafka.previous_internal_secrets`, so a secret
//! can be rotated and the log still replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature, as lower-case hex.
pub const SIGNATURE_HEADER: &str = "omnifold-sig";

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies internal records.
#[derive(Clone)]
pub struct Signer {
    current: Vec<u8>,
    previous: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &str, previous: &[String]) -> Signer {
        Signer {
            current: secret.as_bytes().to_vec(),
            previous: previous.iter().map(|s| s.as_bytes().to_vec()).collect(),
        }
    }

    /// A signer with a random secret of its own, for folding files with no
    /// broker: it verifies only what it signed itself.
    pub fn ephemeral() -> Signer {
        let secret: [u8; 32] = rand::random();
        Signer { current: secret.to_vec(), previous: Vec::new() }
    }

    fn mac(secret: &[u8], key: Option<&[u8]>, route: Option<&str>, value: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = match HmacSha256::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(b"omnifold-internal/v1\0");
        for part in [key.unwrap_or_default(), route.unwrap_or_default().as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(value);
        mac
    }

    /// The signature header value for a record.
    pub fn sign(&self, key: Option<&[u8]>, route: Option<&str>, value: &[u8]) -> String {
        let tag = Self::mac(&self.current, key, route, value).finalize().into_bytes();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `signature` (hex) signs the record under the current or a
    /// previous secret. Compared in constant time.
    pub fn verify(&self, key: Option<&[u8]>, route: Option<&str>, value: &[u8], signature: Option<&[u8]>) -> bool {
        let Some(tag) = signature.and_then(unhex) else {
            return false;
        };
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|secret| Self::mac(secret, key, route, value).verify_slice(&tag).is_ok())
    }
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_key_route_and_value_and_survives_rotation() {
        let old = Signer::new("old-secret-old-secret", &[]);
        let new = Signer::new("new-secret-new-secret", &["old-secret-old-secret".into()]);
        let sig = old.sign(Some(b"m-1"), Some("m-2"), b"value");
        assert!(old.verify(Some(b"m-1"), Some("m-2"), b"value", Some(sig.as_bytes())));
        assert!(
            new.verify(Some(b"m-1"), Some("m-2"), b"value", Some(sig.as_bytes())),
            "a rotated secret still verifies"
        );
        assert!(!old.verify(Some(b"m-1"), Some("m-3"), b"value", Some(sig.as_bytes())), "another route");
        assert!(!old.verify(Some(b"m-9"), Some("m-2"), b"value", Some(sig.as_bytes())), "another key");
        assert!(!old.verify(Some(b"m-1"), Some("m-2"), b"valuE", Some(sig.as_bytes())), "another value");
        assert!(!old.verify(Some(b"m-1"), Some("m-2"), b"value", None));
        assert!(!old.verify(Some(b"m-1"), Some("m-2"), b"value", Some(b"zz")));
        let other = Signer::new("someone-else-entirely", &[]);
        assert!(!other.verify(Some(b"m-1"), Some("m-2"), b"value", Some(sig.as_bytes())));
    }
}
