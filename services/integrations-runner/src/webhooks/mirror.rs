//! The mirror: a durable pull consumer on `INTEGRATION_WEBHOOKS`, shared by every runner
//! replica (so each webhook is mirrored once), that publishes each stored webhook on core NATS
//! `rt.integration.webhook` for the gateways, then acknowledges it.
//!
//! At least once: a replica that dies between the publish and the ack lets the message be
//! redelivered and mirrored again. A message that is not a [`StoredWebhook`] (or whose subject
//! names another integration) is terminated and counted, never redelivered.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::StreamExt;
use service_runtime::{Backoff, ReadyFlag};
use tokio_util::sync::CancellationToken;

use super::config::WebhooksConfig;
use super::stream::{self, StoredWebhook};
use events::subject::{INTEGRATION_WEBHOOK, INTEGRATION_WEBHOOKS, INTEGRATION_WEBHOOKS_STREAM};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Provisions the stream, then mirrors until `shutdown`, retrying with backoff through NATS
/// outages. `ready` is set once the stream and the consumer exist.
pub(super) async fn run(
    js: jetstream::Context,
    nats: async_nats::Client,
    config: WebhooksConfig,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) {
    if !stream::provision(&js, &config, &shutdown).await {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        // Cancelling mid-message is safe: what was not acknowledged is redelivered.
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = consume(&js, &nats, &config, &ready) => r,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "webhook mirror interrupted; retrying");
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn consume(
    js: &jetstream::Context,
    nats: &async_nats::Client,
    config: &WebhooksConfig,
    ready: &ReadyFlag,
) -> Result<(), BoxError> {
    let stream = js.get_stream(INTEGRATION_WEBHOOKS_STREAM).await?;
    let batch = config.mirror_batch;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.consumer,
            consumer::pull::Config {
                durable_name: Some(config.consumer.clone()),
                description: Some("integrations-runner webhook mirror".to_owned()),
                filter_subject: INTEGRATION_WEBHOOKS.to_owned(),
                // Everything stored is mirrored, including what was accepted before the first
                // consumer existed; afterwards the durable position holds.
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_secs),
                max_deliver: config.max_deliver,
                max_ack_pending: i64::try_from(batch * 4).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(consumer = %config.consumer, "webhook mirror started");
    ready.set();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    while let Some(message) = messages.next().await {
        mirror(nats, message?).await?;
    }
    Err("consumer stream ended".into())
}

async fn mirror(nats: &async_nats::Client, message: jetstream::Message) -> Result<(), BoxError> {
    let subject_id = stream::subject_integration(message.subject.as_str());
    let stored = serde_json::from_slice::<StoredWebhook>(&message.payload);
    match stored {
        Ok(stored) if subject_id == Some(stored.integration_id.as_str()) => {}
        Ok(_) | Err(_) => {
            metrics::counter!("integration_webhooks_poison_total").increment(1);
            tracing::warn!(subject = %message.subject, "unreadable stored webhook, terminated");
            message.ack_with(AckKind::Term).await?;
            return Ok(());
        }
    }
    // The stored bytes are the mirrored payload (see `stream`).
    if let Err(err) = nats
        .publish(INTEGRATION_WEBHOOK, message.payload.clone())
        .await
    {
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return Err(err.into());
    }
    message.ack().await?;
    metrics::counter!("integration_webhooks_mirrored_total").increment(1);
    Ok(())
}
