//! Where the state lives: the aggregator's private state (counters, stream position, dedupe
//! window) in one key of its own bucket, written with compare-and-set so a replica that lost
//! its lease can never overwrite a newer state; and the public snapshot that gateways read.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use events::provision::{BucketSettings, ensure_bucket};
use events::stat::StatSnapshot;
use events::subject::{STAT_SNAPSHOT_BUCKET, STAT_SNAPSHOT_KEY};

/// The key of the private state.
const STATE_KEY: &str = "state";

/// Why a key-value operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer changed the state since it was read: this replica is no longer the one
    /// counting.
    #[error("the stored state changed under us (another replica is counting)")]
    Fenced,
    /// NATS failed.
    #[error("key-value {what}: {source}")]
    Kv {
        /// The operation.
        what: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
}

fn kv_err(what: &'static str) -> impl FnOnce(async_nats::Error) -> StoreError {
    move |source| StoreError::Kv { what, source }
}

/// Creates (or updates) a bucket of this service.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    ensure_bucket(
        js,
        &BucketSettings {
            bucket: name.to_owned(),
            description: description.to_owned(),
            max_age,
            history: 1,
            replicas,
        },
    )
    .await
    .map_err(|e| kv_err("provisioning")(e.into()))
}

/// The private state, read and written by revision.
#[derive(Debug)]
pub struct StateStore {
    kv: kv::Store,
    revision: u64,
}

impl StateStore {
    /// Over `kv`; nothing read yet.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv, revision: 0 }
    }

    /// The stored state, if any; later commits expect its revision.
    pub async fn load(&mut self) -> Result<Option<Bytes>, StoreError> {
        let entry = self
            .kv
            .entry(STATE_KEY)
            .await
            .map_err(|e| kv_err("read")(e.into()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                self.revision = e.revision;
                Ok(Some(e.value))
            }
            Some(e) => {
                self.revision = e.revision;
                Ok(None)
            }
            None => {
                self.revision = 0;
                Ok(None)
            }
        }
    }

    /// Writes `state` if nobody wrote since our last read or commit.
    pub async fn commit(&mut self, state: Vec<u8>) -> Result<(), StoreError> {
        match self
            .kv
            .update(STATE_KEY, Bytes::from(state), self.revision)
            .await
        {
            Ok(rev) => {
                self.revision = rev;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(StoreError::Fenced),
            Err(e) => Err(kv_err("write")(e.into())),
        }
    }
}

/// The public snapshot in [`STAT_SNAPSHOT_BUCKET`].
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    kv: kv::Store,
}

impl SnapshotStore {
    /// Opens (creating) the public bucket.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        let kv = bucket(
            js,
            STAT_SNAPSHOT_BUCKET,
            "public counters snapshot (stat-aggregator), read by gateway-socketio",
            Duration::ZERO,
            replicas,
        )
        .await?;
        Ok(Self { kv })
    }

    /// Replaces the snapshot.
    pub async fn put(&self, snapshot: &StatSnapshot) -> Result<(), StoreError> {
        let body = serde_json::to_vec(snapshot).unwrap_or_default();
        self.kv
            .put(STAT_SNAPSHOT_KEY, Bytes::from(body))
            .await
            .map(|_| ())
            .map_err(|e| kv_err("snapshot write")(e.into()))
    }
}
