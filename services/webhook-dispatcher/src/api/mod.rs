//! The REST API: subscriptions, secrets, deliveries, redelivery, the event-type catalog.
//!
//! Every route is listed once in [`ROUTES`]; the OpenAPI document (`GET /openapi.json`) is
//! tested against that list and the router, so the three cannot drift apart.

pub mod auth;
pub mod error;
pub mod extract;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use self::error::ApiError;
use self::extract::ApiJson;
use crate::config::DeliveryConfig;
use crate::intake::PatternCache;
use crate::signing::{SigningKey, generate_secret};
use crate::store::{
    DeliveryStatus, NewSubscription, OutboxEvent, Redelivery, Store, SubscriptionPatch,
};
use crate::worker::literal_ip;
use egress::AddressPolicy;
use events::pattern::Pattern;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every API route as `(path, method)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("/crm/webhook-subscriptions", "get"),
    ("/crm/webhook-subscriptions", "post"),
    ("/crm/webhook-subscriptions/{id}", "get"),
    ("/crm/webhook-subscriptions/{id}", "patch"),
    ("/crm/webhook-subscriptions/{id}", "delete"),
    ("/crm/webhook-subscriptions/{id}/secret", "get"),
    ("/crm/webhook-subscriptions/{id}/secret/rotate", "post"),
    ("/crm/webhook-subscriptions/{id}/test", "post"),
    ("/crm/webhook-subscriptions/{id}/deliveries", "get"),
    ("/crm/webhook-subscriptions/{id}/recover", "post"),
    ("/crm/webhook-deliveries/{id}", "get"),
    ("/crm/webhook-deliveries/{id}/redeliver", "post"),
    ("/crm/webhook-event-types", "get"),
];

/// What handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Data access.
    pub store: Store,
    /// Defaults and limits.
    pub delivery: Arc<DeliveryConfig>,
    /// Destination policy, for IP-literal URLs at creation.
    pub policy: Arc<AddressPolicy>,
    /// Invalidated when subscriptions change.
    pub patterns: Arc<PatternCache>,
    /// Wakes the local worker after a test event or redelivery.
    pub work_ready: Arc<tokio::sync::Notify>,
}

/// The API router; every route requires authentication except `/openapi.json`.
pub fn router(state: ApiState, auth: auth::Authenticator) -> Router {
    let protected = Router::new()
        .route(
            "/crm/webhook-subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route(
            "/crm/webhook-subscriptions/{id}",
            get(get_subscription)
                .patch(update_subscription)
                .delete(delete_subscription),
        )
        .route("/crm/webhook-subscriptions/{id}/secret", get(get_secret))
        .route(
            "/crm/webhook-subscriptions/{id}/secret/rotate",
            post(rotate_secret),
        )
        .route("/crm/webhook-subscriptions/{id}/test", post(send_test))
        .route(
            "/crm/webhook-subscriptions/{id}/deliveries",
            get(list_deliveries),
        )
        .route("/crm/webhook-subscriptions/{id}/recover", post(recover))
        .route("/crm/webhook-deliveries/{id}", get(get_delivery))
        .route("/crm/webhook-deliveries/{id}/redeliver", post(redeliver))
        .route("/crm/webhook-event-types", get(event_types))
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require))
        .with_state(state);
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .merge(protected)
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::field("id", "must be a UUID"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscription {
    url: String,
    event_types: Vec<String>,
    #[serde(default)]
    description: String,
    secret: Option<String>,
    max_attempts: Option<i32>,
    rate_limit_per_sec: Option<i32>,
    max_concurrency: Option<i32>,
}

fn validate_url(state: &ApiState, raw: &str) -> Result<(), ApiError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ApiError::field("url", format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::field("url", "scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::field("url", "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::field("url", "must not carry credentials"));
    }
    if let Some(ip) = literal_ip(&url) {
        state
            .policy
            .check(ip)
            .map_err(|why| ApiError::field("url", why.to_string()))?;
    }
    Ok(())
}

/// The patterns of a request, parsed; the error names the first one that does not parse.
fn parse_patterns(patterns: &[String]) -> Result<Vec<Pattern>, ApiError> {
    if patterns.is_empty() {
        return Err(ApiError::field(
            "event_types",
            "must list at least one pattern",
        ));
    }
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Pattern::parse(p)
                .map_err(|why| ApiError::field(format!("event_types[{i}]"), why.to_string()))
        })
        .collect()
}

/// A secret given in a request, checked; `None`: a fresh one.
fn secret_or_generated(secret: Option<String>) -> Result<String, ApiError> {
    match secret {
        Some(s) => {
            SigningKey::parse(&s).map_err(|why| ApiError::field("secret", why.to_string()))?;
            Ok(s)
        }
        None => Ok(generate_secret()),
    }
}

fn validate_range(
    field: &str,
    value: Option<i32>,
    range: std::ops::RangeInclusive<i32>,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !range.contains(&v) => Err(ApiError::field(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        )),
        _ => Ok(()),
    }
}

async fn create_subscription(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateSubscription>,
) -> Result<Response, ApiError> {
    validate_url(&state, &body.url)?;
    let event_types = parse_patterns(&body.event_types)?;
    validate_range("max_attempts", body.max_attempts, 1..=50)?;
    validate_range("rate_limit_per_sec", body.rate_limit_per_sec, 1..=10_000)?;
    validate_range("max_concurrency", body.max_concurrency, 1..=1_000)?;
    let secret = secret_or_generated(body.secret)?;
    let sub = state
        .store
        .create_subscription(&NewSubscription {
            url: body.url,
            event_types,
            description: body.description,
            max_attempts: body
                .max_attempts
                .unwrap_or(state.delivery.default_max_attempts),
            rate_limit_per_sec: body.rate_limit_per_sec,
            max_concurrency: body
                .max_concurrency
                .unwrap_or(state.delivery.default_max_concurrency),
            secret: secret.clone(),
        })
        .await?;
    state.patterns.invalidate().await;
    let mut out = serde_json::to_value(&sub).unwrap_or_default();
    out["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<String>,
    cursor: Option<String>,
    status: Option<String>,
    event_type: Option<String>,
}

impl Page {
    fn limit(&self) -> Result<i64, ApiError> {
        match &self.limit {
            None => Ok(50),
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| ApiError::field("limit", "must be 1 to 200")),
        }
    }

    fn cursor(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| ApiError::field("cursor", "must be a cursor from a previous page"))
            })
            .transpose()
    }
}

async fn list_subscriptions(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit()?;
    let subs = state
        .store
        .list_subscriptions(limit, page.cursor()?)
        .await?;
    let next = (subs.len() as i64 == limit)
        .then(|| subs.last().map(|s| s.id))
        .flatten();
    Ok(Json(json!({"data": subs, "next_cursor": next})))
}

async fn get_subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sub = state
        .store
        .get_subscription(parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    Ok(Json(serde_json::to_value(sub).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSubscription {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    description: Option<String>,
    enabled: Option<bool>,
    max_attempts: Option<i32>,
    /// Absent: unchanged; `null`: no limit; a number: the limit.
    #[serde(default, deserialize_with = "present")]
    rate_limit_per_sec: Option<Value>,
    max_concurrency: Option<i32>,
}

/// Keeps an explicit `null` apart from an absent field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

async fn update_subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSubscription>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(url) = &body.url {
        validate_url(&state, url)?;
    }
    let event_types = body
        .event_types
        .as_deref()
        .map(parse_patterns)
        .transpose()?;
    validate_range("max_attempts", body.max_attempts, 1..=50)?;
    validate_range("max_concurrency", body.max_concurrency, 1..=1_000)?;
    let rate_limit_per_sec = match body.rate_limit_per_sec {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => {
            let n = v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ApiError::field(
                        "rate_limit_per_sec",
                        "must be 1 to 10000, or null for no limit",
                    )
                })?;
            Some(Some(n))
        }
    };
    let patch = SubscriptionPatch {
        url: body.url,
        event_types,
        description: body.description,
        enabled: body.enabled,
        max_attempts: body.max_attempts,
        rate_limit_per_sec,
        max_concurrency: body.max_concurrency,
    };
    let sub = state
        .store
        .update_subscription(id, &patch)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    state.patterns.invalidate().await;
    state.work_ready.notify_one();
    Ok(Json(serde_json::to_value(sub).unwrap_or_default()))
}

async fn delete_subscription(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_subscription(parse_id(&id)?).await? {
        return Err(ApiError::NotFound("subscription"));
    }
    state.patterns.invalidate().await;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secret = state
        .store
        .current_secret(parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    Ok(Json(json!({"secret": secret})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    secret: Option<String>,
    grace_secs: Option<i64>,
}

async fn rotate_secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateSecret>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let secret = secret_or_generated(body.secret)?;
    let grace = body
        .grace_secs
        .unwrap_or(state.delivery.rotation_grace_secs as i64);
    if !(0..=30 * 86_400).contains(&grace) {
        return Err(ApiError::field("grace_secs", "must be 0 to 2592000"));
    }
    if !state.store.rotate_secret(id, &secret, grace).await? {
        return Err(ApiError::NotFound("subscription"));
    }
    Ok(Json(
        json!({"secret": secret, "previous_valid_for_secs": grace}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEvent {
    event_type: Option<String>,
    data: Option<Value>,
}

async fn send_test(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TestEvent>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .get_subscription(id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    let event_type = events::EventType::parse(body.event_type.as_deref().unwrap_or("webhook.test"))
        .map_err(|e| ApiError::field("event_type", e.to_string()))?;
    let envelope = events::Envelope::new(
        event_type,
        &id.simple().to_string(),
        body.data
            .unwrap_or_else(|| json!({"message": "test event"})),
    )
    .map_err(|e| ApiError::field("event_type", e.to_string()))?;
    let payload = String::from_utf8_lossy(&envelope.encode()).into_owned();
    let t = envelope.event_type.to_string();
    state
        .store
        .insert_outbox(
            &[OutboxEvent {
                id: envelope.id,
                event_type: t.clone(),
                payload,
                traceparent: None,
            }],
            &[(envelope.id, id, t)],
        )
        .await?;
    state.work_ready.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": envelope.id}))).into_response())
}

async fn list_deliveries(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let status = page
        .status
        .as_deref()
        .map(str::parse::<DeliveryStatus>)
        .transpose()
        .map_err(|why| ApiError::field("status", why.to_string()))?;
    let limit = page.limit()?;
    state
        .store
        .get_subscription(id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    let deliveries = state
        .store
        .list_deliveries(
            id,
            status,
            page.event_type.as_deref(),
            limit,
            page.cursor()?,
        )
        .await?;
    let next = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id))
        .flatten();
    let data: Vec<Value> = deliveries.iter().map(delivery_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

fn delivery_json(d: &crate::store::Delivery) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    v["attempt_log"] = serde_json::to_value(&d.attempt_log).unwrap_or_default();
    v
}

async fn get_delivery(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state
        .store
        .get_delivery(parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    Ok(Json(delivery_json(&d)))
}

async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.redeliver(parse_id(&id)?).await? {
        Redelivery::Scheduled => {}
        Redelivery::NotFound => return Err(ApiError::NotFound("delivery")),
        Redelivery::InFlight => {
            return Err(ApiError::Conflict {
                code: "delivery_in_flight",
                message: "an attempt of this delivery is in flight; retry after it is recorded",
            });
        }
    }
    state.work_ready.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": DeliveryStatus::Pending})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recover {
    since: String,
}

async fn recover(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let since = OffsetDateTime::parse(&body.since, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::field("since", "must be an RFC 3339 date-time"))?;
    state
        .store
        .get_subscription(id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    let n = state.store.recover(id, since).await?;
    state.work_ready.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"recovered": n}))).into_response())
}

async fn event_types() -> Json<Value> {
    let data: Vec<Value> = events::catalog::webhook_event_types()
        .map(|e| json!({"type": e.event_type, "domain": e.domain(), "description": e.description}))
        .collect();
    Json(json!({"data": data, "wildcards": ["<domain>.*", "*"]}))
}
