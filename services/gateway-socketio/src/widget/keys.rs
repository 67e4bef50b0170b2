//! Widget keys: the PostgreSQL table, a short-lived lookup cache for handshakes, and the
//! operator API (`/api/widget-keys`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_runtime::http_api::{ApiKeys, bearer, error_response};
use service_runtime::net::limit_key;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::auth::Refusal;
use crate::key_cache::AgedCache;
use crate::limits::KeyedBuckets;

/// One widget key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct WidgetKey {
    /// The key itself (`wk_` + 32 alphanumerics); public, embedded in the customer's page.
    pub key: String,
    /// Operator's label.
    pub name: String,
    /// `scheme://host[:port]` origins the widget may connect from; `*` for any.
    pub allowed_origins: Vec<String>,
    /// Deactivated keys refuse handshakes.
    pub active: bool,
    /// Creation time.
    #[serde(with = "events::envelope::timestamp")]
    pub created_at: OffsetDateTime,
}

impl WidgetKey {
    /// Whether a handshake's `Origin` may use this key.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
            || origin.is_some_and(|origin| {
                let origin = origin.trim_end_matches('/');
                self.allowed_origins
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case(origin))
            })
    }
}

/// Client addresses whose unknown-key budget is remembered at once (see [`KeyedBuckets`]).
const THROTTLED_CLIENTS: usize = 100_000;

/// Widget keys in PostgreSQL with a brief cache in front. Unknown keys are cached too (`None`),
/// and each client address may cause only `widget.unknown_keys_per_minute` lookups that find
/// nothing, so random keys cannot turn into a stream of queries.
#[derive(Clone)]
pub struct WidgetKeys {
    pool: PgPool,
    cache: Arc<Mutex<AgedCache<Option<WidgetKey>>>>,
    misses: Arc<KeyedBuckets<IpAddr>>,
}

impl std::fmt::Debug for WidgetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WidgetKeys").finish_non_exhaustive()
    }
}

impl WidgetKeys {
    /// Over a pool whose migrations created `widget_keys`: lookups trusted for `ttl`, at most
    /// `capacity` of them cached, `unknown_per_minute` lookups finding nothing per client
    /// address (0 = unlimited).
    pub fn new(pool: PgPool, ttl: Duration, capacity: usize, unknown_per_minute: u32) -> Self {
        Self {
            pool,
            cache: Arc::new(Mutex::new(AgedCache::new(ttl, capacity))),
            misses: Arc::new(KeyedBuckets::new(unknown_per_minute, THROTTLED_CLIENTS)),
        }
    }

    fn cached(&self, key: &str) -> Option<Option<WidgetKey>> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key, Instant::now())
    }

    fn remember(&self, key: &str, value: Option<WidgetKey>) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value, Instant::now());
    }

    /// Forgets a key (it changed).
    pub fn invalidate(&self, key: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Decides a `/widget` handshake from `client`.
    pub async fn authorize(
        &self,
        key: &str,
        origin: Option<&str>,
        client: IpAddr,
    ) -> Result<WidgetKey, Refusal> {
        if !is_key(key) {
            return Err(Refusal::UnknownWidgetKey);
        }
        let found = match self.cached(key) {
            Some(found) => found,
            None => {
                // A token is taken before the query (so concurrent handshakes cannot all slip
                // through) and given back when the key exists: only misses count.
                let client = limit_key(client);
                if !self.misses.take(&client, Instant::now()) {
                    return Err(Refusal::UnknownKeysThrottled);
                }
                let looked_up = self.get(key).await;
                if !matches!(looked_up, Ok(None)) {
                    self.misses.refund(&client, Instant::now());
                }
                let found = looked_up.map_err(|e| {
                    tracing::warn!(error = %e, "widget key lookup failed");
                    Refusal::Unavailable
                })?;
                self.remember(key, found.clone());
                found
            }
        };
        let widget = found.ok_or(Refusal::UnknownWidgetKey)?;
        if !widget.active {
            return Err(Refusal::WidgetKeyInactive);
        }
        if !widget.allows(origin) {
            return Err(Refusal::OriginNotAllowed);
        }
        Ok(widget)
    }

    async fn get(&self, key: &str) -> Result<Option<WidgetKey>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key, name, allowed_origins, active, created_at FROM widget_keys WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
    }

    async fn list(&self) -> Result<Vec<WidgetKey>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key, name, allowed_origins, active, created_at FROM widget_keys
             ORDER BY created_at, key",
        )
        .fetch_all(&self.pool)
        .await
    }

    async fn create(&self, name: &str, origins: &[String]) -> Result<WidgetKey, sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO widget_keys (key, name, allowed_origins) VALUES ($1, $2, $3)
             RETURNING key, name, allowed_origins, active, created_at",
        )
        .bind(new_key())
        .bind(name)
        .bind(origins)
        .fetch_one(&self.pool)
        .await
    }

    async fn deactivate(&self, key: &str) -> Result<Option<WidgetKey>, sqlx::Error> {
        let row = sqlx::query_as(
            "UPDATE widget_keys SET active = false, deactivated_at = coalesce(deactivated_at, now())
             WHERE key = $1
             RETURNING key, name, allowed_origins, active, created_at",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        self.invalidate(key);
        Ok(row)
    }
}

/// Whether a string can be a widget key (it becomes a room name and a NATS subject token).
pub fn is_key(key: &str) -> bool {
    (4..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn new_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("wk_{body}")
}

/// An allowed origin: `*`, or `scheme://host[:port]` with nothing after.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// What the API needs.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The keys.
    pub keys: WidgetKeys,
    /// Announces deactivations to every instance.
    pub nats: async_nats::Client,
    /// The accepted bearer keys (`api.keys`).
    pub api_keys: ApiKeys,
}

/// `/api/widget-keys` routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/widget-keys", get(list).post(create))
        .route("/api/widget-keys/{key}", get(show))
        .route("/api/widget-keys/{key}/deactivate", post(deactivate))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// A 422 naming the field when there is one.
fn invalid(message: &str, field: Option<&str>) -> Response {
    error_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        message,
        field,
    )
}

fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "widget key not found",
        None,
    )
}

fn internal(e: &sqlx::Error) -> Response {
    tracing::error!(error = %e, "widget key API failed");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "database unavailable, retry later",
        None,
    )
}

async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let accepted = bearer(request.headers()).is_some_and(|key| state.api_keys.accepts(key));
    if accepted {
        next.run(request).await
    } else {
        // error_response adds `WWW-Authenticate: Bearer` to a 401.
        error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            None,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    allowed_origins: Vec<String>,
}

async fn create(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return invalid(&format!("invalid body: {e}"), None);
        }
    };
    let name = request.name.trim();
    if name.is_empty() || name.len() > 200 {
        return invalid("name: 1 to 200 characters", Some("name"));
    }
    if request.allowed_origins.is_empty() {
        return invalid(
            "allowed_origins: at least one origin (or \"*\")",
            Some("allowed_origins"),
        );
    }
    let mut origins = Vec::with_capacity(request.allowed_origins.len());
    for (i, origin) in request.allowed_origins.iter().enumerate() {
        let origin = origin.trim().trim_end_matches('/');
        if !valid_origin(origin) {
            let field = format!("allowed_origins[{i}]");
            return invalid(
                &format!("{field}: expected scheme://host[:port] without a path, or \"*\""),
                Some(&field),
            );
        }
        origins.push(origin.to_ascii_lowercase());
    }
    match state.keys.create(name, &origins).await {
        Ok(key) => (StatusCode::CREATED, Json(key)).into_response(),
        Err(e) => internal(&e),
    }
}

async fn list(State(state): State<ApiState>) -> Response {
    match state.keys.list().await {
        Ok(keys) => Json(json!({ "data": keys })).into_response(),
        Err(e) => internal(&e),
    }
}

async fn show(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    match state.keys.get(&key).await {
        Ok(Some(key)) => Json(key).into_response(),
        Ok(None) => not_found(),
        Err(e) => internal(&e),
    }
}

async fn deactivate(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    match state.keys.deactivate(&key).await {
        Ok(Some(widget)) => {
            // Every instance (this one included) disconnects the key's sockets when it hears
            // this. Core NATS: an instance that misses it still refuses new handshakes once its
            // cache entry expires.
            if let Err(e) = state
                .nats
                .publish(
                    events::subject::WIDGET_KEY_DEACTIVATED,
                    widget.key.clone().into(),
                )
                .await
            {
                tracing::warn!(error = %e, "could not announce a widget key deactivation");
            }
            Json(widget).into_response()
        }
        Ok(None) => not_found(),
        Err(e) => internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(origins: &[&str]) -> WidgetKey {
        WidgetKey {
            key: "wk_test".to_owned(),
            name: "t".to_owned(),
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            active: true,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard() {
        let k = key(&["https://acme.example"]);
        assert!(k.allows(Some("https://acme.example")));
        assert!(k.allows(Some("https://ACME.example/")));
        assert!(!k.allows(Some("https://acme.example.evil")));
        assert!(!k.allows(Some("http://acme.example")));
        assert!(!k.allows(None));
        assert!(key(&["*"]).allows(None));
    }

    #[test]
    fn origin_syntax() {
        assert!(valid_origin("https://a.example:8443"));
        assert!(valid_origin("*"));
        assert!(!valid_origin("https://a.example/path"));
        assert!(!valid_origin("a.example"));
        assert!(!valid_origin("ftp://a.example"));
    }

    #[test]
    fn generated_keys_are_valid_keys() {
        let k = new_key();
        assert!(is_key(&k) && k.starts_with("wk_") && k.len() == 35);
        assert_ne!(k, new_key());
    }
}
