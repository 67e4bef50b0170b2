//! The HTTP client deliveries use, and how its answers and errors are read.

use std::sync::Arc;
use std::time::Duration;

use crate::config::DeliveryConfig;
pub use egress::{AddressPolicy, literal_ip, parse_retry_after};

/// Why the delivery HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HttpClientError(#[from] egress::ClientError);

impl HttpClientError {
    /// The configuration key the failure is about.
    pub fn key(&self) -> &'static str {
        match self.0 {
            egress::ClientError::Proxy(_) => "delivery.proxy",
            egress::ClientError::Build(_) => "delivery",
        }
    }
}

/// Builds the HTTP client deliveries use ([`egress::client`]): no redirects, bounded timeouts,
/// destination policy enforced in the resolver, only an explicit `delivery.proxy`.
pub fn http_client(
    config: &DeliveryConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, HttpClientError> {
    let options = egress::ClientOptions {
        connect_timeout: Duration::from_secs(config.connect_timeout_secs),
        timeout: Some(Duration::from_secs(config.timeout_secs)),
        proxy: config.proxy.as_ref().map(|p| p.url().clone()),
        user_agent: concat!("realtime-webhooks/", env!("CARGO_PKG_VERSION")),
        // As many as can be in flight at once: with fewer, every attempt beyond them closed
        // its connection afterwards and the next one opened a new one (a TCP handshake per
        // delivery at `max_concurrency` 256, which made raising the limit slower).
        pool_max_idle_per_host: config.concurrency,
    };
    Ok(egress::client(&options, policy)?)
}

/// What came back from the endpoint.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
    /// The body's first bytes, exactly as received.
    pub(super) body: Vec<u8>,
}

/// Why an attempt got no response.
pub(super) enum AttemptError {
    /// The destination is not allowed: retrying cannot help.
    Refused(String),
    /// Connection, TLS or timeout failure.
    Transport(String),
}

/// Sorts a client error by its type: an [`egress::Refusal`] from the resolver anywhere in the chain is
/// permanent, anything else transport.
pub(super) fn classify(err: &reqwest::Error) -> AttemptError {
    if let Some(refusal) = egress::refusal(err) {
        return AttemptError::Refused(refusal.to_string());
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AttemptError::Transport(format!(
        "{kind}: {}",
        std::error::Error::source(err).map_or_else(|| err.to_string(), |s| s.to_string())
    ))
}
