//! What every operator-facing HTTP API of the platform shares: bearer API keys and the JSON
//! error body.
//!
//! - [`ApiKeys`] keeps only SHA-256 digests of the configured keys and compares a presented
//!   key against every one of them in constant time, so neither timing nor a memory dump gives
//!   a key away.
//! - [`bearer`] reads `Authorization: Bearer <credential>`.
//! - [`error_response`] is the one error shape: `{"error": {"code", "message", "field"?}}`;
//!   a 401 also carries `WWW-Authenticate: Bearer`.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The accepted API keys, as digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys([{} redacted])", self.digests.len())
    }
}

impl ApiKeys {
    /// Accepts exactly `keys` (none: nothing is accepted).
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_ref().as_bytes()).into())
                .collect(),
        }
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every configured key is compared, each in
    /// constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(false, |found, key| found | constant_time_eq(key, &digest))
    }
}

/// Compares two digests without an early exit.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// `{"error": {"code", "message", "field"?}}` with `status`; a 401 also says
/// `WWW-Authenticate: Bearer`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response {
    let mut body = json!({"error": {"code": code, "message": message}});
    if let Some(field) = field {
        body["error"]["field"] = json!(field);
    }
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_matched_by_digest() {
        let keys = ApiKeys::new(&["alpha", "beta"]);
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("gamma"));
        assert!(!keys.accepts(""));
        assert!(!ApiKeys::new::<&str>(&[]).accepts("alpha"));
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn bearer_reads_the_credential() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  k1 ".parse().unwrap());
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "bearer k2".parse().unwrap());
        assert_eq!(bearer(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, "Basic a2V5".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn errors_have_one_shape() {
        let r = error_response(StatusCode::UNAUTHORIZED, "unauthorized", "no", None);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "bad",
            Some("url"),
        );
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
