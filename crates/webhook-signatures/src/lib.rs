//! Webhook signatures: how a receiver proves that a webhook came from the sender that holds
//! the shared secret, and (for the schemes that sign a timestamp) that it is recent.
//!
//! One module per scheme, each with the same shape: signing (webhook-dispatcher's outbound
//! deliveries) beside verification (integrations-runner's inbound webhooks):
//!
//! | module | headers | signed bytes | encoding |
//! |---|---|---|---|
//! | [`stripe`] | `Stripe-Signature: t=T,v1=S[,v1=S…]` | `"{T}.{body}"` | hex |
//! | [`github`] | `X-Hub-Signature-256: sha256=S` | `body` | hex |
//! | [`standard`] | `webhook-id: I`, `webhook-timestamp: T`, `webhook-signature: v1,S[ v1,S…]` | `"{I}.{T}.{body}"` | base64 |
//! | [`hmac_header`] | a configured header, optional prefix | `body` | hex or base64 |
//!
//! All of them are HMAC-SHA256. A sender on a hot path prepares each secret once as an
//! [`HmacKey`] (or a [`standard::SigningKey`], which holds one) and appends signatures into
//! its own header buffer with the schemes' `write_signature`, so signing allocates nothing. Comparisons are constant time (`hmac`'s `verify_slice`), a
//! header carrying several signatures (a sender rotating its secret) passes when any one
//! matches, and the signed timestamp must lie within a [`Tolerance`] of the receiver's clock in
//! either direction. Failures are typed ([`VerifyError`]); no error repeats a secret.
//!
//! The signature is checked before the timestamp, so [`VerifyError::StaleTimestamp`] means "sent
//! by the secret's holder, but too old (or too far ahead)": a replay or a skewed clock.
#![warn(missing_docs)]

pub mod github;
pub mod hmac_header;
mod mac;
pub mod standard;
pub mod stripe;

use http::{HeaderMap, HeaderName};

pub use mac::HmacKey;

/// How far a signed timestamp may be from the receiver's clock, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tolerance {
    seconds: u64,
}

impl Tolerance {
    /// The default of Stripe's and the Standard Webhooks libraries: five minutes.
    pub const DEFAULT: Self = Self { seconds: 300 };

    /// A tolerance of `seconds`.
    pub const fn from_secs(seconds: u64) -> Self {
        Self { seconds }
    }

    /// The tolerance in seconds.
    pub const fn as_secs(self) -> u64 {
        self.seconds
    }

    /// Whether `timestamp` (Unix seconds) is within the tolerance of `now`. `abs_diff`: a hostile
    /// timestamp near `i64::MIN`/`MAX` must not overflow.
    pub fn admits(self, timestamp: i64, now: i64) -> bool {
        now.abs_diff(timestamp) <= self.seconds
    }

    fn check(self, timestamp: i64, now: i64) -> Result<(), VerifyError> {
        if self.admits(timestamp, now) {
            Ok(())
        } else {
            Err(VerifyError::StaleTimestamp)
        }
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What is wrong with a header, for [`VerifyError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformation {
    /// The value is not visible ASCII.
    NotText,
    /// No timestamp, or one that is not an integer number of seconds.
    Timestamp,
    /// No signature of the expected version (`v1`) or prefix.
    NoSignature,
    /// A signature that is not valid hex or base64.
    Encoding,
    /// More signatures than a sender needs for a rotation ([`MAX_SIGNATURES`]).
    TooManySignatures,
}

/// The most signatures one header may carry; more is refused rather than computed.
pub const MAX_SIGNATURES: usize = 16;

/// Why a webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("missing header {0}")]
    MissingHeader(HeaderName),
    /// A header is present but not in the scheme's shape.
    #[error("malformed header {header}: {what:?}")]
    Malformed {
        /// The header.
        header: HeaderName,
        /// What is wrong with it.
        what: Malformation,
    },
    /// No signature matches the body under the secret.
    #[error("signature mismatch")]
    Mismatch,
    /// The signature matches, but its timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance")]
    StaleTimestamp,
}

impl VerifyError {
    /// [`Self::Malformed`] for `header`.
    pub fn malformed(header: &HeaderName, what: Malformation) -> Self {
        Self::Malformed {
            header: header.clone(),
            what,
        }
    }
}

/// The value of `name` as text: [`VerifyError::MissingHeader`] when absent,
/// [`Malformation::NotText`] when not visible ASCII. A repeated header: the first value.
pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<&'a str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.clone()))?;
    value
        .to_str()
        .map_err(|_| VerifyError::malformed(name, Malformation::NotText))
}

/// A signed Unix timestamp in seconds: digits only (no sign, no spaces), at most 19 of them.
pub(crate) fn parse_timestamp(value: &str, header: &HeaderName) -> Result<i64, VerifyError> {
    let bad = || VerifyError::malformed(header, Malformation::Timestamp);
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse::<i64>().map_err(|_| bad())
}
