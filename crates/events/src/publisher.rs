//! Publishing envelopes to JetStream, and decoding what consumers receive.

use async_nats::header::{self, HeaderMap};
use async_nats::jetstream;

use crate::subject::event_subject;
use crate::trace_context::{TRACEPARENT, current_traceparent};
use crate::{Envelope, EnvelopeError};

/// What JetStream said about a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored the event.
    pub stream: String,
    /// Its sequence in the stream (the original's, for a duplicate).
    pub sequence: u64,
    /// True when the server recognised the event id and stored nothing new.
    pub duplicate: bool,
}

/// Why a publish failed. The event may or may not have been stored; publishing again with the
/// same envelope is always safe, because the server drops duplicates by event id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The publish could not be sent.
    #[error("publishing {event_type} failed: {source}")]
    Send {
        /// The event's type.
        event_type: String,
        /// The client's error.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// The server did not acknowledge the publish.
    #[error("no acknowledgement for {event_type}: {source}")]
    Ack {
        /// The event's type.
        event_type: String,
        /// The client's error.
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// Publishes envelopes to `events.<domain>.<event_type>` with JetStream acknowledgement.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// A publisher over a NATS client.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
        }
    }

    /// A publisher over an existing JetStream context.
    pub fn from_context(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes one event and waits for the stream's acknowledgement.
    ///
    /// Headers: `Nats-Msg-Id` = event id (duplicate publishes are dropped by the server),
    /// `traceparent` (W3C), `Content-Type: application/json`.
    #[tracing::instrument(level = "debug", skip_all, fields(event.id = %envelope.id, event.type = %envelope.event_type))]
    pub async fn publish(&self, envelope: &Envelope) -> Result<Published, PublishError> {
        let event_type = || envelope.event_type.to_string();
        let ack = self
            .js
            .publish_with_headers(
                event_subject(&envelope.event_type),
                publish_headers(envelope),
                envelope.encode().into(),
            )
            .await
            .map_err(|source| PublishError::Send {
                event_type: event_type(),
                source,
            })?
            .await
            .map_err(|source| PublishError::Ack {
                event_type: event_type(),
                source,
            })?;
        Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes many events, `in_flight` at a time: each group is sent without waiting, then
    /// its acknowledgements are awaited in order (bulk loads, tests, load tools). Headers as
    /// [`Publisher::publish`]. Stops at the first failure; the events before it are stored.
    pub async fn publish_all(
        &self,
        envelopes: &[Envelope],
        in_flight: usize,
    ) -> Result<Vec<Published>, PublishError> {
        let mut published = Vec::with_capacity(envelopes.len());
        for group in envelopes.chunks(in_flight.max(1)) {
            let mut acks = Vec::with_capacity(group.len());
            for envelope in group {
                let ack = self
                    .js
                    .publish_with_headers(
                        event_subject(&envelope.event_type),
                        publish_headers(envelope),
                        envelope.encode().into(),
                    )
                    .await
                    .map_err(|source| PublishError::Send {
                        event_type: envelope.event_type.to_string(),
                        source,
                    })?;
                acks.push((envelope, ack));
            }
            for (envelope, ack) in acks {
                let ack = ack.await.map_err(|source| PublishError::Ack {
                    event_type: envelope.event_type.to_string(),
                    source,
                })?;
                published.push(Published {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                });
            }
        }
        Ok(published)
    }
}

/// The headers every published event carries.
pub fn publish_headers(envelope: &Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, envelope.id.to_string().as_str());
    headers.insert(TRACEPARENT, current_traceparent().as_str());
    headers.insert("Content-Type", "application/json");
    headers
}

/// Decodes the envelope carried by a received message.
pub fn decode_message(payload: &[u8]) -> Result<Envelope, EnvelopeError> {
    Envelope::decode(payload)
}
