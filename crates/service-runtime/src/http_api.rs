//! What every operator-facing HTTP API of the platform shares: bearer API keys and the JSON
//! error body.
//!
//! - [`ApiKeys`] keeps only SHA-256 digests of the configured keys and compares a presented
//!   key against every one of them in constant time, so neither timing nor a memory dump gives
//!   a key away.
//! - [`bearer`] reads `Authorization: Bearer <credential>`.
//! - [`ApiConfig`] (the `api` section), [`Authenticator`] and the [`require`] middleware: an
//!   API key or an admin JWT (HS256), with a configured issuer or audience *required*.
//! - [`error_response`] is the one error shape: `{"error": {"code", "message", "field"?}}`;
//!   a 401 also carries `WWW-Authenticate: Bearer`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{ConfigError, reject_placeholder};

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

/// Who may call a REST API (the `api` section): a bearer API key, or an admin JWT (HS256).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Accepted API keys (`Authorization: Bearer <key>`). Never logged.
    pub keys: Vec<String>,
    /// HS256 secret of admin JWTs; empty disables JWT authentication. Never logged.
    pub jwt_hs256_secret: String,
    /// Required `iss` of admin JWTs, when set.
    pub jwt_issuer: String,
    /// Required `aud` of admin JWTs, when set.
    pub jwt_audience: String,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("jwt", &!self.jwt_hs256_secret.is_empty())
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

impl ApiConfig {
    /// The section's rules: the API is never open, keys are at least 16 characters, a JWT
    /// secret at least 32 bytes, and no shipped placeholder is accepted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() && self.jwt_hs256_secret.is_empty() {
            return Err(ConfigError::new(
                "api.keys",
                "set api.keys or api.jwt_hs256_secret: the API is never open",
            ));
        }
        for key in &self.keys {
            reject_placeholder("api.keys", key)?;
            if key.len() < 16 {
                return Err(ConfigError::new(
                    "api.keys",
                    "each key must be at least 16 characters",
                ));
            }
        }
        reject_placeholder("api.jwt_hs256_secret", &self.jwt_hs256_secret)?;
        if !self.jwt_hs256_secret.is_empty() && self.jwt_hs256_secret.len() < 32 {
            return Err(ConfigError::new(
                "api.jwt_hs256_secret",
                "must be at least 32 bytes",
            ));
        }
        Ok(())
    }
}

/// Checks an API's bearer credentials: API keys as SHA-256 digests compared in constant time
/// ([`ApiKeys`]), or admin JWTs.
#[derive(Clone)]
pub struct Authenticator {
    keys: ApiKeys,
    jwt: Option<Arc<(DecodingKey, Validation)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys)
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// From the `api` section.
    pub fn new(config: &ApiConfig) -> Self {
        let jwt = (!config.jwt_hs256_secret.is_empty()).then(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_nbf = true;
            // jsonwebtoken compares `iss`/`aud` only when a token carries them; a configured
            // issuer or audience must also be required, or a token without it passes.
            let mut required = vec!["exp"];
            if !config.jwt_issuer.is_empty() {
                validation.set_issuer(&[config.jwt_issuer.as_str()]);
                required.push("iss");
            }
            if config.jwt_audience.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&[config.jwt_audience.as_str()]);
                required.push("aud");
            }
            validation.set_required_spec_claims(&required);
            Arc::new((
                DecodingKey::from_secret(config.jwt_hs256_secret.as_bytes()),
                validation,
            ))
        });
        Self {
            keys: ApiKeys::new(&config.keys),
            jwt,
        }
    }

    /// Whether a bearer credential is accepted.
    pub fn accepts(&self, credential: &str) -> bool {
        if self.keys.accepts(credential) {
            return true;
        }
        match &self.jwt {
            Some(jwt) => {
                jsonwebtoken::decode::<serde_json::Value>(credential, &jwt.0, &jwt.1).is_ok()
            }
            None => false,
        }
    }
}

/// Middleware answering 401 (`unauthorized`) to requests without accepted credentials.
pub async fn require(State(auth): State<Authenticator>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(c) if auth.accepts(c) => next.run(request).await,
        _ => error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unauthorized",
            None,
        ),
    }
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

#[cfg(test)]
mod auth_tests {
    #![allow(clippy::unwrap_used)]
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;

    const SECRET: &str = "an-admin-jwt-secret-of-32-bytes-or-more";

    fn app(issuer: &str, audience: &str) -> Router {
        let auth = Authenticator::new(&ApiConfig {
            keys: vec![],
            jwt_hs256_secret: SECRET.to_owned(),
            jwt_issuer: issuer.to_owned(),
            jwt_audience: audience.to_owned(),
        });
        Router::new()
            .route("/p", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(auth, require))
    }

    fn token(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    async fn status(app: Router, claims: &Value) -> StatusCode {
        let request = Request::get("/p")
            .header("authorization", format!("Bearer {}", token(claims)))
            .body(Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    }

    fn exp() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + 600
    }

    #[tokio::test]
    async fn configured_issuer_and_audience_are_required() {
        let app = app("crm", "webhooks");
        let full = json!({"exp": exp(), "iss": "crm", "aud": "webhooks"});
        assert_eq!(status(app.clone(), &full).await, StatusCode::OK);
        let no_aud = json!({"exp": exp(), "iss": "crm"});
        assert_eq!(status(app.clone(), &no_aud).await, StatusCode::UNAUTHORIZED);
        let no_iss = json!({"exp": exp(), "aud": "webhooks"});
        assert_eq!(status(app.clone(), &no_iss).await, StatusCode::UNAUTHORIZED);
        let wrong_aud = json!({"exp": exp(), "iss": "crm", "aud": "other"});
        assert_eq!(status(app, &wrong_aud).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn unconfigured_claims_are_not_required_but_exp_is() {
        let app = app("", "");
        assert_eq!(
            status(app.clone(), &json!({"exp": exp()})).await,
            StatusCode::OK
        );
        assert_eq!(
            status(app, &json!({"sub": "admin"})).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
