//! Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each `v1` is
//! HMAC-SHA256 of `"{t}.{body}"` keyed with the endpoint secret's bytes (the whole
//! `whsec_…` string, as Stripe's libraries use it). Entries of other schemes (`v0`) are ignored.

use http::{HeaderMap, HeaderName};

use crate::mac::{hex_decode, hex_encode, hmac, matches_any, tag};
use crate::{MAX_SIGNATURES, Malformation, Tolerance, VerifyError};

/// The signature header (lowercase, as `http` stores names).
pub const HEADER: HeaderName = HeaderName::from_static("stripe-signature");

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    hex_encode(&tag(hmac(secret, &[t.as_bytes(), b".", body])))
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
    if !matches_any(&hmac(secret, &[t.as_bytes(), b".", body]), &candidates) {
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
