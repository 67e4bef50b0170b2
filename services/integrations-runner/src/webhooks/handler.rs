//! `POST /integrations/{integrationId}/webhooks`: the provider's call.
//!
//! In order: the body is read up to `webhooks.max_body_bytes` (413 past it); the integration is
//! looked up (404 when unknown, inactive or without a webhook, one answer for the three); the
//! signature is verified with the integration's scheme and secret (401); the event is named
//! (400 when the delivery does not say its type); the webhook is stored in JetStream with the
//! provider's delivery id as `Nats-Msg-Id`, and only once the stream has acknowledged it is the
//! provider answered 200 (503 otherwise, so it retries).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use service_runtime::http_api::error_response;
use webhook_signatures::{Tolerance, VerifyError, github, standard, stripe};

use super::WebhookState;
use super::event::{self, EventError};
use super::stream::{self, StoredWebhook};
use super::target::{Verifier, WebhookTarget};
use events::subject::INTEGRATION_WEBHOOKS_STREAM;

/// How one request ended: its answer and its `integration_webhooks_total{outcome}` label, in
/// one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
    TooLarge,
    UnreadableBody,
    NotFound,
    MissingSignature,
    InvalidSignature,
    Stale,
    Event(EventError),
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::TooLarge => "too_large",
            Self::UnreadableBody | Self::Event(_) => "bad_request",
            Self::NotFound => "not_found",
            Self::MissingSignature => "missing_signature",
            Self::InvalidSignature => "invalid_signature",
            Self::Stale => "stale",
            Self::Unavailable => "unavailable",
        }
    }

    fn response(self) -> Response {
        let error = |status, code, message| error_response(status, code, message, None);
        match self {
            Self::Accepted | Self::Duplicate => Json(json!({
                "received": true,
                "duplicate": self == Self::Duplicate,
            }))
            .into_response(),
            Self::TooLarge => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the webhook body is too large",
            ),
            Self::UnreadableBody => error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the body could not be read",
            ),
            Self::NotFound => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no webhook is configured here",
            ),
            Self::MissingSignature => error(
                StatusCode::UNAUTHORIZED,
                "missing_signature",
                "the signature headers are missing",
            ),
            Self::InvalidSignature => error(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the signature does not verify",
            ),
            Self::Stale => error(
                StatusCode::UNAUTHORIZED,
                "stale_timestamp",
                "the signed timestamp is outside the tolerance",
            ),
            Self::Event(EventError::MissingType) => error(
                StatusCode::BAD_REQUEST,
                "missing_event_type",
                "the delivery does not name its event type",
            ),
            Self::Event(EventError::InvalidType) => error(
                StatusCode::BAD_REQUEST,
                "invalid_event_type",
                "the event type is empty, too long or not [A-Za-z0-9._:/-]",
            ),
            Self::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook could not be stored; retry later",
            ),
        }
    }
}

/// The route's handler.
pub(super) async fn receive(
    State(state): State<WebhookState>,
    Path(integration_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = handle(&state, &integration_id, &headers, body).await;
    metrics::counter!("integration_webhooks_total", "outcome" => outcome.label()).increment(1);
    outcome.response()
}

async fn handle(
    state: &WebhookState,
    integration_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Outcome {
    // The body limit layer has bounded the read; its rejection says which way it failed.
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Outcome::TooLarge;
        }
        Err(_) => return Outcome::UnreadableBody,
    };
    // Not a subject token: no integration can have it.
    let Ok(id) = events::Token::new("integration id", integration_id) else {
        return Outcome::NotFound;
    };
    let target = match state.inner.targets.get(id.as_str()).await {
        Ok(Some(target)) => target,
        Ok(None) => return Outcome::NotFound,
        Err(err) => {
            tracing::warn!(integration = %id.as_str(), error = %err, "webhook target lookup failed");
            return Outcome::Unavailable;
        }
    };
    let max_tolerance = Tolerance::from_secs(state.inner.config.max_tolerance_secs());
    if let Err(err) = verify(&target, headers, &body, unix_now(), max_tolerance) {
        tracing::debug!(integration = %id.as_str(), error = %err, "webhook refused");
        return match err {
            VerifyError::MissingHeader(_) => Outcome::MissingSignature,
            VerifyError::Malformed { .. } | VerifyError::Mismatch => Outcome::InvalidSignature,
            VerifyError::StaleTimestamp => Outcome::Stale,
        };
    }
    // Parsed only once verified: unauthenticated bytes cost no more than an HMAC.
    let data = event::body_data(&body);
    let event = match event::event_name(&target, headers, &data) {
        Ok(event) => event,
        Err(err) => return Outcome::Event(err),
    };
    let delivery = event::delivery_id(&target, headers, &data, &body);
    let stored = StoredWebhook {
        integration_id: target.integration_id.clone(),
        project_id: target.project_id.clone(),
        event,
        data,
        timestamp: time::OffsetDateTime::now_utc(),
    };
    let Ok(payload) = serde_json::to_vec(&stored) else {
        return Outcome::Unavailable;
    };
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(format!("{}:{delivery}", id.as_str()))
        .expected_stream(INTEGRATION_WEBHOOKS_STREAM);
    let timeout = Duration::from_millis(state.inner.config.publish_timeout_ms);
    let js = &state.inner.js;
    let published = tokio::time::timeout(timeout, async {
        js.send_publish(stream::subject(&id), message).await?.await
    })
    .await;
    match published {
        Ok(Ok(ack)) if ack.duplicate => Outcome::Duplicate,
        Ok(Ok(_)) => Outcome::Accepted,
        Ok(Err(err)) if err.kind() == PublishErrorKind::MaxPayloadExceeded => Outcome::TooLarge,
        Ok(Err(err)) => {
            tracing::warn!(integration = %id.as_str(), error = %err, "storing a webhook failed");
            Outcome::Unavailable
        }
        Err(_) => {
            tracing::warn!(integration = %id.as_str(), "storing a webhook timed out");
            Outcome::Unavailable
        }
    }
}

/// Verifies with the integration's scheme; its tolerance is capped at `max_tolerance` (half the
/// duplicate window, see `WebhooksConfig::duplicate_window_secs`).
fn verify(
    target: &WebhookTarget,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    max_tolerance: Tolerance,
) -> Result<(), VerifyError> {
    let cap = |t: Tolerance| Tolerance::from_secs(t.as_secs().min(max_tolerance.as_secs()));
    match &target.verifier {
        Verifier::Stripe { secret, tolerance } => {
            stripe::verify(&secret.0, headers, body, now, cap(*tolerance))
        }
        Verifier::Github { secret } => github::verify(&secret.0, headers, body),
        Verifier::Standard { key, tolerance } => {
            standard::verify(key, headers, body, now, cap(*tolerance))
        }
        Verifier::Hmac { scheme, secret, .. } => scheme.verify(&secret.0, headers, body),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
