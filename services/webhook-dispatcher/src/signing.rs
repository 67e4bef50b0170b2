//! Signatures on every delivery.
//!
//! For a delivery of body `B` (the event envelope's exact bytes) with event id `I` at Unix time
//! `T`, and each active secret `whsec_<base64 key>`:
//!
//! - Standard Webhooks: `webhook-id: I`, `webhook-timestamp: T`,
//!   `webhook-signature: v1,<base64(HMAC-SHA256(key, "I.T.B"))>` — one space-separated entry
//!   per active secret, so any Standard Webhooks library verifies deliveries.
//! - `X-Webhook-Signature: t=T,v1=<hex(HMAC-SHA256(key, "T.B"))>[,v1=...]` — the seed's header,
//!   Stripe's scheme keyed with the same decoded key; the timestamp is signed so receivers can
//!   reject replays (compare `t` with their clock).
//!
//! The schemes themselves are `webhook_signatures::{standard, stripe}`; this module holds what
//! is the dispatcher's own: which secrets it accepts and issues, and the two headers assembled
//! from every active secret. Signing prepares each key's HMAC state once (at parse) for both
//! headers and writes both into buffers sized up front: two allocations per delivery.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use webhook_signatures::{Tolerance, standard, stripe};

/// Prefix of secrets in Standard Webhooks form.
pub use webhook_signatures::standard::SECRET_PREFIX;

/// The key lengths the dispatcher accepts: at least 192 bits, at most one SHA-256 block
/// (Svix issues 24-byte keys; [`generate_secret`] 32-byte ones).
const KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing secret accepted by the dispatcher: a Standard Webhooks key of [`KEY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey(standard::SigningKey);

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
    /// Decodes `whsec_<base64>`. Stricter than the scheme: the prefix is required (a bare
    /// base64 string is more likely a mistake than a key) and the length is bounded.
    pub fn parse(secret: &str) -> Result<Self, SigningKeyError> {
        if !secret.starts_with(SECRET_PREFIX) {
            return Err(SigningKeyError::MissingPrefix);
        }
        let key = standard::SigningKey::parse(secret).map_err(|why| match why {
            standard::KeyError::NotBase64 => SigningKeyError::NotBase64,
            standard::KeyError::Empty => SigningKeyError::Length,
        })?;
        if !KEY_LEN.contains(&key.key_len()) {
            return Err(SigningKeyError::Length);
        }
        Ok(Self(key))
    }
}

/// A fresh random secret, `whsec_` + 32 random bytes in base64.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The signature headers of one delivery, for every active key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `webhook-signature`.
    pub webhook_signature: String,
    /// `X-Webhook-Signature`.
    pub x_webhook_signature: String,
}

/// `t=` and the longest i64.
const SEED_PREFIX_MAX: usize = 2 + 20;
/// `,v1=` and one hex signature.
const SEED_ENTRY_LEN: usize = 4 + stripe::SIGNATURE_LEN;

/// Signs a delivery with every key, in order.
pub fn sign(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> SignatureHeaders {
    let mut webhook_signature = String::with_capacity(keys.len() * (standard::SIGNATURE_LEN + 1));
    let mut x_webhook_signature =
        String::with_capacity(SEED_PREFIX_MAX + keys.len() * SEED_ENTRY_LEN);
    // Writing into a String cannot fail.
    let _ = write!(x_webhook_signature, "t={timestamp}");
    for (i, SigningKey(key)) in keys.iter().enumerate() {
        if i > 0 {
            webhook_signature.push(' ');
        }
        standard::write_signature(key, id, timestamp, body, &mut webhook_signature);
        x_webhook_signature.push_str(",v1=");
        stripe::write_signature(key.hmac_key(), timestamp, body, &mut x_webhook_signature);
    }
    SignatureHeaders {
        webhook_signature,
        x_webhook_signature,
    }
}

/// Verifies an `X-Webhook-Signature` value against a secret in constant time, within
/// `tolerance_secs` of `now` (what receivers should do; used by tests and tools). A negative
/// tolerance admits only the exact second. The header is checked as Stripe's libraries check
/// theirs (`webhook_signatures::stripe`): a malformed one does not verify.
pub fn verify_seed_header(
    header: &str,
    key: &SigningKey,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    let tolerance = Tolerance::from_secs(u64::try_from(tolerance_secs).unwrap_or(0));
    stripe::verify_header_with_key(key.0.hmac_key(), header, body, now, tolerance).is_ok()
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
            let headers = sign(
                std::slice::from_ref(&key),
                v["id"].as_str().unwrap(),
                v["timestamp"].as_i64().unwrap(),
                v["body"].as_str().unwrap().as_bytes(),
            );
            assert_eq!(headers.webhook_signature, v["signature"].as_str().unwrap());
        }
    }

    #[test]
    fn the_seed_header_uses_the_stripe_style_scheme() {
        // Same construction as Stripe's `t=..,v1=hex(HMAC(secret, "t.body"))`: check the HMAC
        // against the Stripe vector with the raw secret bytes as the key.
        for v in vectors("stripe") {
            let secret = v["secret"].as_str().unwrap().as_bytes();
            let key = SigningKey(standard::SigningKey::from_bytes(secret.to_vec()));
            let t = v["timestamp"].as_i64().unwrap();
            let body = v["body"].as_str().unwrap().as_bytes();
            let expected = sign(std::slice::from_ref(&key), "unused", t, body).x_webhook_signature;
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
        let [SigningKey(ka), SigningKey(kb)] = &keys;
        let entry = |k| standard::sign(k, "evt", 1_700_000_000, b"{}");
        assert_eq!(h.webhook_signature, format!("{} {}", entry(ka), entry(kb)));
        let hex = |k: &standard::SigningKey| {
            let mut out = String::new();
            stripe::write_signature(k.hmac_key(), 1_700_000_000, b"{}", &mut out);
            out
        };
        assert_eq!(
            h.x_webhook_signature,
            format!("t=1700000000,v1={},v1={}", hex(ka), hex(kb))
        );
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
