//! Idempotent provisioning of JetStream streams and key-value buckets.
//!
//! Every service provisions what it uses at start. Provisioning converges: a missing stream is
//! created, an existing one is updated to the configured limits, and running it from many
//! replicas at once is harmless (identical creates succeed on the server).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::subject::{ALL_EVENTS, EVENTS_STREAM};

/// Limits of a stream this platform owns.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// How long messages are kept.
    pub max_age: Duration,
    /// Total size cap in bytes (-1: unlimited).
    pub max_bytes: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Replicas in a clustered deployment.
    pub replicas: usize,
}

impl StreamSettings {
    /// The domain event stream: `EVENTS` over `events.>`, 7 days, 2-minute duplicate window.
    pub fn events() -> Self {
        Self {
            name: EVENTS_STREAM.to_owned(),
            subjects: vec![ALL_EVENTS.to_owned()],
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }

    fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            description: Some("realtime platform domain events".to_owned()),
            subjects: self.subjects.clone(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// A key-value bucket this platform owns.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSettings {
    /// Bucket name.
    pub bucket: String,
    /// What it holds.
    pub description: String,
    /// Entries expire this long after their last write (zero: never), so the entries of a
    /// crashed instance disappear on their own.
    pub max_age: Duration,
    /// Values kept per key.
    pub history: i64,
    /// Replicas in a clustered deployment.
    pub replicas: usize,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The stream could not be created or updated.
    #[error("provisioning stream {name}: {source}")]
    Stream {
        /// Stream name.
        name: String,
        /// Server or client error.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// The bucket could not be created or updated.
    #[error("provisioning key-value bucket {bucket}: {source}")]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// Server or client error.
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
}

/// Creates the stream, or updates it to `settings`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Info, ProvisionError> {
    js.create_or_update_stream(settings.to_config())
        .await
        .map_err(|source| ProvisionError::Stream {
            name: settings.name.clone(),
            source,
        })
}

/// Creates the bucket, or updates it to `settings`.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    settings: &BucketSettings,
) -> Result<kv::Store, ProvisionError> {
    js.create_or_update_key_value(kv::Config {
        bucket: settings.bucket.clone(),
        description: settings.description.clone(),
        max_age: settings.max_age,
        history: settings.history,
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|source| ProvisionError::Bucket {
        bucket: settings.bucket.clone(),
        source,
    })
}
