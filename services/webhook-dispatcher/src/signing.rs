//! Signatures on every delivery.
//!
//! For a delivery of body `B` (the event envelope's exact bytes) with event id `I` at Unix time
//! `T`, and each active secret `whsec_<base64 key>`:
//!
//! - Standard Webhooks: `webhook-id: I`, `webhook-timestamp: T`,
//!   `webhook-signature: v1,<base64(HMAC-SHA256(key, "I.T.B"))>` — one space-separated entry
//!   per active secret, so any Standard Webhooks library verifies deliveries.
//! - `X-Webhook-Signature: t=T,v1=<hex(HMAC-SHA256(key, "T.B"))>[,v1=...]` — the seed's header;
//!   the timestamp is signed so receivers can reject replays (compare `t` with their clock).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of secrets in Standard Webhooks form.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret's key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

/// Why a string is not a signing secret. Never repeats the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    /// No `whsec_` prefix.
    #[error("must start with {SECRET_PREFIX}")]
    MissingPrefix,
    /// What follows the prefix is not base64.
    #[error("must be whsec_ followed by base64")]
    NotBase64,
    /// The key is too short or too long.
    #[error("key must be 24 to 64 bytes")]
    Length,
}

impl SigningKey {
    /// Decodes `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<Self, SigningKeyError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningKeyError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SigningKeyError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningKeyError::Length);
        }
        Ok(Self(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC-SHA256 takes keys of any length")
    }
}

/// A fresh random secret, `whsec_` + 32 random bytes in base64.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// `v1,<base64>` for one key (Standard Webhooks).
pub fn standard_signature(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Hex HMAC-SHA256 of `"T.B"` for the `X-Webhook-Signature` header.
pub fn seed_signature(key: &SigningKey, timestamp: i64, body: &[u8]) -> String {
    let mut mac = key.mac();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// The signature headers of one delivery, for every active key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `webhook-signature`.
    pub webhook_signature: String,
    /// `X-Webhook-Signature`.
    pub x_webhook_signature: String,
}

/// Signs a delivery with every key.
pub fn sign(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> SignatureHeaders {
    let webhook_signature = keys
        .iter()
        .map(|k| standard_signature(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ");
    let mut x = format!("t={timestamp}");
    for key in keys {
        x.push_str(",v1=");
        x.push_str(&seed_signature(key, timestamp, body));
    }
    SignatureHeaders {
        webhook_signature,
        x_webhook_signature: x,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Verifies an `X-Webhook-Signature` value against a secret in constant time, within
/// `tolerance_secs` of `now` (what receivers should do; used by tests and tools).
pub fn verify_seed_header(
    header: &str,
    key: &SigningKey,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => candidates.push(sig),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    // abs_diff: a hostile `t` near i64::MIN/MAX must not overflow; a negative tolerance is 0.
    if now.abs_diff(t) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return false;
    }
    candidates.iter().any(|sig| {
        let Some(provided) = unhex(sig) else {
            return false;
        };
        let mut mac = key.mac();
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&provided).is_ok()
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn vectors(kind: &str) -> Vec<Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v[kind].as_array().unwrap().clone()
    }

    #[test]
    fn matches_the_standard_webhooks_vectors() {
        for v in vectors("standard_webhooks") {
            let key = SigningKey::parse(v["secret"].as_str().unwrap()).unwrap();
            let sig = standard_signature(
                &key,
                v["id"].as_str().unwrap(),
                v["timestamp"].as_i64().unwrap(),
                v["body"].as_str().unwrap().as_bytes(),
            );
            assert_eq!(sig, v["signature"].as_str().unwrap());
        }
    }

    #[test]
    fn the_seed_header_uses_the_stripe_style_scheme() {
        // Same construction as Stripe's `t=..,v1=hex(HMAC(secret, "t.body"))`: check the HMAC
        // against the Stripe vector with the raw secret bytes as the key.
        for v in vectors("stripe") {
            let key = SigningKey(v["secret"].as_str().unwrap().as_bytes().to_vec());
            let t = v["timestamp"].as_i64().unwrap();
            let body = v["body"].as_str().unwrap().as_bytes();
            let expected = format!("t={t},v1={}", seed_signature(&key, t, body));
            assert_eq!(expected, v["header"].as_str().unwrap());
            assert!(verify_seed_header(&expected, &key, body, t + 10, 300));
            assert!(
                !verify_seed_header(&expected, &key, body, t + 1000, 300),
                "replay window"
            );
            assert!(!verify_seed_header(&expected, &key, b"tampered", t, 300));
        }
    }

    #[test]
    fn every_active_key_signs() {
        let (a, b) = (generate_secret(), generate_secret());
        let keys = [
            SigningKey::parse(&a).unwrap(),
            SigningKey::parse(&b).unwrap(),
        ];
        let h = sign(&keys, "evt", 1_700_000_000, b"{}");
        assert_eq!(h.webhook_signature.split(' ').count(), 2);
        assert_eq!(h.x_webhook_signature.matches("v1=").count(), 2);
        for key in &keys {
            assert!(verify_seed_header(
                &h.x_webhook_signature,
                key,
                b"{}",
                1_700_000_000,
                300
            ));
        }
        assert_eq!(
            SigningKey::parse("whsec_short"),
            Err(SigningKeyError::NotBase64)
        );
        assert_eq!(
            SigningKey::parse("whsec_c2hvcnQ="),
            Err(SigningKeyError::Length)
        );
        assert_eq!(
            SigningKey::parse("nope"),
            Err(SigningKeyError::MissingPrefix)
        );
    }
}
