//! Standard Webhooks (<https://www.standardwebhooks.com>, also Svix): `webhook-id: I`,
//! `webhook-timestamp: T` (Unix seconds), `webhook-signature: v1,<base64>[ v1,<base64>…]`
//! (space-separated, one per active secret), each HMAC-SHA256 of `"{I}.{T}.{body}"` keyed with
//! the bytes the secret `whsec_<base64>` encodes. Entries of other versions (`v1a,` for
//! asymmetric signatures) are ignored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};

use crate::mac::{Decimal, HmacKey, matches_any, tag};
use crate::{MAX_SIGNATURES, Malformation, Tolerance, VerifyError};

/// The message id header; the same on every retry of one message.
pub const ID_HEADER: HeaderName = HeaderName::from_static("webhook-id");
/// The timestamp header.
pub const TIMESTAMP_HEADER: HeaderName = HeaderName::from_static("webhook-timestamp");
/// The signature header.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("webhook-signature");
/// Prefix of secrets in Standard Webhooks form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The length of one `v1,<base64>` entry: `v1,` and 44 characters of base64 for 32 bytes.
pub const SIGNATURE_LEN: usize = 3 + 44;

/// The key a `whsec_<base64>` secret encodes, with its HMAC setup done once (see
/// [`HmacKey`]): parse a secret once and sign every message with it. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
    hmac: HmacKey,
}

/// Keys are equal when their bytes are (the prepared state follows from them).
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

/// Why a string is not a Standard Webhooks secret. Never repeats the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// What follows the prefix is not base64.
    #[error("secret must be whsec_ followed by base64")]
    NotBase64,
    /// It encodes no bytes.
    #[error("secret is empty")]
    Empty,
}

impl SigningKey {
    /// Decodes `whsec_<base64>`; like the reference libraries, the prefix may be left off.
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = STANDARD.decode(encoded).map_err(|_| KeyError::NotBase64)?;
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self::from_bytes(key))
    }

    /// A key of these bytes.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self {
            hmac: HmacKey::new(&key),
            bytes: key,
        }
    }

    /// How many bytes the key has, for a sender's policy on key strength.
    pub fn key_len(&self) -> usize {
        self.bytes.len()
    }

    /// The prepared HMAC key, for signing another scheme's header with the same secret.
    pub fn hmac_key(&self) -> &HmacKey {
        &self.hmac
    }
}

/// One `v1,<base64>` entry for `key`.
pub fn sign(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    write_signature(key, id, timestamp, body, &mut out);
    out
}

/// Appends one `v1,<base64>` entry for `key` to `out` ([`SIGNATURE_LEN`] bytes), allocating
/// nothing when `out` has room: a sender assembling a header of several entries (one per
/// active secret, space-separated) writes each into the same buffer.
pub fn write_signature(key: &SigningKey, id: &str, timestamp: i64, body: &[u8], out: &mut String) {
    let t = Decimal::new(timestamp);
    let mac = key
        .hmac
        .mac(&[id.as_bytes(), b".", t.as_bytes(), b".", body]);
    out.push_str("v1,");
    STANDARD.encode_string(tag(mac), out);
}

/// Verifies the three headers of a request.
pub fn verify(
    key: &SigningKey,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Tolerance,
) -> Result<(), VerifyError> {
    let id = crate::header(headers, &ID_HEADER)?;
    let timestamp = crate::header(headers, &TIMESTAMP_HEADER)?;
    let signature = crate::header(headers, &SIGNATURE_HEADER)?;
    verify_parts(key, id, timestamp, signature, body, now, tolerance)
}

/// Verifies the header values: some `v1` entry matches, then the timestamp is within
/// `tolerance`. The signed text holds the id and timestamp exactly as sent.
pub fn verify_parts(
    key: &SigningKey,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: Tolerance,
) -> Result<(), VerifyError> {
    let malformed = |what| VerifyError::malformed(&SIGNATURE_HEADER, what);
    let seconds = crate::parse_timestamp(timestamp, &TIMESTAMP_HEADER)?;
    let mut candidates = Vec::new();
    for entry in signature.split(' ').filter(|e| !e.is_empty()) {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        if candidates.len() == MAX_SIGNATURES {
            return Err(malformed(Malformation::TooManySignatures));
        }
        candidates.push(
            STANDARD
                .decode(encoded)
                .map_err(|_| malformed(Malformation::Encoding))?,
        );
    }
    if candidates.is_empty() {
        return Err(malformed(Malformation::NoSignature));
    }
    let mac = key
        .hmac
        .mac(&[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
    if !matches_any(&mac, &candidates) {
        return Err(VerifyError::Mismatch);
    }
    tolerance.check(seconds, now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse("whsec_c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==").unwrap()
    }

    #[test]
    fn keys_parse_with_or_without_prefix_and_never_print() {
        assert_eq!(
            SigningKey::parse("c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==").unwrap(),
            key()
        );
        assert_eq!(SigningKey::parse("whsec_!!"), Err(KeyError::NotBase64));
        assert_eq!(SigningKey::parse("whsec_"), Err(KeyError::Empty));
        assert_eq!(format!("{:?}", key()), "SigningKey(redacted)");
    }

    #[test]
    fn entries_append_and_have_the_announced_length() {
        let mut header = String::from("v1a,other ");
        write_signature(&key(), "msg_1", 100, b"{}", &mut header);
        let entry = header.strip_prefix("v1a,other ").unwrap();
        assert_eq!(entry, sign(&key(), "msg_1", 100, b"{}"));
        assert_eq!(entry.len(), SIGNATURE_LEN);
        assert_eq!(key().key_len(), b"secret-key-bytes-12345678".len());
    }

    #[test]
    fn signed_messages_verify_within_the_tolerance() {
        let sig = sign(&key(), "msg_1", 100, b"{}");
        let check = |id: &str, ts: &str, sig: &str, body: &[u8], now| {
            verify_parts(&key(), id, ts, sig, body, now, Tolerance::from_secs(5))
        };
        assert_eq!(check("msg_1", "100", &sig, b"{}", 100), Ok(()));
        assert_eq!(
            check("msg_2", "100", &sig, b"{}", 100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("msg_1", "101", &sig, b"{}", 101),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("msg_1", "100", &sig, b"{}", 106),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check("msg_1", "100", &sig, b"{}", 94),
            Err(VerifyError::StaleTimestamp)
        );
        let rotated = format!("v1a,abc v1,AAAA {sig}");
        assert_eq!(check("msg_1", "100", &rotated, b"{}", 100), Ok(()));
    }

    #[test]
    fn malformed_headers_are_named() {
        let check =
            |ts: &str, sig: &str| verify_parts(&key(), "m", ts, sig, b"", 0, Tolerance::DEFAULT);
        let sig = |what| {
            Err(VerifyError::Malformed {
                header: SIGNATURE_HEADER,
                what,
            })
        };
        assert_eq!(
            check("soon", "v1,AAAA"),
            Err(VerifyError::Malformed {
                header: TIMESTAMP_HEADER,
                what: Malformation::Timestamp
            })
        );
        assert_eq!(check("0", "v2,AAAA"), sig(Malformation::NoSignature));
        assert_eq!(check("0", "v1,***"), sig(Malformation::Encoding));
        let many = "v1,AAAA ".repeat(MAX_SIGNATURES + 1);
        assert_eq!(check("0", &many), sig(Malformation::TooManySignatures));
        assert_eq!(
            verify(&key(), &HeaderMap::new(), b"", 0, Tolerance::DEFAULT),
            Err(VerifyError::MissingHeader(ID_HEADER))
        );
    }
}
