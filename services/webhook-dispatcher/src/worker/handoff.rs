//! Deliveries claimed by intake as it stores them, handed straight to the workers.
//!
//! A fresh delivery would otherwise be written by intake, found again by the next claim,
//! locked and written a second time before its first attempt: a database round trip, a row
//! lock and a row version per delivery, and a claim's latency before anything is sent. When
//! this replica has attempt slots free, intake reserves them ([`Handoff::reserve`]), stores as
//! many new deliveries already leased as the reservation and each subscription's room here
//! allow (`Store::insert_outbox_claiming`), and after its transaction commits hands them to
//! the workers ([`Handoff::hand_over`]), which admit them exactly as claimed ones. What did not
//! fit is stored unleased and left to the claim loop. A replica that dies holding such claims
//! loses nothing: like any claim they fall back to the others when their lease ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use super::admission::{Admission, Queued};
use crate::store::{ClaimOnInsert, Claimed, LocalLoad, Store};

/// Claims made by intake, on their way to the workers with the slots reserved for them.
#[derive(Debug)]
pub(super) struct Handed {
    pub(super) queued: Vec<Queued>,
}

/// Intake's side of the hand-over. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    permits: Arc<Semaphore>,
    admission: Arc<Admission>,
    lease: Duration,
    tx: mpsc::Sender<Handed>,
}

/// Attempt slots reserved for one intake batch, and what the claim on insert needs to know.
#[derive(Debug)]
pub struct Reservation {
    permits: Vec<OwnedSemaphorePermit>,
    local: Vec<LocalLoad>,
    rounds: i32,
    lease: Duration,
    token: Uuid,
    /// Taken before the insert is sent, so never later than the database's lease.
    lease_deadline: Instant,
}

impl Reservation {
    /// The claim on insert this reservation allows.
    pub fn claim(&self) -> ClaimOnInsert<'_> {
        ClaimOnInsert {
            limit: self.permits.len() as i64,
            lease_secs: self.lease.as_secs(),
            token: self.token,
            local: &self.local,
            rounds: self.rounds,
        }
    }
}

impl Handoff {
    pub(super) fn new(
        permits: Arc<Semaphore>,
        admission: Arc<Admission>,
        lease: Duration,
        tx: mpsc::Sender<Handed>,
    ) -> Self {
        Self {
            permits,
            admission,
            lease,
            tx,
        }
    }

    /// Reserves up to `wanted` free attempt slots, without waiting; `None` when none is free.
    pub fn reserve(&self, wanted: usize) -> Option<Reservation> {
        let mut permits = Vec::new();
        while permits.len() < wanted {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if permits.is_empty() {
            return None;
        }
        Some(Reservation {
            permits,
            local: self.admission.loads(),
            rounds: self.admission.default_rounds(),
            lease: self.lease,
            token: Uuid::now_v7(),
            lease_deadline: Instant::now() + self.lease,
        })
    }

    /// Hands `claimed`, stored under `reservation` and committed, to the workers; the slots
    /// reserved beyond them are freed. Should the workers have stopped, the claims are
    /// released (sent by the next claim anywhere, not after their lease).
    pub async fn hand_over(&self, store: &Store, reservation: Reservation, claimed: Vec<Claimed>) {
        let Reservation {
            mut permits,
            lease_deadline,
            ..
        } = reservation;
        if claimed.is_empty() {
            return;
        }
        metrics::counter!("webhook_claimed_at_intake_total").increment(claimed.len() as u64);
        // The insert claimed no more than `limit`, the number of permits.
        permits.truncate(claimed.len());
        let queued: Vec<Queued> = claimed
            .into_iter()
            .zip(permits)
            .map(|(delivery, permit)| Queued {
                delivery,
                lease_deadline,
                permit,
            })
            .collect();
        if let Err(mpsc::error::SendError(handed)) = self.tx.send(Handed { queued }).await {
            release(store, &handed.queued).await;
        }
    }
}

/// Hands claimed deliveries back unsent (their lease ends now, their attempt is uncounted).
pub(super) async fn release(store: &Store, queued: &[Queued]) {
    let claims: Vec<(Uuid, Uuid)> = queued
        .iter()
        .map(|q| (q.delivery.id, q.delivery.lease_token))
        .collect();
    match store.release(&claims).await {
        Ok(n) => metrics::counter!("webhook_claims_released_total").increment(n),
        // Their leases run out instead, and the claims' attempts stay counted.
        Err(err) => {
            tracing::warn!(error = %err, deliveries = claims.len(), "releasing unsent claims failed; they are sent again when their lease ends");
        }
    }
}
