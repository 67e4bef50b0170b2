//! Writing attempt outcomes in batches, so that no outcome can hold up the others.
//!
//! A batch the database rejects (a constraint, a value it cannot store) is split in halves
//! until the offending outcome stands alone; that one is logged, counted in
//! `webhook_outcomes_dropped_total{reason="rejected"}` and dropped, and every other outcome
//! is written. A batch that fails because the database is unreachable is retried with backoff
//! until the leases of its claims run out; past that point another claim will send the
//! delivery again, so the outcome is dropped (`reason="lease_expired"`). Outcomes whose
//! delivery was deleted (`vanished`) or whose claim was taken over (`lease_lost`) are dropped
//! by the store itself.

use std::time::{Duration, Instant};

use service_runtime::Backoff;
use tokio::sync::mpsc;

use crate::store::{Outcome, Store};

/// Outcomes read from the channel per write.
const BATCH: usize = 512;

/// Writes outcomes to the store.
#[derive(Debug, Clone)]
pub struct Recorder {
    store: Store,
    disable_after: i32,
}

/// What became of a batch of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordReport {
    /// Written.
    pub recorded: usize,
    /// Their delivery no longer exists.
    pub vanished: usize,
    /// Their claim was taken over or reset.
    pub lease_lost: usize,
    /// The database refused them, alone.
    pub rejected: usize,
    /// The database stayed unreachable until their leases ran out.
    pub lease_expired: usize,
}

impl Recorder {
    /// Records into `store`; `disable_after` as in [`Store::record`].
    pub fn new(store: Store, disable_after: i32) -> Self {
        Self {
            store,
            disable_after,
        }
    }

    /// Records `batch`; returns only when every outcome is written or dropped.
    pub async fn record(&self, batch: Vec<Outcome>) -> RecordReport {
        let mut report = RecordReport::default();
        // Chunks still to write, the next one last.
        let mut pending = vec![batch];
        while let Some(chunk) = pending.pop() {
            if chunk.is_empty() {
                continue;
            }
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match self.store.record(&chunk, self.disable_after).await {
                    Ok(done) => {
                        report.recorded += done.recorded;
                        report.vanished += done.vanished.len();
                        report.lease_lost += done.lease_lost.len();
                        for id in &done.vanished {
                            tracing::debug!(delivery = %id, "outcome dropped: the delivery no longer exists");
                        }
                        for id in &done.lease_lost {
                            tracing::debug!(delivery = %id, "outcome dropped: the claim was taken over");
                        }
                        dropped("vanished", done.vanished.len());
                        dropped("lease_lost", done.lease_lost.len());
                        break;
                    }
                    Err(err) if is_rejection(&err) => {
                        if let [only] = chunk.as_slice() {
                            tracing::error!(
                                error = %err, delivery = %only.delivery_id, attempt = only.attempt,
                                "outcome cannot be recorded; dropped"
                            );
                            report.rejected += 1;
                            dropped("rejected", 1);
                        } else {
                            let mut first = chunk;
                            let second = first.split_off(first.len() / 2);
                            pending.push(second);
                            pending.push(first);
                        }
                        break;
                    }
                    Err(err) => {
                        let now = Instant::now();
                        if chunk.iter().all(|o| o.lease_deadline <= now) {
                            tracing::warn!(
                                error = %err, outcomes = chunk.len(),
                                "database unreachable until the leases ran out; outcomes dropped, the deliveries will be sent again"
                            );
                            report.lease_expired += chunk.len();
                            dropped("lease_expired", chunk.len());
                            break;
                        }
                        // No shutdown here: the recorder runs until every attempt is recorded
                        // or its lease has run out.
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, outcomes = chunk.len(), retry_in = ?delay, "recording attempts failed, retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        report
    }
}

fn dropped(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("webhook_outcomes_dropped_total", "reason" => reason).increment(n as u64);
    }
}

/// Whether the database refused these rows (retrying the same rows cannot help), as opposed
/// to being unreachable or busy (retrying can). Decided on the error's kind and SQLSTATE
/// class: 08 connection, 40 rollback (deadlock, serialization), 53 resources, 57 operator
/// intervention and 58 system errors are passing conditions; every other database error is
/// about the statement's data.
fn is_rejection(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let class = db.code().map(|c| c.chars().take(2).collect::<String>());
            !matches!(
                class.as_deref(),
                Some("08" | "40" | "53" | "57" | "58") | None
            )
        }
        sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => true,
        _ => false,
    }
}

/// Records what arrives on `rx` until every sender is gone.
pub(super) async fn run(recorder: Recorder, mut rx: mpsc::Receiver<Outcome>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        recorder
            .record(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
            .await;
    }
}
