//! A configured HMAC header, for providers with no scheme of their own here: one header
//! carrying HMAC-SHA256 of the body keyed with the secret's bytes, in hex or base64, after an
//! optional prefix (`X-Signature: sha256=<hex>`, `X-Shopify-Hmac-Sha256: <base64>`, …). No
//! timestamp is signed: a receiver stops replays by remembering delivery ids.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};

use crate::mac::{hex_decode, hex_encode, hmac, matches_any, tag};
use crate::{Malformation, VerifyError};

/// How the MAC is written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Hex, either case.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Where and how the signature is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HmacHeader {
    /// The header.
    pub header: HeaderName,
    /// Text before the MAC (`sha256=`), if any.
    pub prefix: Option<String>,
    /// The MAC's encoding.
    pub encoding: Encoding,
}

impl HmacHeader {
    /// The header value a sender holding `secret` puts on `body`.
    pub fn sign(&self, secret: &[u8], body: &[u8]) -> String {
        let mac = tag(hmac(secret, &[body]));
        let encoded = match self.encoding {
            Encoding::Hex => hex_encode(&mac),
            Encoding::Base64 => STANDARD.encode(mac),
        };
        format!("{}{encoded}", self.prefix.as_deref().unwrap_or(""))
    }

    /// Verifies the configured header of a request.
    pub fn verify(
        &self,
        secret: &[u8],
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_header(secret, crate::header(headers, &self.header)?, body)
    }

    /// Verifies a header value.
    pub fn verify_header(
        &self,
        secret: &[u8],
        value: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let malformed = |what| VerifyError::malformed(&self.header, what);
        let value = value.trim();
        let encoded = match self.prefix.as_deref() {
            Some(prefix) => value
                .strip_prefix(prefix)
                .ok_or_else(|| malformed(Malformation::NoSignature))?,
            None => value,
        };
        let candidate = match self.encoding {
            Encoding::Hex => hex_decode(encoded),
            Encoding::Base64 => STANDARD.decode(encoded).ok(),
        }
        .ok_or_else(|| malformed(Malformation::Encoding))?;
        if matches_any(&hmac(secret, &[body]), &[candidate]) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(prefix: Option<&str>, encoding: Encoding) -> HmacHeader {
        HmacHeader {
            header: HeaderName::from_static("x-signature"),
            prefix: prefix.map(str::to_owned),
            encoding,
        }
    }

    #[test]
    fn both_encodings_with_and_without_prefix_round_trip() {
        for s in [
            scheme(None, Encoding::Hex),
            scheme(Some("sha256="), Encoding::Hex),
            scheme(None, Encoding::Base64),
            scheme(Some("v1="), Encoding::Base64),
        ] {
            let value = s.sign(b"k", b"body");
            assert_eq!(s.verify_header(b"k", &value, b"body"), Ok(()), "{s:?}");
            assert_eq!(
                s.verify_header(b"k", &value, b"bodY"),
                Err(VerifyError::Mismatch),
                "{s:?}"
            );
        }
    }

    #[test]
    fn the_github_vector_verifies_as_a_configured_header() {
        let s = scheme(Some("sha256="), Encoding::Hex);
        let value = crate::github::sign(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(
            s.verify_header(b"It's a Secret to Everybody", &value, b"Hello, World!"),
            Ok(())
        );
    }

    #[test]
    fn wrong_shapes_are_malformed_and_absence_is_missing() {
        let s = scheme(Some("sha256="), Encoding::Base64);
        let m = |what| Err(VerifyError::malformed(&s.header, what));
        assert_eq!(
            s.verify_header(b"k", "sha1=AAAA", b""),
            m(Malformation::NoSignature)
        );
        assert_eq!(
            s.verify_header(b"k", "sha256=@@", b""),
            m(Malformation::Encoding)
        );
        assert_eq!(
            s.verify(b"k", &HeaderMap::new(), b""),
            Err(VerifyError::MissingHeader(s.header.clone()))
        );
    }
}
