//! One counting replica at a time: a lease key in a bucket whose entries expire after the
//! lease's time to live. The holder renews it (compare-and-set on its revision) every third
//! of the TTL; a standby takes it once it expired or was released. The lease keeps two
//! replicas from both pulling; the compare-and-set on the state ([`crate::store`]) is what
//! makes counting twice impossible even if a lease were ever held twice (a paused process).

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::store::StoreError;

const LEASE_KEY: &str = "leader";

/// This replica's claim.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    holder: String,
    revision: Option<u64>,
}

fn err(what: &'static str) -> impl FnOnce(async_nats::Error) -> StoreError {
    move |source| StoreError::Kv { what, source }
}

impl Lease {
    /// A claim by `holder` (unique per process) in `kv` (a bucket with `max_age` = TTL).
    pub fn new(kv: kv::Store, holder: String) -> Self {
        Self {
            kv,
            holder,
            revision: None,
        }
    }

    /// Takes the lease if it is free (or already ours); false when another replica holds it.
    pub async fn try_acquire(&mut self) -> Result<bool, StoreError> {
        let current = self
            .kv
            .entry(LEASE_KEY)
            .await
            .map_err(|e| err("lease read")(e.into()))?;
        if let Some(e) = &current
            && e.operation == kv::Operation::Put
            && e.value.as_ref() != self.holder.as_bytes()
        {
            return Ok(false);
        }
        let value = Bytes::from(self.holder.clone().into_bytes());
        let written = match &current {
            Some(e) => self
                .kv
                .update(LEASE_KEY, value, e.revision)
                .await
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                        None
                    } else {
                        Some(err("lease write")(e.into()))
                    }
                }),
            None => self.kv.create(LEASE_KEY, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    None
                } else {
                    Some(err("lease write")(e.into()))
                }
            }),
        };
        match written {
            Ok(rev) => {
                self.revision = Some(rev);
                Ok(true)
            }
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Extends the lease; false when it was lost (expired and taken).
    pub async fn renew(&mut self) -> Result<bool, StoreError> {
        let Some(rev) = self.revision else {
            return Ok(false);
        };
        let value = Bytes::from(self.holder.clone().into_bytes());
        match self.kv.update(LEASE_KEY, value, rev).await {
            Ok(rev) => {
                self.revision = Some(rev);
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.revision = None;
                Ok(false)
            }
            Err(e) => Err(err("lease renew")(e.into())),
        }
    }

    /// Gives the lease up, so a standby takes over at once rather than after the TTL.
    pub async fn release(&mut self) {
        if let Some(rev) = self.revision.take() {
            let _ = self.kv.delete_expect_revision(LEASE_KEY, Some(rev)).await;
        }
    }
}
