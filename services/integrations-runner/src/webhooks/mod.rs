//! Inbound provider webhooks: verified, stored durably, mirrored to the gateways.
//!
//! - [`router`]: `POST /integrations/{integrationId}/webhooks`, called by the provider (no API
//!   key: the signature is the credential). Answered 200 only once the webhook is in the
//!   `INTEGRATION_WEBHOOKS` stream (see [`handler`] for the order of checks).
//! - [`start_mirror`]: provisions the stream and runs the shared durable consumer that
//!   publishes each stored webhook on `rt.integration.webhook`.
//! - Replays: a delivery seen again within `webhooks.duplicate_window_secs` is a JetStream
//!   duplicate (`Nats-Msg-Id` = `<integrationId>:<provider delivery id>`), answered
//!   `{"received": true, "duplicate": true}` and not mirrored again; a signed timestamp older
//!   than the tolerance is refused before that.
//!
//! Metrics: `integration_webhooks_total{outcome}` (accepted, duplicate, invalid_signature,
//! missing_signature, stale, too_large, not_found, bad_request, unavailable),
//! `integration_webhooks_mirrored_total`, `integration_webhooks_poison_total`.

mod config;
mod event;
mod handler;
mod mirror;
mod source;
mod stream;
mod target;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use service_runtime::ServiceContext;
use tokio::task::JoinHandle;

pub use config::WebhooksConfig;
pub use source::StoreTargets;
pub use stream::{StoredWebhook, stream_config};
pub use target::{EventSource, LoadError, SecretBytes, TargetSource, Verifier, WebhookTarget};

/// What the webhook endpoint shares between requests.
#[derive(Debug, Clone)]
pub struct WebhookState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    targets: target::CachedTargets,
    js: jetstream::Context,
    config: WebhooksConfig,
}

impl WebhookState {
    /// The endpoint's state: targets from `source` (cached for `webhooks.cache_ttl_ms`),
    /// webhooks stored through `js`.
    pub fn new(
        source: Arc<dyn TargetSource>,
        js: jetstream::Context,
        config: WebhooksConfig,
    ) -> Self {
        let ttl = Duration::from_millis(config.cache_ttl_ms);
        Self {
            inner: Arc::new(Inner {
                targets: target::CachedTargets::new(source, ttl),
                js,
                config,
            }),
        }
    }
}

/// `POST /integrations/{integrationId}/webhooks`, its body bounded by
/// `webhooks.max_body_bytes`.
pub fn router(state: WebhookState) -> Router {
    let limit = state.inner.config.max_body_bytes;
    Router::new()
        .route(
            "/integrations/{integrationId}/webhooks",
            post(handler::receive),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Provisions `INTEGRATION_WEBHOOKS` and starts the mirror; `/readyz` reports `webhooks` until
/// both the stream and the consumer exist. The task ends at shutdown.
pub fn start_mirror(ctx: &mut ServiceContext, config: &WebhooksConfig) -> JoinHandle<()> {
    let ready = ctx
        .readiness
        .flag("webhooks", "webhook stream or mirror not ready yet");
    tokio::spawn(mirror::run(
        ctx.jetstream.clone(),
        ctx.nats.clone(),
        config.clone(),
        ready,
        ctx.shutdown.clone(),
    ))
}
