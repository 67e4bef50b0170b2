//! API authentication: `Authorization: Bearer <api key or admin JWT>`.
//!
//! Interim: the platform's `Authenticator`/`ApiConfig` are moving from the webhook dispatcher
//! into `service_runtime::http_api`; until they land this module accepts the configured API
//! keys only (digests compared in constant time by the shared [`ApiKeys`]) and has the same
//! shape, so switching is a change of this one file.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use service_runtime::http_api::{ApiKeys, bearer};
use service_runtime::{ConfigError, reject_placeholder};

use super::error::ApiError;

/// Who may call the REST API (the `api` section).
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
            .finish_non_exhaustive()
    }
}

/// Checks credentials.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: ApiKeys,
}

impl Authenticator {
    /// From the `api` section.
    pub fn new(config: &ApiConfig) -> Self {
        Self {
            keys: ApiKeys::new(&config.keys),
        }
    }

    /// Whether a bearer credential is accepted.
    pub fn accepts(&self, credential: &str) -> bool {
        self.keys.accepts(credential)
    }
}

/// Middleware rejecting requests without accepted credentials.
pub async fn require(State(auth): State<Authenticator>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(c) if auth.accepts(c) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// The `api` section's rules: the API is never open, keys are at least 16 characters, JWT
/// secrets at least 32 bytes, and no shipped placeholder is accepted.
pub fn validate(api: &ApiConfig) -> Result<(), ConfigError> {
    if api.keys.is_empty() && api.jwt_hs256_secret.is_empty() {
        return Err(ConfigError::new(
            "api.keys",
            "set api.keys or api.jwt_hs256_secret: the API is never open",
        ));
    }
    for key in &api.keys {
        reject_placeholder("api.keys", key)?;
        if key.len() < 16 {
            return Err(ConfigError::new(
                "api.keys",
                "each key must be at least 16 characters",
            ));
        }
    }
    reject_placeholder("api.jwt_hs256_secret", &api.jwt_hs256_secret)?;
    if !api.jwt_hs256_secret.is_empty() && api.jwt_hs256_secret.len() < 32 {
        return Err(ConfigError::new(
            "api.jwt_hs256_secret",
            "must be at least 32 bytes",
        ));
    }
    Ok(())
}
