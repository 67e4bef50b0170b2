//! API authentication: `Authorization: Bearer <api key or admin JWT>`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use service_runtime::http_api::{ApiKeys, bearer};

use super::error::ApiError;
use crate::config::ApiConfig;

/// Checks credentials. Keys are kept as SHA-256 digests and compared in constant time
/// ([`ApiKeys`]).
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

/// Middleware rejecting requests without accepted credentials.
pub async fn require(State(auth): State<Authenticator>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(c) if auth.accepts(c) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
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
        time::OffsetDateTime::now_utc().unix_timestamp() + 600
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
