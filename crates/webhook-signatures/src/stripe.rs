//! Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each `v1` is
//! HMAC-SHA256 of `"{t}.{body}"` keyed with the endpoint secret's bytes (the whole
//! `whsec_…` string, as Stripe's libraries use it). Entries of other schemes (`v0`) are ignored.

use http::{HeaderMap, HeaderName};

use crate::mac::{Decimal, HmacKey, hex_decode, hex_encode_into, matches_any, tag};
use crate::{MAX_SIGNATURES, Malformation, Tolerance, VerifyError};

/// The signature header (lowercase, as `http` stores names).
pub const HEADER: HeaderName = HeaderName::from_static("stripe-signature");
/// The length of one signature: 64 hex digits.
pub const SIGNATURE_LEN: usize = 64;

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    write_signature(&HmacKey::new(secret), timestamp, body, &mut out);
    out
}

/// Appends the hex HMAC-SHA256 of `"{timestamp}.{body}"` under a prepared key to `out`
/// ([`SIGNATURE_LEN`] bytes), allocating nothing when `out` has room: a sender writing
/// `t=T,v1=S[,v1=S…]` for several secrets writes each `S` into the same buffer.
pub fn write_signature(key: &HmacKey, timestamp: i64, body: &[u8], out: &mut String) {
    let t = Decimal::new(timestamp);
    hex_encode_into(&tag(key.mac(&[t.as_bytes(), b".", body])), out);
}

/// The `Stripe-Signature` value a sender holding `secret` puts on `body` at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

/// Verifies the [`HEADER`] of a request.
pub fn verify(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Tolerance,
) -> Result<(), VerifyError> {
    verify_header(
        secret,
        crate::header(headers, &HEADER)?,
        body,
        now,
        tolerance,
    )
}

/// Verifies a `Stripe-Signature` value: some `v1` matches, then `t` is within `tolerance`.
pub fn verify_header(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Tolerance,
) -> Result<(), VerifyError> {
    verify_header_with_key(&HmacKey::new(secret), header, body, now, tolerance)
}

/// [`verify_header`] under a prepared key.
pub fn verify_header_with_key(
    key: &HmacKey,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Tolerance,
) -> Result<(), VerifyError> {
    let malformed = |what| VerifyError::malformed(&HEADER, what);
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_some() => return Err(malformed(Malformation::Timestamp)),
            "t" => timestamp = Some((value, crate::parse_timestamp(value, &HEADER)?)),
            "v1" if candidates.len() == MAX_SIGNATURES => {
                return Err(malformed(Malformation::TooManySignatures));
            }
            "v1" => {
                candidates.push(hex_decode(value).ok_or_else(|| malformed(Malformation::Encoding))?)
            }
            _ => {}
        }
    }
    // The signed text is `t` as sent, not as re-printed.
    let (t, timestamp) = timestamp.ok_or_else(|| malformed(Malformation::Timestamp))?;
    if candidates.is_empty() {
        return Err(malformed(Malformation::NoSignature));
    }
    if !matches_any(&key.mac(&[t.as_bytes(), b".", body]), &candidates) {
        return Err(VerifyError::Mismatch);
    }
    tolerance.check(timestamp, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_unit";

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not() {
        let header = sign(SECRET, 1000, b"{}");
        assert_eq!(
            verify_header(SECRET, &header, b"{}", 1000, Tolerance::DEFAULT),
            Ok(())
        );
        assert_eq!(
            verify_header(SECRET, &header, b"{ }", 1000, Tolerance::DEFAULT),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_header(b"other", &header, b"{}", 1000, Tolerance::DEFAULT),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_prepared_key_signs_and_verifies_like_the_secret() {
        let key = HmacKey::new(SECRET);
        let mut out = String::from("t=1000,v1=");
        write_signature(&key, 1000, b"{}", &mut out);
        assert_eq!(out, sign(SECRET, 1000, b"{}"));
        assert_eq!(signature(SECRET, 1000, b"{}").len(), SIGNATURE_LEN);
        assert_eq!(
            verify_header_with_key(&key, &out, b"{}", 1000, Tolerance::DEFAULT),
            Ok(())
        );
    }

    #[test]
    fn the_tolerance_holds_both_ways() {
        let header = sign(SECRET, 1000, b"x");
        let tolerance = Tolerance::from_secs(10);
        assert_eq!(verify_header(SECRET, &header, b"x", 990, tolerance), Ok(()));
        assert_eq!(
            verify_header(SECRET, &header, b"x", 1010, tolerance),
            Ok(())
        );
        assert_eq!(
            verify_header(SECRET, &header, b"x", 1011, tolerance),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            verify_header(SECRET, &header, b"x", 989, tolerance),
            Err(VerifyError::StaleTimestamp)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let m = |what| {
            Err(VerifyError::Malformed {
                header: HEADER,
                what,
            })
        };
        let sig = signature(SECRET, 5, b"x");
        let check = |h: &str| verify_header(SECRET, h, b"x", 5, Tolerance::DEFAULT);
        assert_eq!(check(&format!("v1={sig}")), m(Malformation::Timestamp));
        assert_eq!(check(&format!("t=-5,v1={sig}")), m(Malformation::Timestamp));
        assert_eq!(
            check(&format!("t=5,t=5,v1={sig}")),
            m(Malformation::Timestamp)
        );
        assert_eq!(check("t=5"), m(Malformation::NoSignature));
        assert_eq!(
            check(&format!("t=5,v0={sig}")),
            m(Malformation::NoSignature)
        );
        assert_eq!(check("t=5,v1=xyz"), m(Malformation::Encoding));
        let many = format!("t=5{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        assert_eq!(check(&many), m(Malformation::TooManySignatures));
        assert_eq!(check(&format!(" t=5 , v0=ab, v1={sig} ")), Ok(()));
    }

    #[test]
    fn a_missing_header_is_reported_as_missing() {
        assert_eq!(
            verify(SECRET, &HeaderMap::new(), b"x", 5, Tolerance::DEFAULT),
            Err(VerifyError::MissingHeader(HEADER))
        );
    }
}
