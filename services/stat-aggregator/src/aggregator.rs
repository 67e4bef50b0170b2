//! The counting loop of the replica holding the lease.
//!
//! Exactly once from at-least-once input:
//! 1. messages from the durable consumer are folded in memory ([`Folder::fold`] drops a
//!    sequence already included and an event id already counted);
//! 2. on every tick (at most `max_updates_per_sec`), if anything was folded, the state with
//!    its stream sequence and dedupe window is written in one compare-and-set;
//! 3. only then is the last delivered message acknowledged (ack policy `all`), the public
//!    snapshot replaced and the update published.
//!
//! A crash before 2 loses only uncommitted work, which JetStream redelivers; a crash between
//! 2 and 3 makes JetStream redeliver messages the state already includes, which step 1 drops.
//! An update is published only for a committed state, so versions never repeat. Messages
//! handed to a predecessor that died are read by sequence when their gap shows
//! ([`rebuild::catch_up`]), so the state is always the fold of a contiguous stream prefix and
//! acknowledging "all" never acknowledges an event that was not folded.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::{FutureExt, StreamExt};
use service_runtime::{Backoff, ReadyFlag};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{AggregatorConfig, Definitions};
use crate::fold::{Folder, Outcome};
use crate::lease::Lease;
use crate::rebuild;
use crate::store::{SnapshotStore, StateStore, StoreError, bucket};
use events::stat::{RebuildReply, StatUpdate};

/// Why leading stopped.
pub type LeadError = Box<dyn std::error::Error + Send + Sync>;

/// Everything the loop needs.
#[derive(Debug, Clone)]
pub struct Aggregator {
    /// NATS.
    pub nats: async_nats::Client,
    /// JetStream over it.
    pub js: jetstream::Context,
    /// Parsed counters.
    pub defs: Arc<Definitions>,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub config: AggregatorConfig,
    /// Key-value replicas.
    pub replicas: usize,
}

struct Rebuilt {
    result: Result<(Folder, u64), String>,
    reply: Option<async_nats::Subject>,
}

impl Aggregator {
    /// Leads (or stands by) until `shutdown`, retrying with backoff after any failure.
    /// `ready` is set once this replica either counts or knows another one does.
    pub async fn run(self, ready: ReadyFlag, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let holder = format!("{}", uuid::Uuid::now_v7());
        while !shutdown.is_cancelled() {
            match self.lead(&holder, &ready, &shutdown).await {
                Ok(()) => return,
                Err(err) => tracing::warn!(error = %err, "aggregation interrupted; retrying"),
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn lead(
        &self,
        holder: &str,
        ready: &ReadyFlag,
        shutdown: &CancellationToken,
    ) -> Result<(), LeadError> {
        let cfg = &self.config;
        let ttl = Duration::from_secs(cfg.lease_ttl_secs);
        let stream = self.js.get_stream(events::subject::EVENTS_STREAM).await?;
        let state_kv = bucket(
            &self.js,
            &cfg.state_bucket,
            "stat-aggregator state: counters, stream position, dedupe window",
            Duration::ZERO,
            self.replicas,
        )
        .await?;
        let lease_kv = bucket(
            &self.js,
            &format!("{}_lease", cfg.state_bucket),
            "stat-aggregator leader lease",
            ttl,
            self.replicas,
        )
        .await?;
        let snapshots = SnapshotStore::open(&self.js, self.replicas).await?;

        let mut lease = Lease::new(lease_kv, holder.to_owned());
        let mut said_standby = false;
        while !lease.try_acquire().await? {
            if !said_standby {
                tracing::info!("another replica holds the lease; standing by");
                said_standby = true;
            }
            ready.set();
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(ttl / 3) => {}
            }
        }
        let result = self
            .count(&stream, &mut lease, &state_kv, &snapshots, ready, shutdown)
            .await;
        lease.release().await;
        result
    }

    async fn count(
        &self,
        stream: &jetstream::stream::Stream,
        lease: &mut Lease,
        state_kv: &jetstream::kv::Store,
        snapshots: &SnapshotStore,
        ready: &ReadyFlag,
        shutdown: &CancellationToken,
    ) -> Result<(), LeadError> {
        let cfg = &self.config;
        let mut store = StateStore::new(state_kv.clone());
        let mut folder = match store.load().await? {
            Some(bytes) => Folder::restore(
                Arc::clone(&self.defs),
                Arc::clone(&self.clock),
                cfg.dedupe_window,
                &bytes,
            )?,
            None => Folder::new(
                Arc::clone(&self.defs),
                Arc::clone(&self.clock),
                cfg.dedupe_window,
            ),
        };
        tracing::info!(
            seq = folder.seq(),
            version = folder.version(),
            "leading: counting from the stored state"
        );
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &cfg.consumer,
                consumer::pull::Config {
                    durable_name: Some(cfg.consumer.clone()),
                    description: Some("stat-aggregator counters".to_owned()),
                    filter_subject: events::subject::ALL_EVENTS.to_owned(),
                    // Only used when the consumer is created: from just after what the state
                    // includes (the whole stream on a first deployment).
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: folder.seq() + 1,
                    },
                    ack_policy: consumer::AckPolicy::All,
                    ack_wait: Duration::from_secs(cfg.ack_wait_secs),
                    max_ack_pending: 200_000,
                    ..Default::default()
                },
            )
            .await?;
        snapshots.put(&folder.snapshot()).await?;
        let mut rebuild_requests = self.nats.subscribe(events::subject::STAT_REBUILD).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(cfg.batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        ready.set();
        metrics::gauge!("stat_leader").set(1.0);

        let (rebuilt_tx, mut rebuilt_rx) = mpsc::channel::<Rebuilt>(1);
        let mut rebuilding = false;
        let mut tick = tokio::time::interval(cfg.update_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(Duration::from_secs(cfg.lease_ttl_secs) / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut to_ack: Option<jetstream::Message> = None;
        let folded = metrics::counter!("stat_events_folded_total", "outcome" => "counted");
        let unmatched = metrics::counter!("stat_events_folded_total", "outcome" => "unmatched");
        let duplicate = metrics::counter!("stat_events_folded_total", "outcome" => "duplicate");
        let redelivered =
            metrics::counter!("stat_events_folded_total", "outcome" => "already_included");
        let invalid = metrics::counter!("stat_events_folded_total", "outcome" => "invalid");

        let result: Result<(), LeadError> = 'counting: loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    folder.roll();
                    break self.commit(&mut folder, &mut store, snapshots, &mut to_ack).await
                        .map_err(Into::into);
                }
                _ = tick.tick() => {
                    folder.roll();
                    if let Err(e) = self.commit(&mut folder, &mut store, snapshots, &mut to_ack).await {
                        break Err(e.into());
                    }
                }
                _ = renew.tick() => {
                    match lease.renew().await {
                        Ok(true) => {}
                        Ok(false) => break Err("lease lost".into()),
                        Err(e) => break Err(e.into()),
                    }
                }
                Some(request) = rebuild_requests.next() => {
                    if rebuilding {
                        reply(&self.nats, request.reply, &RebuildReply {
                            ok: false, replayed: 0, seq: 0, version: 0,
                            error: Some("busy".to_owned()),
                        }).await;
                        continue;
                    }
                    rebuilding = true;
                    let until = stream.get_info().await.map(|i| i.state.last_sequence)
                        .unwrap_or(folder.seq()).max(folder.seq());
                    tracing::info!(until, "rebuild started");
                    let (js, defs, clock, window, tx) = (
                        self.js.clone(), Arc::clone(&self.defs), Arc::clone(&self.clock),
                        cfg.dedupe_window, rebuilt_tx.clone(),
                    );
                    tokio::spawn(async move {
                        let result = rebuild::replay(js, defs, clock, window, until).await
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Rebuilt { result, reply: request.reply }).await;
                    });
                }
                Some(done) = rebuilt_rx.recv() => {
                    rebuilding = false;
                    let answer = match done.result {
                        Ok((mut rebuilt, replayed)) => {
                            if let Err(e) = rebuild::catch_up(stream, &mut rebuilt, folder.seq()).await {
                                tracing::warn!(error = %e, "rebuild catch-up failed");
                                RebuildReply { ok: false, replayed, seq: 0, version: 0, error: Some("failed".to_owned()) }
                            } else {
                                rebuilt.set_version(folder.version());
                                rebuilt.mark_all_changed();
                                folder = rebuilt;
                                if let Err(e) = self.commit(&mut folder, &mut store, snapshots, &mut to_ack).await {
                                    break Err(e.into());
                                }
                                tracing::info!(replayed, seq = folder.seq(), "rebuild done");
                                RebuildReply { ok: true, replayed, seq: folder.seq(), version: folder.version(), error: None }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "rebuild failed");
                            RebuildReply { ok: false, replayed: 0, seq: 0, version: 0, error: Some("failed".to_owned()) }
                        }
                    };
                    reply(&self.nats, done.reply, &answer).await;
                }
                next = messages.next() => {
                    let first = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => break Err(e.into()),
                        None => break Err("consumer stream ended".into()),
                    };
                    // Take whatever else is already here: one wake-up per batch under load.
                    let mut batch = Some(first);
                    let mut n = 0;
                    while let Some(message) = batch.take() {
                        n += 1;
                        let seq = match message.info() {
                            Ok(info) => info.stream_sequence,
                            Err(_) => {
                                let _ = message.ack_with(AckKind::Term).await;
                                continue;
                            }
                        };
                        // A gap: messages delivered to a predecessor that died before
                        // acknowledging them (JetStream would redeliver them only after
                        // ack_wait, and acking this one acknowledges them too). Read them
                        // by sequence, so the state always includes a contiguous prefix.
                        if seq > folder.seq() + 1
                            && let Err(e) = rebuild::catch_up(stream, &mut folder, seq - 1).await
                        {
                            break 'counting Err(e);
                        }
                        match events::Envelope::decode(&message.payload) {
                            Ok(event) => match folder.fold(seq, &event) {
                                Outcome::Counted => folded.increment(1),
                                Outcome::Unmatched => unmatched.increment(1),
                                Outcome::Duplicate => duplicate.increment(1),
                                Outcome::AlreadyIncluded => redelivered.increment(1),
                            },
                            Err(err) => {
                                invalid.increment(1);
                                tracing::warn!(subject = %message.subject, error = %err, "invalid event, counted nothing");
                                folder.skip(seq);
                            }
                        }
                        // Ack policy `all`: acknowledging the latest delivered message covers
                        // every message delivered before it, all folded by now.
                        to_ack = Some(message);
                        if n < cfg.batch
                            && let Some(Some(Ok(m))) = messages.next().now_or_never()
                        {
                            batch = Some(m);
                        }
                    }
                }
            }
        };
        metrics::gauge!("stat_leader").set(0.0);
        result
    }

    /// Commits, acknowledges, replaces the snapshot and publishes the update, in that order.
    async fn commit(
        &self,
        folder: &mut Folder,
        store: &mut StateStore,
        snapshots: &SnapshotStore,
        to_ack: &mut Option<jetstream::Message>,
    ) -> Result<(), StoreError> {
        let changed = folder.has_changes();
        if !changed && to_ack.is_none() {
            return Ok(());
        }
        let update = changed.then(|| {
            let version = folder.bump_version();
            StatUpdate {
                version,
                at: folder.now().to_string(),
                counters: folder.take_changes(),
            }
        });
        store.commit(folder.encode()).await?;
        metrics::gauge!("stat_stream_sequence").set(folder.seq() as f64);
        if let Some(message) = to_ack.take()
            && let Err(err) = message.ack().await
        {
            // Harmless: JetStream redelivers, and the state already includes those messages.
            tracing::warn!(error = %err, "ack failed");
        }
        if let Some(update) = update {
            if let Err(err) = snapshots.put(&folder.snapshot()).await {
                tracing::warn!(error = %err, "snapshot write failed; gateways see the update only");
            }
            let body = serde_json::to_vec(&update).unwrap_or_default();
            if let Err(err) = self
                .nats
                .publish(events::subject::STAT_UPDATES, body.into())
                .await
            {
                tracing::warn!(error = %err, "update publish failed; gateways resync on the next one");
            }
            metrics::counter!("stat_updates_published_total").increment(1);
        }
        Ok(())
    }
}

async fn reply(nats: &async_nats::Client, to: Option<async_nats::Subject>, body: &RebuildReply) {
    if let Some(to) = to {
        let body = serde_json::to_vec(body).unwrap_or_default();
        let _ = nats.publish(to, body.into()).await;
    }
}
