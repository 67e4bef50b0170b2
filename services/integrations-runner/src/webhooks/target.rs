//! What the webhook endpoint needs to know about an integration, and where it gets it.
//!
//! The endpoint depends on this narrow view rather than on the whole integration, so the
//! verification path reads as "which scheme, which secret, which project": the store adapter
//! ([`super::source`]) builds it from the integration row and its decrypted secrets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;
use webhook_signatures::Tolerance;
use webhook_signatures::hmac_header::HmacHeader;
use webhook_signatures::standard::SigningKey;

/// Secret bytes; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(redacted)")
    }
}

/// Where a configured-HMAC provider names the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// A field of the JSON body; dots descend into objects (`event.type`).
    Field(String),
    /// A request header.
    Header(HeaderName),
}

/// How an integration's webhooks are verified, with the secret already decoded.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// `Stripe-Signature`; the event is the body's `type`, the delivery id its `id`.
    Stripe {
        /// The endpoint secret's bytes.
        secret: SecretBytes,
        /// Accepted clock distance.
        tolerance: Tolerance,
    },
    /// `X-Hub-Signature-256`; the event is `X-GitHub-Event` (+ `.action`), the delivery id
    /// `X-GitHub-Delivery`.
    Github {
        /// The webhook secret's bytes.
        secret: SecretBytes,
    },
    /// Standard Webhooks; the event is the body's `type`, the delivery id `webhook-id`.
    Standard {
        /// The decoded `whsec_` key.
        key: SigningKey,
        /// Accepted clock distance.
        tolerance: Tolerance,
    },
    /// A configured HMAC header; the delivery id is the SHA-256 of the body.
    Hmac {
        /// Header, prefix and encoding.
        scheme: HmacHeader,
        /// The secret's bytes.
        secret: SecretBytes,
        /// Where the event name is.
        event: EventSource,
    },
}

/// An active integration with webhooks configured.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The integration.
    pub integration_id: String,
    /// Its project.
    pub project_id: String,
    /// The provider, lowercased (`stripe`): the event name's first part.
    pub provider: String,
    /// Scheme and secret.
    pub verifier: Verifier,
}

/// Why a target could not be loaded (the endpoint answers 503: the provider retries).
#[derive(Debug, thiserror::Error)]
#[error("loading the integration failed: {0}")]
pub struct LoadError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Finds the webhook target of an integration: `None` when it is unknown, inactive or has no
/// webhook (the endpoint gives all three the same answer).
pub trait TargetSource: Send + Sync + 'static {
    /// Loads the target of `integration_id`.
    fn load<'a>(
        &'a self,
        integration_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WebhookTarget>, LoadError>>;
}

/// Most integrations remembered at once; past it the cache starts over (bounded memory under a
/// flood of made-up ids).
const MAX_CACHED: usize = 10_000;

type Entry = (Instant, Option<Arc<WebhookTarget>>);

/// A [`TargetSource`] behind a short-lived cache, so a burst of deliveries costs one query.
/// Negative answers are cached too. A change (new secret, deactivation) applies within the TTL.
pub(crate) struct CachedTargets {
    source: Arc<dyn TargetSource>,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for CachedTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTargets")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedTargets {
    pub(crate) fn new(source: Arc<dyn TargetSource>, ttl: Duration) -> Self {
        Self {
            source,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn get(
        &self,
        integration_id: &str,
    ) -> Result<Option<Arc<WebhookTarget>>, LoadError> {
        if self.ttl.is_zero() {
            return Ok(self.source.load(integration_id).await?.map(Arc::new));
        }
        if let Some((at, target)) = self.entries.lock().await.get(integration_id)
            && at.elapsed() < self.ttl
        {
            return Ok(target.clone());
        }
        // Loaded without the lock: a slow query must not stall other integrations. Two
        // concurrent misses load twice, which is harmless.
        let target = self.source.load(integration_id).await?.map(Arc::new);
        let mut entries = self.entries.lock().await;
        if entries.len() >= MAX_CACHED {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(integration_id.to_owned(), (Instant::now(), target.clone()));
        Ok(target)
    }
}
