//! The registry's tasks on the bucket: opening it, the writer (local state → bucket), the
//! heartbeat, following the watch (bucket → replica → `presence:update`), and leaving the
//! cluster on shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::{StreamExt, stream as futures_stream};
use service_runtime::{Backoff, ReadyFlag};
use socketioxide::SocketIo;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::keys::{self, PresenceValue};
use super::local::Op;
use super::replica::{Applied, Change, Changes, Replica, Swept};
use super::{Activity, Registry, lock};
use crate::bus::count_broadcast_error;
use crate::namespace::Namespace;

/// Writes taken at once, and made concurrently.
const BATCH: usize = 256;
const CONCURRENCY: usize = 32;
/// Retry delays of the writer and of (re)opening the bucket or its watch.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Leaving the cluster on shutdown: the last-seen values and purges still queued, then the
/// live key. With [`STOP_WAIT`], within [`super::SHUTDOWN_BUDGET`].
const LEAVE_BUDGET: Duration = Duration::from_millis(1500);
/// How long the writer and the heartbeat may take to finish what they are doing on shutdown.
const STOP_WAIT: Duration = Duration::from_millis(500);
const _: () =
    assert!(STOP_WAIT.as_millis() + LEAVE_BUDGET.as_millis() <= super::SHUTDOWN_BUDGET.as_millis());

/// Why a write to the bucket failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("put: {0}")]
    Put(#[from] kv::PutError),
    #[error("delete: {0}")]
    Delete(#[from] kv::DeleteError),
    #[error("purge: {0}")]
    Purge(#[from] stream::PurgeError),
    #[error("no answer before the shutdown budget ran out")]
    OutOfTime,
}

/// Runs the registry until `shutdown`, then leaves the cluster (bounded in time).
pub(super) async fn run(
    r: Arc<Registry>,
    io: SocketIo,
    nats: async_nats::Client,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(nats);
    let Some(store) = open(&r, &js, &shutdown).await else {
        return;
    };
    let stop = CancellationToken::new();
    let mut writer = tokio::spawn(write_loop(Arc::clone(&r), store.clone(), stop.clone()));
    let mut beats = tokio::spawn(heartbeat_loop(Arc::clone(&r), store.clone(), stop.clone()));
    follow(&r, &io, &js, &store, &ready, &shutdown).await;
    stop.cancel();
    for task in [&mut writer, &mut beats] {
        if tokio::time::timeout(STOP_WAIT, &mut *task).await.is_err() {
            task.abort();
        }
    }
    leave(&r, &store).await;
}

/// The bucket, created when missing (two instances starting together may both try: the
/// loser opens the winner's). `None` once shutting down.
async fn open(
    r: &Registry,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Option<kv::Store> {
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            opened = get_or_create(r, js) => match opened {
                Ok(store) => return Some(store),
                Err(e) => tracing::warn!(bucket = %r.config.bucket, error = %e, "presence bucket not available; retrying"),
            },
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// The bucket; created when it is not there (history 1, file storage, no age limit).
async fn get_or_create(
    r: &Registry,
    js: &jetstream::Context,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    if let Ok(store) = js.get_key_value(r.config.bucket.as_str()).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: r.config.bucket.clone(),
            description: "gateway-socketio presence and viewing".to_owned(),
            history: 1,
            num_replicas: r.config.replicas,
            storage: stream::StorageType::File,
            max_value_size: 1024,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another instance created it in between (with other settings, perhaps): use it.
        Err(e) => js
            .get_key_value(r.config.bucket.as_str())
            .await
            .map_err(|_| e),
    }
}

/// Follows the whole bucket until `shutdown`. Each
/// (re)load builds a fresh replica from the last value of every key and swaps it in once
/// the history is delivered; `ready` is set after the first. A watch that fails is created
/// again and the bucket reloaded (the ordered consumer under it already survives NATS
/// reconnects by itself).
async fn follow(
    r: &Arc<Registry>,
    io: &SocketIo,
    js: &jetstream::Context,
    store: &kv::Store,
    ready: &ReadyFlag,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    loop {
        let watch = tokio::select! {
            () = shutdown.cancelled() => return,
            w = store.watch_with_history(">") => w,
        };
        match watch {
            Ok(mut watch) => {
                // A heartbeat written after the watch started: its echo comes after the
                // whole history, so the load completes even when nothing else is written.
                let marker = beat(r, store).await.ok();
                let mut loading = Some(Replica::default());
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = watch.next() => next,
                    };
                    let entry = match next {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "presence watch failed; reloading");
                            break;
                        }
                        None => {
                            tracing::warn!("presence watch ended; reloading");
                            break;
                        }
                    };
                    backoff.reset();
                    let change = change_of(&entry);
                    if let Some(fresh) = &mut loading {
                        fresh.apply(&r.instance, &change, r.ttl_ms);
                        if entry.seen_current || marker.is_some_and(|m| entry.revision >= m) {
                            loaded(r, io, loading.take().unwrap_or_default()).await;
                            ready.set();
                        }
                    } else {
                        let applied = lock(&r.replica).apply(&r.instance, &change, r.ttl_ms);
                        handle(r, io, applied).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence watch not created; retrying");
                // The bucket may be gone (deleted by an operator): this handle names it, so
                // writes resume once it is there again.
                if let Err(e) = get_or_create(r, js).await {
                    tracing::debug!(error = %e, "presence bucket not available");
                }
            }
        }
        if !backoff.wait(shutdown).await {
            return;
        }
    }
}

fn change_of(entry: &kv::Entry) -> Change<'_> {
    Change {
        key: &entry.key,
        value: &entry.value,
        revision: entry.revision,
        created: keys::millis(entry.created),
        removed: entry.operation != kv::Operation::Put,
    }
}

/// A fresh replica is loaded: drops the dead in it (the reaper queues the purge of every
/// dead instance the bucket still holds), swaps it in, tells watchers what changed meanwhile
/// (after the sweep: a dead instance's participants do not flap), and writes again what the
/// bucket lost of this instance.
async fn loaded(r: &Registry, io: &SocketIo, mut fresh: Replica) {
    let now = fresh.latest();
    let swept = fresh.sweep(&r.instance, now, r.ttl_ms, r.grace_ms);
    let (changes, own, instances) = {
        let mut replica = lock(&r.replica);
        let old = std::mem::replace(&mut *replica, fresh);
        (
            replica.diff(&old),
            replica.own(&r.instance),
            replica.instances(),
        )
    };
    tracing::info!(instances, "presence state loaded");
    // The sweep's own changes are relative to the fresh replica before it: the diff has them.
    drop(reap(r, swept));
    if lock(&r.local).republish(Some(&own)) {
        r.wake.notify_one();
    }
    gauge(instances);
    emit(io, changes).await;
}

/// Acts on one entry applied to the live replica.
async fn handle(r: &Registry, io: &SocketIo, applied: Applied) {
    let Applied {
        mut changes,
        own_heartbeat,
        own_removed,
        seen_due,
    } = applied;
    if let Some((now, gap)) = own_heartbeat {
        if gap {
            tracing::warn!(
                "own heartbeats were interrupted for longer than the ttl; writing the state again"
            );
            if lock(&r.local).republish(None) {
                r.wake.notify_one();
            }
        }
        let swept = lock(&r.replica).sweep(&r.instance, now, r.ttl_ms, r.grace_ms);
        changes.extend(reap(r, swept));
    }
    if own_removed.is_some() {
        tracing::warn!("this instance was declared dead by another; writing the state again");
        lock(&r.local).republish(None);
        r.wake.notify_one();
        r.beat.notify_one();
    }
    if let Some((who, at)) = seen_due {
        lock(&r.local).seen_due(who, at);
        r.wake.notify_one();
    }
    gauge(lock(&r.replica).instances());
    emit(io, changes).await;
}

/// Logs the dead and, when this instance is the reaper, queues their last-seen values and the
/// purges. Returns the changes.
fn reap(r: &Registry, swept: Swept) -> Changes {
    let Swept {
        changes,
        dead,
        expired,
        reaper,
    } = swept;
    for d in &dead {
        tracing::info!(instance = %d.instance, offline = d.offline.len(), reaper, "presence instance dead");
    }
    if reaper && (!dead.is_empty() || !expired.is_empty()) {
        let mut local = lock(&r.local);
        for d in dead {
            for who in d.offline {
                local.seen_due(who, d.departed);
            }
            local.reap_due(d.instance, d.bound, d.tombstone);
        }
        for (instance, bound) in expired {
            local.reap_due(instance, bound, false);
        }
        drop(local);
        r.wake.notify_one();
    }
    changes
}

fn gauge(instances: usize) {
    metrics::gauge!("socketio_presence_instances").set(instances as f64);
}

/// `presence:update` to the watchers of each changed participant, on both namespaces;
/// serialised once per change.
async fn emit(io: &SocketIo, changes: Changes) {
    for (who, presence) in changes {
        metrics::counter!("socketio_presence_updates_total").increment(1);
        let Ok(body) = serde_json::value::to_raw_value(&presence.update(&who)) else {
            continue;
        };
        let room = who.watch_room();
        for ns in [Namespace::Admin, Namespace::Provider] {
            if let Some(sockets) = io.of(ns.path())
                && let Err(e) = sockets
                    .to(room.clone())
                    .emit("presence:update", &body)
                    .await
            {
                count_broadcast_error(&e);
            }
        }
    }
}

/// Syncs the local state to the bucket until `stop`: takes the dirty keys, writes what each
/// should hold now, and retries failures with backoff.
async fn write_loop(r: Arc<Registry>, store: kv::Store, stop: CancellationToken) {
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    loop {
        let (ops, deadline) = {
            let mut local = lock(&r.local);
            local.expire(std::time::Instant::now());
            (
                local.take(BATCH, std::time::Instant::now()),
                local.next_deadline(),
            )
        };
        if ops.is_empty() {
            let grace_ends = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = r.wake.notified() => {}
                () = grace_ends => {}
            }
            continue;
        }
        let results: Vec<(Op, Result<(), WriteError>)> = futures_stream::iter(ops)
            .map(|op| {
                let (r, store) = (&r, &store);
                async move {
                    let result = write(r, store, &op).await;
                    (op, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0usize;
        {
            let mut local = lock(&r.local);
            for (op, result) in results {
                if let Err(e) = &result {
                    if failed == 0 {
                        tracing::warn!(error = %e, "presence write failed; retrying");
                    }
                    failed += 1;
                }
                local.done(op, result.is_ok());
            }
        }
        if failed > 0 {
            metrics::counter!("socketio_presence_kv_write_failures_total").increment(failed as u64);
            if !backoff.wait(&stop).await {
                return;
            }
        } else {
            backoff.reset();
        }
    }
}

/// Makes one write; counted by operation when it succeeds.
async fn write(r: &Registry, store: &kv::Store, op: &Op) -> Result<(), WriteError> {
    let me = &*r.instance;
    match op {
        Op::Presence {
            who,
            value: Some(status),
        } => put(store, keys::presence(me, who), presence_value(*status)).await,
        Op::Presence { who, value: None } => delete(store, keys::presence(me, who)).await,
        Op::View {
            who,
            channel,
            on: true,
        } => put(store, keys::viewing(me, channel, who), b"{}".to_vec()).await,
        Op::View {
            who,
            channel,
            on: false,
        } => delete(store, keys::viewing(me, channel, who)).await,
        Op::Seen { who, at } => put(store, keys::seen(who), keys::at_value(*at)).await,
        Op::Reap {
            instance,
            bound,
            tombstone,
        } => {
            purge(store, instance, Some(*bound)).await?;
            if *tombstone {
                delete(store, keys::live(instance)).await?;
            }
            Ok(())
        }
    }
}

fn presence_value(status: Activity) -> Vec<u8> {
    serde_json::to_vec(&PresenceValue { status }).unwrap_or_default()
}

async fn put(store: &kv::Store, key: String, value: Vec<u8>) -> Result<(), WriteError> {
    store.put(key, value.into()).await?;
    metrics::counter!("socketio_presence_kv_writes_total", "op" => "put").increment(1);
    Ok(())
}

async fn delete(store: &kv::Store, key: String) -> Result<(), WriteError> {
    store.delete(key).await?;
    metrics::counter!("socketio_presence_kv_writes_total", "op" => "delete").increment(1);
    Ok(())
}

/// Purges every key of `instance` (those stored before stream sequence `bound`, when given:
/// what this instance saw of it, so a write it makes after coming back survives).
async fn purge(store: &kv::Store, instance: &str, bound: Option<u64>) -> Result<(), WriteError> {
    let filter = keys::instance_filter(&store.prefix, instance);
    match bound {
        Some(bound) => store.stream.purge().sequence(bound).filter(filter).await?,
        None => store.stream.purge().filter(filter).await?,
    };
    metrics::counter!("socketio_presence_kv_writes_total", "op" => "purge").increment(1);
    Ok(())
}

/// Puts this instance's live key; returns its stream sequence.
async fn beat(r: &Registry, store: &kv::Store) -> Result<u64, WriteError> {
    let value = keys::at_value(keys::millis(OffsetDateTime::now_utc()));
    let revision = store.put(keys::live(&r.instance), value.into()).await?;
    metrics::counter!("socketio_presence_kv_writes_total", "op" => "put").increment(1);
    Ok(revision)
}

/// Says this instance is alive every `presence.heartbeat_ms` (and at once when asked), until
/// `stop`.
async fn heartbeat_loop(r: Arc<Registry>, store: kv::Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(r.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = r.beat.notified() => {}
        }
        if let Err(e) = beat(&r, &store).await {
            tracing::warn!(error = %e, "presence heartbeat failed");
        }
    }
}

/// Leaves the cluster, within [`LEAVE_BUDGET`]: writes the last-seen values and purges still
/// queued (they are nobody else's), then deletes the live key. Every other instance keeps
/// this one's participants for `presence.grace_ms` after that deletion, so those
/// reconnecting elsewhere meanwhile do not go offline; the reaper then writes the last-seen
/// of those that did and purges this instance's keys.
async fn leave(r: &Registry, store: &kv::Store) {
    let deadline = Instant::now() + LEAVE_BUDGET;
    let ops = lock(&r.local).take_queued();
    let results: Vec<(Op, Result<(), WriteError>)> = futures_stream::iter(ops)
        .map(|op| async move {
            let result = bounded(deadline, write(r, store, &op)).await;
            (op, result)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let failed = results.iter().filter(|(_, result)| result.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            "presence last-seen values or purges not written before the shutdown budget"
        );
    }
    if let Err(e) = bounded(deadline, delete(store, keys::live(&r.instance))).await {
        tracing::warn!(error = %e, "presence live key not deleted");
    }
    tracing::info!("left the presence cluster");
}

/// `write`, unless `deadline` passes first.
async fn bounded(
    deadline: Instant,
    write: impl Future<Output = Result<(), WriteError>>,
) -> Result<(), WriteError> {
    tokio::time::timeout_at(deadline, write)
        .await
        .unwrap_or(Err(WriteError::OutOfTime))
}
