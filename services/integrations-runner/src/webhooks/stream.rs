//! The `INTEGRATION_WEBHOOKS` stream and the message it stores.
//!
//! A verified webhook is stored as exactly the payload the mirror publishes on
//! `rt.integration.webhook`: `{integrationId, projectId, event, data, timestamp}`, with
//! `timestamp` the receipt time (RFC 3339, milliseconds, UTC). The mirror checks it against
//! [`StoredWebhook`] and forwards the stored bytes unchanged.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use service_runtime::Backoff;
use tokio_util::sync::CancellationToken;

use super::config::WebhooksConfig;
use events::subject::{INTEGRATION_WEBHOOKS, INTEGRATION_WEBHOOKS_STREAM};

/// One verified inbound webhook, as stored and as mirrored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredWebhook {
    /// The integration that received it.
    pub integration_id: String,
    /// The integration's project.
    pub project_id: String,
    /// `<provider>.<type>`.
    pub event: String,
    /// The body: parsed when it is JSON, else its text.
    pub data: Value,
    /// When the runner received it.
    #[serde(with = "events::envelope::timestamp")]
    pub timestamp: time::OffsetDateTime,
}

/// `integrations.webhooks.<integrationId>` (the id is a validated token).
pub fn subject(integration_id: &events::Token) -> String {
    format!("integrations.webhooks.{}", integration_id.as_str())
}

/// The integration id a stream subject names.
pub fn subject_integration(subject: &str) -> Option<&str> {
    events::subject::push_kind(INTEGRATION_WEBHOOKS, subject)
}

/// The stream's configuration.
pub fn stream_config(config: &WebhooksConfig) -> stream::Config {
    stream::Config {
        name: INTEGRATION_WEBHOOKS_STREAM.to_owned(),
        description: Some("verified inbound provider webhooks, before they are mirrored".into()),
        subjects: vec![INTEGRATION_WEBHOOKS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(config.stream_max_age_secs),
        max_bytes: config.stream_max_bytes,
        duplicate_window: config.duplicate_window(),
        num_replicas: config.stream_replicas,
        ..Default::default()
    }
}

/// Creates or updates the stream, retrying with backoff until it succeeds or `shutdown` fires.
/// Returns whether it succeeded.
pub async fn provision(
    js: &jetstream::Context,
    config: &WebhooksConfig,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match js.create_or_update_stream(stream_config(config)).await {
            Ok(info) => {
                tracing::info!(
                    stream = %info.config.name,
                    messages = info.state.messages,
                    "stream provisioned"
                );
                return true;
            }
            Err(err) => tracing::warn!(error = %err, "webhook stream provisioning failed"),
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let id = events::Token::new("integration id", "64b2c3d4e5f6789012345678").unwrap();
        let s = subject(&id);
        assert_eq!(s, "integrations.webhooks.64b2c3d4e5f6789012345678");
        assert_eq!(subject_integration(&s), Some("64b2c3d4e5f6789012345678"));
        assert_eq!(subject_integration("integrations.webhooks.a.b"), None);
        assert_eq!(subject_integration("events.x.y"), None);
    }

    #[test]
    fn the_stored_shape_is_the_mirrored_shape() {
        let w: StoredWebhook = serde_json::from_str(
            r#"{"integrationId":"i","projectId":"p","event":"stripe.invoice.paid","data":{},"timestamp":"2026-03-18T10:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(w.event, "stripe.invoice.paid");
        assert_eq!(
            serde_json::to_value(&w).unwrap()["timestamp"],
            "2026-03-18T10:00:00.000Z"
        );
        assert!(serde_json::from_str::<StoredWebhook>(r#"{"integrationId":"i"}"#).is_err());
    }
}
