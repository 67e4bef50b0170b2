//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body keyed with the
//! webhook secret's bytes. GitHub signs no timestamp: a receiver stops replays by remembering
//! `X-GitHub-Delivery`.

use http::{HeaderMap, HeaderName};

use crate::mac::{hex_decode, hex_encode, hmac, matches_any, tag};
use crate::{Malformation, VerifyError};

/// The signature header (lowercase).
pub const HEADER: HeaderName = HeaderName::from_static("x-hub-signature-256");
/// The event header (`issues`, `push`, …).
pub const EVENT_HEADER: HeaderName = HeaderName::from_static("x-github-event");
/// The delivery's unique id (a UUID), the same on a redelivery.
pub const DELIVERY_HEADER: HeaderName = HeaderName::from_static("x-github-delivery");

const PREFIX: &str = "sha256=";

/// The `X-Hub-Signature-256` value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("{PREFIX}{}", hex_encode(&tag(hmac(secret, &[body]))))
}

/// Verifies the [`HEADER`] of a request.
pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    verify_header(secret, crate::header(headers, &HEADER)?, body)
}

/// Verifies an `X-Hub-Signature-256` value.
pub fn verify_header(secret: &[u8], header: &str, body: &[u8]) -> Result<(), VerifyError> {
    let malformed = |what| VerifyError::malformed(&HEADER, what);
    let hex = header
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed(Malformation::NoSignature))?;
    let candidate = hex_decode(hex).ok_or_else(|| malformed(Malformation::Encoding))?;
    if matches_any(&hmac(secret, &[body]), &[candidate]) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bodies_verify() {
        let header = sign(b"s", b"payload");
        assert_eq!(verify_header(b"s", &header, b"payload"), Ok(()));
        assert_eq!(
            verify_header(b"s", &header, b"payload!"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_header(
                b"s",
                &header.to_uppercase().replace("SHA256=", PREFIX),
                b"payload"
            ),
            Ok(())
        );
    }

    #[test]
    fn other_shapes_are_malformed() {
        let m = |what| {
            Err(VerifyError::Malformed {
                header: HEADER,
                what,
            })
        };
        assert_eq!(
            verify_header(b"s", "sha1=00", b""),
            m(Malformation::NoSignature)
        );
        assert_eq!(
            verify_header(b"s", "sha256=0g", b""),
            m(Malformation::Encoding)
        );
        assert_eq!(
            verify(b"s", &HeaderMap::new(), b""),
            Err(VerifyError::MissingHeader(HEADER))
        );
    }
}
