//! What the executor needs of an integration, parsed once when it is loaded: the base URL,
//! the auth with its decrypted secrets (memory only, redacted `Debug`), the endpoints'
//! templates and the configured rate limit.

use std::collections::HashMap;
use std::time::Duration;

use super::request::{RequestTemplate, Template};
use crate::model::{self, BodySpec, Credentials, CredentialsMismatch, Integration, Secrets};
use crate::ratelimit::Bucket;

/// A secret value; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An integration as the executor sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its id.
    pub id: String,
    /// Its project.
    pub project_id: String,
    /// Whether it may be executed.
    pub is_active: bool,
    /// Base URL of the third-party API.
    pub base_url: reqwest::Url,
    /// How requests authenticate.
    pub auth: Auth,
    /// Endpoints by name.
    pub endpoints: HashMap<String, EndpointPlan>,
    /// `rate_limit`, when configured.
    pub bucket: Option<Bucket>,
}

/// One endpoint.
#[derive(Debug, Clone)]
pub struct EndpointPlan {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path, query and header templates.
    pub template: RequestTemplate,
    /// The JSON body: none, the caller's `requestData`, or a template over the params.
    pub body: BodySpec,
    /// Per-attempt timeout overriding `execution.timeout_ms`.
    pub timeout: Option<Duration>,
    /// Whether a connect error or 502/503/504 may be retried: the endpoint's `idempotent`,
    /// by default true for GET, HEAD, PUT and DELETE. POST and PATCH are retried only when the
    /// endpoint declares itself idempotent, so a POST is never silently sent twice.
    pub retryable: bool,
}

impl EndpointPlan {
    /// The plan of a model endpoint.
    pub fn from_model(e: &model::Endpoint) -> Self {
        let parse = |t: &model::Template| Template::parse(t.as_str());
        Self {
            method: e.method.to_http(),
            template: RequestTemplate {
                path: parse(&e.path),
                query: e.query.iter().map(|(k, v)| (k.clone(), parse(v))).collect(),
                headers: e
                    .headers
                    .iter()
                    .map(|(k, v)| (k.name().as_str().to_owned(), parse(v)))
                    .collect(),
                required: e.required.iter().map(|n| n.as_str().to_owned()).collect(),
            },
            body: e.body.clone(),
            timeout: e.timeout_ms.map(Duration::from_millis),
            retryable: e.is_idempotent(),
        }
    }
}

impl Target {
    /// The executor's view of an integration and its decrypted secrets.
    pub fn from_model(i: &Integration, secrets: &Secrets) -> Result<Self, CredentialsMismatch> {
        let secret = |s: &str| Secret(s.to_owned());
        let auth = match i.credentials(secrets)? {
            Credentials::None => Auth::None,
            Credentials::Bearer(t) => Auth::Bearer(secret(t)),
            Credentials::Header { name, value } => Auth::Header {
                name: name.clone(),
                value: secret(value),
            },
            Credentials::Query { name, value } => Auth::Query {
                name: name.to_owned(),
                value: secret(value),
            },
            Credentials::Basic { username, password } => Auth::Basic {
                username: username.to_owned(),
                password: secret(password),
            },
            Credentials::OAuth2 {
                token_url,
                scope,
                audience,
                client_id,
                client_secret,
            } => Auth::OAuth2(OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.to_owned(),
                client_secret: secret(client_secret),
                scope: scope.map(str::to_owned),
                audience: audience.map(str::to_owned),
            }),
        };
        let mut endpoints: HashMap<String, EndpointPlan> = i
            .endpoints
            .iter()
            .map(|(name, e)| (name.as_str().to_owned(), EndpointPlan::from_model(e)))
            .collect();
        endpoints
            .entry(model::HEALTH_CHECK.to_owned())
            .or_insert_with(|| EndpointPlan::from_model(&model::Endpoint::default_health_check()));
        Ok(Self {
            id: i.id.as_str().to_owned(),
            project_id: i.project_id.as_str().to_owned(),
            is_active: i.is_active,
            base_url: i.base_url.url().clone(),
            auth,
            endpoints,
            bucket: i.rate_limit.map(|r| Bucket {
                requests: r.requests,
                per_seconds: r.per_seconds,
            }),
        })
    }
}

/// Where credentials go.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// A header of the integration's choosing.
    Header {
        /// The header.
        name: reqwest::header::HeaderName,
        /// Its value.
        value: Secret,
    },
    /// A query parameter.
    Query {
        /// The parameter.
        name: String,
        /// Its value.
        value: Secret,
    },
    /// HTTP basic.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// OAuth2 client credentials: a token fetched from `token_url`, cached until it expires.
    OAuth2(OAuth2),
}

/// OAuth2 client-credentials settings.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    /// The token endpoint (SSRF-guarded like every request).
    pub token_url: reqwest::Url,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// The scope asked for, if any.
    pub scope: Option<String>,
    /// The audience asked for, if any.
    pub audience: Option<String>,
}
