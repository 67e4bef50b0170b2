//! `load sio presence`: how fast a presence change travels between gateway instances, and what
//! presence costs per connected user (bucket writes, bucket bytes, resident memory).
//!
//! It starts one nats-server and two release gateways, A and B, on one PostgreSQL database: a
//! two-instance cluster whose presence lives in the JetStream key-value bucket
//! `presence.bucket` (stream `KV_<bucket>`).
//!
//! **Latency** (`--watched` M, `--rounds` R). M subject users (`sub` `lat-0`..) connect to
//! `/admin` on B, one socket each. An observer on A watches them all with `presence:query
//! {user_ids}`, at most `presence.max_query_ids` (100) ids per query, so several queries
//! (`presence.max_watched_per_socket` is raised to M when M is above its default 500). A second
//! observer on B does the same, for reference: the same change seen on the instance where it
//! happens. Then R rounds, **one change in flight at a time**: round r has subject r mod M
//! emit `presence:update {status: "away"}` (first pass over the subjects) or
//! `{status: "online"}` (the next pass, each subject back), so one subject changes at most once
//! per M rounds (the gateway holds a participant's writes 250 ms apart). A round ends when four things arrived: the ack on B, the bucket write (seen
//! by a plain NATS subscription to `$KV.<bucket>.>`), and the `presence:update` of that user
//! with that status at each observer; or after 5 s, when what is missing counts as lost. The
//! next round starts at once: no pause, no fixed rate. Every time is read on this process's
//! monotonic clock; each latency is from just before the emit's frame is written to the arrival.
//! The bucket write is the second look at the figure: it is timed by another client (this
//! process's NATS connection) on another path, so emit → write bounds how much of the
//! cross-instance time B and NATS take. Write → update on A is reported signed: the tap's
//! timestamp passes through two more task hops in this process than a WebSocket read, so when
//! the whole path is well under a millisecond the tap may see the write after A's update
//! arrived (counted as `kv_after_remote`); only a large positive value would mean something.
//! The [`SLOWEST`] rounds are listed with every leg and the time they started, to tell a slow
//! gateway from a slow tool (or a periodic pause: the heartbeat every `presence.heartbeat_ms`).
//!
//! **Cost** (`--users` N). Resident memory can only be read on a process that never held the
//! connections (RSS does not go down after sockets close), so each variant gets a fresh third
//! instance, C, in the same cluster: `anonymous` (N tokens without `sub`: no identity room, no
//! presence), `shared` (N sockets of one `sub`, as `load sio idle` connects: one participant),
//! then `distinct` (N users, `sub` `user-<i>`, one socket each: N participants, N identity
//! rooms); `--no-compare` runs `distinct` only. `distinct` comes last because it leaves N
//! `seen` keys in the bucket, which every instance loads at start: the others would start
//! larger and reuse that freed memory. How much a fresh instance grows with the bucket is read
//! too: its RSS with no connections before the variants and after them. For each variant: the
//! readings of `load sio idle` (`VmRSS` once stable, before and with the N connected), the RSS
//! of the peers A and B (each holds a replica of the cluster's presence), and the bucket writes
//! counted three ways over the connect and over the disconnect (read after `presence.grace_ms`):
//!
//! 1. C's `socketio_presence_kv_writes_total{op}` deltas (its own writes), less `op="purge"` (a
//!    stream purge adds no message) and less C's own heartbeats, which the counter counts as
//!    puts (C's instance id is the one whose keys appear once C started);
//! 2. the stream's `state.last_sequence` delta (every write of every instance: each put, delete
//!    or purge marker is one message) less every instance's heartbeats (`i.<instance>.live`),
//!    counted by
//! 3. the NATS subscription, which sorts every write by key (`i.<instance>.p.…` presence,
//!    `seen.…` last seen, `i.<instance>.live` heartbeat).
//!
//! A killed C is reaped by a peer after `presence.ttl_ms`; the next measurement waits for that.
//! Methods 1 and 2 must agree; the bucket's bytes and messages come from the same stream info.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Packet, SioProtocol};
use super::servers::{Kind, Launch, Server, Tuning};
use super::{Args, SECRET};
use crate::args::quiet;
use crate::fleet::{Awaited, Fleet, Incoming, Protocol, Ws, next_text, send_text};
use crate::output::{kib, machine_line, num};
use crate::{procfs, stats};

/// The namespace of every socket here.
const NAMESPACE: &str = "/admin";
/// The gateway's prefix of environment settings.
const ENV: &str = "GATEWAY_SOCKETIO_PRESENCE__";
/// `presence.max_query_ids` by default.
const DEFAULT_MAX_QUERY_IDS: usize = 100;
/// `presence.max_watched_per_socket` by default.
const DEFAULT_MAX_WATCHED: usize = 500;
/// `presence.grace_ms` by default.
const DEFAULT_GRACE_MS: u64 = 3000;
/// `presence.heartbeat_ms` by default.
const DEFAULT_HEARTBEAT_MS: u64 = 5000;
/// `presence.ttl_ms` by default.
const DEFAULT_TTL_MS: u64 = 15_000;
/// How long a latency round waits for what it expects.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the observers wait for subjects not online at their query to come online.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(15);
/// The gateway's counter of its bucket writes.
const KV_WRITES: &str = "socketio_presence_kv_writes_total";
/// Ack id of an observer's first `presence:query` (the next ones follow).
const FIRST_QUERY_ACK: u32 = 100;
/// Bucket writes are settled once the NATS subscription saw none for this long.
const STILL: Duration = Duration::from_secs(2);

/// `load sio presence`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PresenceArgs {
    /// Users connected for the cost measurement, each with its own `sub`.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Status changes timed across instances (one in flight at a time).
    #[arg(long, default_value_t = 1000)]
    pub rounds: usize,
    /// Subject users on B that the observer on A watches.
    #[arg(long, default_value_t = 1000)]
    pub watched: usize,
    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Part::Both)]
    pub part: Part,
    /// Cost: measure N distinct users only, not also N sockets of one user and N without `sub`.
    #[arg(long)]
    pub no_compare: bool,
}

/// Which measurements `load sio presence` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Both,
    Latency,
    Cost,
}

/// The presence settings the measurement depends on, as the gateways get them (`--gateway-env`
/// wins over the defaults).
#[derive(Debug, Clone)]
struct Settings {
    bucket: String,
    grace: Duration,
    max_query_ids: usize,
    max_watched: usize,
    heartbeat: Duration,
    ttl: Duration,
}

impl Settings {
    fn of(launch: &Launch) -> Self {
        let get = |key: &str| {
            launch
                .gateway_env
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(&format!("{ENV}{key}")))
                .map(|(_, v)| v.clone())
        };
        let number =
            |key: &str, default: u64| get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
        Self {
            bucket: get("BUCKET").unwrap_or_else(|| events::subject::PRESENCE_BUCKET.to_owned()),
            grace: Duration::from_millis(number("GRACE_MS", DEFAULT_GRACE_MS)),
            max_query_ids: number("MAX_QUERY_IDS", DEFAULT_MAX_QUERY_IDS as u64).max(1) as usize,
            max_watched: number("MAX_WATCHED_PER_SOCKET", DEFAULT_MAX_WATCHED as u64) as usize,
            heartbeat: Duration::from_millis(number("HEARTBEAT_MS", DEFAULT_HEARTBEAT_MS)),
            ttl: Duration::from_millis(number("TTL_MS", DEFAULT_TTL_MS)),
        }
    }

    fn stream(&self) -> String {
        format!("KV_{}", self.bucket)
    }
}

/// Runs `load sio presence` on the NATS server of `launch`; returns the report.
pub async fn run(args: &Args, launch: &Launch, p: &PresenceArgs) -> anyhow::Result<Value> {
    let settings = Settings::of(launch);
    let mut launch = launch.clone();
    let mut raised = Value::Null;
    if p.watched > settings.max_watched {
        // First, so that a `--gateway-env` of the same key still wins.
        launch.gateway_env.insert(
            0,
            (
                format!("{ENV}MAX_WATCHED_PER_SOCKET"),
                p.watched.to_string(),
            ),
        );
        raised = json!(p.watched);
    }
    let settings = Settings {
        max_watched: settings.max_watched.max(p.watched),
        ..settings
    };

    eprintln!("presence: starting gateway A");
    let a = Server::start(Kind::Rust, &launch, Tuning::default()).await?;
    eprintln!("presence: starting gateway B (same NATS server, same database)");
    let b = a.start_peer(&launch, Tuning::default()).await?;
    let nats = async_nats::connect(launch.nats_url.as_str())
        .await
        .context("connecting to the private nats-server")?;
    let js = async_nats::jetstream::new(nats.clone());
    let mut tap = Tap::start(&nats, &settings.bucket).await?;
    let bucket_config = match js.get_stream(settings.stream()).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => json!({
                "storage": format!("{:?}", info.config.storage),
                "max_messages_per_subject": info.config.max_messages_per_subject,
                "replicas": info.config.num_replicas,
            }),
            Err(e) => json!({"error": format!("stream info: {e}")}),
        },
        Err(e) => json!({"error": format!("{}: {e}", settings.stream())}),
    };

    let mut report = json!({
        "mode": "presence",
        "bucket": settings.bucket,
        "stream": settings.stream(),
        "bucket_config": bucket_config,
        "grace_ms": settings.grace.as_millis() as u64,
        "max_query_ids": settings.max_query_ids,
        "max_watched_per_socket_raised_to": raised,
        "instances": {"a": {"pid": a.pid, "addr": a.addr.to_string()},
                      "b": {"pid": b.pid, "addr": b.addr.to_string()}},
    });
    // Both write their live key at once and every heartbeat; B started second, so its UUID v7
    // id sorts last.
    let cluster = tap
        .wait_instances(2, settings.heartbeat + Duration::from_secs(5))
        .await;
    let b_id = (cluster.len() == 2)
        .then(|| cluster.last().cloned())
        .flatten();
    report["instances"]["a"]["id"] = json!(cluster.first().filter(|_| b_id.is_some()));
    report["instances"]["b"]["id"] = json!(b_id);
    if p.part != Part::Cost {
        let measured = latency(args, &settings, &a, &b, b_id.as_deref(), &mut tap, &js, p).await;
        report["latency"] = part("latency", measured);
    }
    if p.part != Part::Latency {
        let peers = [("a", a.pid), ("b", b.pid)];
        // Distinct last: it leaves N `seen` keys in the bucket, which every instance started
        // afterwards loads (a larger RSS before, and freed memory the connections then reuse).
        let variants = if p.no_compare {
            vec![Variant::Distinct]
        } else {
            vec![Variant::Anonymous, Variant::Shared, Variant::Distinct]
        };
        let mut cost = json!({"users": p.users});
        let mut startup = vec![part(
            "startup",
            startup_rss(args, &launch, &settings, &a, &tap, &js).await,
        )];
        for variant in variants {
            let measured = cost_variant(
                args, &launch, &settings, &a, &peers, &tap, &js, variant, p.users,
            )
            .await;
            cost[variant.name()] = part(variant.name(), measured);
        }
        startup.push(part(
            "startup",
            startup_rss(args, &launch, &settings, &a, &tap, &js).await,
        ));
        let (first, last) = (&startup[0], &startup[startup.len() - 1]);
        let messages = last["bucket_messages"].as_f64().unwrap_or(0.0)
            - first["bucket_messages"].as_f64().unwrap_or(0.0);
        let rss =
            last["rss_bytes"].as_f64().unwrap_or(0.0) - first["rss_bytes"].as_f64().unwrap_or(0.0);
        cost["startup_bytes_per_bucket_message"] = if messages > 0.0 {
            json!(rss / messages)
        } else {
            Value::Null
        };
        cost["startup"] = json!(startup);
        compare(&mut cost);
        report["cost"] = cost;
    }
    tap.stop();
    // The peer first: the first instance's database is dropped with it.
    b.stop().await;
    a.stop().await;
    Ok(report)
}

/// A measurement's figures; its failure becomes its `error`.
fn part(name: &str, measured: anyhow::Result<Value>) -> Value {
    measured.unwrap_or_else(|e| {
        eprintln!("presence {name}: {e:#}");
        json!({"error": format!("{e:#}")})
    })
}

/// An HS256 `/admin` token valid for 30 days, with `sub` when given.
fn token(sub: Option<&str>) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = json!({"iat": now, "exp": now + 30 * 86_400});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// The namespace connect's `auth` for `sub`.
fn auth(sub: Option<&str>) -> anyhow::Result<String> {
    Ok(json!({"token": token(sub)?}).to_string())
}

/// The `/admin` protocol of `server`; the `auth` is given per connection.
fn admin(server: &Server) -> anyhow::Result<SioProtocol> {
    Ok(SioProtocol {
        request: SioProtocol::request(&server.ws_base())?,
        namespace: NAMESPACE.to_owned(),
        auth: "{}".to_owned(),
        join: true,
        subscribe: "{}".to_owned(),
        counted: Vec::new(),
    })
}

/// Opens a WebSocket to `protocol`'s server and joins `/admin` with `auth`.
async fn open(protocol: &SioProtocol, auth: &str) -> Result<Ws, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(protocol.request.clone())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    protocol.handshake_as(&mut ws, false, auth).await?;
    Ok(ws)
}

// ---------------------------------------------------------------------------------------------
// The bucket as NATS carries it.

/// Every write to the bucket, seen by a plain NATS subscription to `$KV.<bucket>.>` (a KV put,
/// delete or purge is a publish on `$KV.<bucket>.<key>`), counted by key class and operation.
struct Tap {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Whether writes are also sent on `writes` (the latency rounds).
    record: Arc<AtomicBool>,
    writes: mpsc::UnboundedReceiver<KvWrite>,
    task: tokio::task::JoinHandle<()>,
}

/// One bucket write, as recorded for the latency rounds.
#[derive(Debug)]
struct KvWrite {
    at: Instant,
    class: &'static str,
}

impl Tap {
    async fn start(nats: &async_nats::Client, bucket: &str) -> anyhow::Result<Self> {
        let prefix = format!("$KV.{bucket}.");
        let mut sub = nats
            .subscribe(format!("{prefix}>"))
            .await
            .context("subscribing to the bucket's subjects")?;
        // The subscription is in place once the server has seen it.
        nats.flush().await.context("flushing the subscription")?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let record = Arc::new(AtomicBool::new(false));
        let (tx, writes) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let counts = Arc::clone(&counts);
            let record = Arc::clone(&record);
            async move {
                while let Some(message) = sub.next().await {
                    let at = Instant::now();
                    let key = message.subject.as_str().strip_prefix(&prefix).unwrap_or("");
                    let (class, instance) = key_class(key);
                    let op = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("KV-Operation"))
                        .map_or("put", |v| match v.as_str() {
                            "DEL" => "delete",
                            "PURGE" => "purge",
                            _ => "put",
                        });
                    {
                        let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                        *counts.entry(format!("{class}.{op}")).or_default() += 1;
                        if let Some(instance) = instance {
                            *counts
                                .entry(format!("{class}.{op}@{instance}"))
                                .or_default() += 1;
                        }
                    }
                    if record.load(Ordering::Relaxed) {
                        let _ = tx.send(KvWrite { at, class });
                    }
                }
            }
        });
        Ok(Self {
            counts,
            record,
            writes,
            task,
        })
    }

    /// Writes so far, by `<class>.<op>`, and for the keys of an instance (`i.<instance>.…`)
    /// also by `<class>.<op>@<instance>`.
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes so far other than heartbeats.
    fn presence_writes(&self) -> u64 {
        self.snapshot()
            .iter()
            .filter(|(k, _)| !k.starts_with("live.") && !k.contains('@'))
            .map(|(_, n)| n)
            .sum()
    }

    /// Instances whose keys were written so far.
    fn instances(&self) -> BTreeSet<String> {
        self.snapshot()
            .keys()
            .filter_map(|k| Some(k.split_once('@')?.1.to_owned()))
            .collect()
    }

    /// Waits up to `limit` for an instance not in `known` to write; the newest such (instance
    /// ids are UUID v7: they sort by creation).
    async fn new_instance(&self, known: &BTreeSet<String>, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let new = self.instances().into_iter().rfind(|i| !known.contains(i));
            if new.is_some() || Instant::now() >= deadline {
                return new;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `limit` until `n` instances wrote; returns those seen.
    async fn wait_instances(&self, n: usize, limit: Duration) -> BTreeSet<String> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.instances();
            if seen.len() >= n || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes of `key` (`<class>.<op>@<instance>`) so far.
    fn count(&self, key: &str) -> u64 {
        self.snapshot().get(key).copied().unwrap_or(0)
    }

    /// Records writes on `writes` (dropping what was recorded before) or stops recording.
    fn recording(&mut self, on: bool) {
        self.record.store(on, Ordering::Relaxed);
        while self.writes.try_recv().is_ok() {}
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// What a key of the bucket is (the layout of `collab/registry/keys.rs`): `live` (an instance's
/// heartbeat), `presence`, `viewing`, `seen`, or `other`; and the instance it belongs to.
fn key_class(key: &str) -> (&'static str, Option<&str>) {
    let mut parts = key.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("i"), Some(i), Some("live")) => ("live", Some(i)),
        (Some("i"), Some(i), Some("p")) => ("presence", Some(i)),
        (Some("i"), Some(i), Some("v")) => ("viewing", Some(i)),
        (Some("seen"), _, _) => ("seen", None),
        _ => ("other", None),
    }
}

/// Waits at least `least`, then until the tap saw no write but heartbeats for [`STILL`], at
/// most `limit` in all; returns the seconds waited.
async fn settle(tap: &Tap, least: Duration, limit: Duration) -> f64 {
    let started = Instant::now();
    tokio::time::sleep(least).await;
    let mut last = (tap.presence_writes(), Instant::now());
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = tap.presence_writes();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STILL {
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

/// The stream's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct StreamState {
    last_sequence: u64,
    messages: u64,
    bytes: u64,
}

async fn stream_state(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> anyhow::Result<StreamState> {
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("stream info of {name}"))?;
    Ok(StreamState {
        last_sequence: info.state.last_sequence,
        messages: info.state.messages,
        bytes: info.state.bytes,
    })
}

/// The samples of the metric family `name` by label set (`op="put"`; `""` without labels), or
/// `None` when the text has no such family.
fn series(text: &str, name: &str) -> Option<BTreeMap<String, f64>> {
    let mut found = text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .is_some_and(|t| t.split(' ').next() == Some(name))
    });
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (bare, labels) = match head.split_once('{') {
            Some((bare, rest)) => (bare, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        if bare != name {
            continue;
        }
        found = true;
        if let Ok(v) = value.parse::<f64>() {
            *map.entry(labels.to_owned()).or_default() += v;
        }
    }
    found.then_some(map)
}

/// Whether a label set of [`KV_WRITES`] counts heartbeats apart from the other writes.
fn heartbeat_labels(labels: &str) -> bool {
    labels.contains("live") || labels.contains("heartbeat")
}

/// One window's bucket writes, counted the three ways, for `sockets` sockets; the metric is
/// `writer`'s (its instance id, as the tap saw it).
///
/// The gateway's counter counts every write of the instance: its own heartbeats too (as
/// `op="put"`, unless a label says heartbeat), and `op="purge"` (a stream purge, which adds no
/// message). Left out of the metric figure: purges, and the writer's own heartbeats as the tap
/// counted them. Left out of the stream figure: every instance's heartbeats.
fn writes(
    metric: (&str, &str),
    stream: (StreamState, StreamState),
    tap: (&BTreeMap<String, u64>, &BTreeMap<String, u64>),
    sockets: usize,
    writer: Option<&str>,
) -> Value {
    let per = |x: f64| x / sockets.max(1) as f64;
    let (before, after) = (series(metric.0, KV_WRITES), series(metric.1, KV_WRITES));
    let by_op: Option<BTreeMap<String, f64>> = after.map(|after| {
        let before = before.unwrap_or_default();
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .collect()
    });
    let all_delta: BTreeMap<String, u64> = tap
        .1
        .iter()
        .map(|(k, v)| (k.clone(), v - tap.0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let own_heartbeats = writer.map_or(0, |w| {
        all_delta
            .get(&format!("live.put@{w}"))
            .copied()
            .unwrap_or(0)
    });
    let labelled_heartbeats = by_op
        .as_ref()
        .is_some_and(|m| m.keys().any(|k| heartbeat_labels(k)));
    let metric_left_out = if labelled_heartbeats {
        0
    } else {
        own_heartbeats
    };
    let metric_presence: Option<f64> = by_op.as_ref().map(|m| {
        let counted: f64 = m
            .iter()
            .filter(|(k, _)| !heartbeat_labels(k) && !k.contains("\"purge\""))
            .map(|(_, v)| v)
            .sum();
        counted - metric_left_out as f64
    });
    let tap_delta: BTreeMap<String, u64> = all_delta
        .into_iter()
        .filter(|(k, _)| !k.contains('@'))
        .collect();
    let heartbeats: u64 = tap_delta
        .iter()
        .filter(|(k, _)| k.starts_with("live."))
        .map(|(_, v)| v)
        .sum();
    let tap_presence: u64 = tap_delta.values().sum::<u64>() - heartbeats;
    let sequence = stream
        .1
        .last_sequence
        .saturating_sub(stream.0.last_sequence);
    let stream_presence = sequence.saturating_sub(heartbeats);
    json!({
        "metric_by_labels": by_op,
        "writer": writer,
        "metric_own_heartbeats_left_out": metric_left_out,
        "metric": metric_presence,
        "stream_sequence_delta": sequence,
        "heartbeats": heartbeats,
        "stream": stream_presence,
        "tap_by_key": tap_delta,
        "tap": tap_presence,
        "per_socket_metric": metric_presence.map(per),
        "per_socket_stream": per(stream_presence as f64),
        "methods_agree": metric_presence.map(|m| m == stream_presence as f64),
    })
}

// ---------------------------------------------------------------------------------------------
// Latency across instances.

/// What a subject's task tells the rounds.
#[derive(Debug)]
enum Note {
    Ready,
    Failed(usize, String),
    /// Its `presence:update` is about to be written, at this instant.
    Sent(usize, Instant),
    /// Its ack arrived, with the ack's data.
    Acked(usize, Instant, String),
    Closed(usize, String),
}

/// What an observer's task tells the rounds.
#[derive(Debug)]
enum Seen {
    /// A `presence:update`.
    Update {
        at: Instant,
        id: String,
        status: String,
    },
    Closed(String),
}

/// One subject user's socket on B: connects, then emits `presence:update` with each status it
/// is sent, answering pings meanwhile; closes when `commands` ends.
async fn subject(
    i: usize,
    protocol: Arc<SioProtocol>,
    auth: String,
    permits: Arc<Semaphore>,
    mut commands: mpsc::UnboundedReceiver<&'static str>,
    notes: mpsc::UnboundedSender<Note>,
) {
    let permit = permits.acquire_owned().await.ok();
    let mut ws = match open(&protocol, &auth).await {
        Ok(ws) => ws,
        Err(why) => {
            let _ = notes.send(Note::Failed(i, why));
            return;
        }
    };
    drop(permit);
    let _ = notes.send(Note::Ready);
    let mut ack = 0u32;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(status) = command else {
                    let _ = ws.close(None).await;
                    return;
                };
                ack += 1;
                let packet =
                    format!("42{NAMESPACE},{ack}[\"presence:update\",{{\"status\":\"{status}\"}}]");
                let at = Instant::now();
                if let Err(e) = ws.send(Message::text(packet)).await {
                    let _ = notes.send(Note::Closed(i, format!("emit: {e}")));
                    return;
                }
                let _ = notes.send(Note::Sent(i, at));
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match protocol::parse(text.as_str(), NAMESPACE) {
                    Packet::Ping => {
                        if let Err(e) = ws.send(Message::text("3")).await {
                            let _ = notes.send(Note::Closed(i, format!("pong: {e}")));
                            return;
                        }
                    }
                    Packet::Ack(_, data) => {
                        let _ = notes.send(Note::Acked(i, Instant::now(), data.to_owned()));
                    }
                    Packet::EngineClose | Packet::Disconnected => {
                        let _ = notes.send(Note::Closed(i, text.as_str().to_owned()));
                        return;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    let _ = notes.send(Note::Closed(i, "closed".to_owned()));
                    return;
                }
                Some(Err(e)) => {
                    let _ = notes.send(Note::Closed(i, e.to_string()));
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// What an observer's `presence:query` answers said.
#[derive(Debug, Default)]
struct Watched {
    queries: usize,
    /// Status of each id answered.
    status: BTreeMap<String, String>,
    watched: usize,
    refused: Vec<Value>,
}

/// Watches `ids` from `ws` with `presence:query`, `chunk` ids per query; `presence:update`s
/// arriving meanwhile are returned too.
async fn watch(ws: &mut Ws, ids: &[String], chunk: usize) -> anyhow::Result<(Watched, Vec<Seen>)> {
    let mut watched = Watched::default();
    let mut early = Vec::new();
    for (k, ids) in ids.chunks(chunk).enumerate() {
        let ack = FIRST_QUERY_ACK + k as u32;
        let query = json!(["presence:query", {"user_ids": ids}]);
        send_text(ws, "presence:query", format!("42{NAMESPACE},{ack}{query}"))
            .await
            .map_err(anyhow::Error::msg)?;
        let data = loop {
            let text = next_text(ws)
                .await
                .map_err(|e| anyhow::anyhow!("waiting for the presence:query ack: {e}"))?;
            match protocol::parse(&text, NAMESPACE) {
                Packet::Ping => send_text(ws, "pong", "3".to_owned())
                    .await
                    .map_err(anyhow::Error::msg)?,
                Packet::Ack(id, data) if id == ack => break data.to_owned(),
                Packet::Event("presence:update") => {
                    if let Some(seen) = update(&text, Instant::now()) {
                        early.push(seen);
                    }
                }
                Packet::EngineClose | Packet::Disconnected => {
                    bail!("the gateway closed the observer: {text}")
                }
                _ => {}
            }
        };
        let reply: Value = serde_json::from_str(&data)
            .with_context(|| format!("presence:query ack is not JSON: {data}"))?;
        let reply = &reply[0];
        if reply["ok"] != true {
            bail!("presence:query refused: {reply}");
        }
        for entry in reply["presence"].as_array().into_iter().flatten() {
            let id = entry["id"].as_str().unwrap_or_default().to_owned();
            watched
                .status
                .insert(id, entry["status"].as_str().unwrap_or("?").to_owned());
            if entry["watched"] == true {
                watched.watched += 1;
            }
        }
        watched
            .refused
            .extend(reply["refused"].as_array().into_iter().flatten().cloned());
        watched.queries += 1;
    }
    Ok((watched, early))
}

/// A `presence:update` event as [`Seen`].
fn update(text: &str, at: Instant) -> Option<Seen> {
    let args = protocol::event_args(text, NAMESPACE)?;
    (args[0] == "presence:update").then(|| Seen::Update {
        at,
        id: args[1]["id"].as_str().unwrap_or_default().to_owned(),
        status: args[1]["status"].as_str().unwrap_or_default().to_owned(),
    })
}

/// An observer's socket after its queries: forwards every `presence:update`, answers pings,
/// until `stop`.
async fn observe(mut ws: Ws, seen: mpsc::UnboundedSender<Seen>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = Instant::now();
                    match protocol::parse(text.as_str(), NAMESPACE) {
                        Packet::Ping => {
                            if let Err(e) = ws.send(Message::text("3")).await {
                                let _ = seen.send(Seen::Closed(format!("pong: {e}")));
                                return;
                            }
                        }
                        Packet::Event("presence:update") => {
                            if let Some(u) = update(text.as_str(), at) {
                                let _ = seen.send(u);
                            }
                        }
                        Packet::EngineClose | Packet::Disconnected => {
                            let _ = seen.send(Seen::Closed(text.as_str().to_owned()));
                            return;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    let _ = seen.send(Seen::Closed("closed".to_owned()));
                    return;
                }
                Some(Err(e)) => {
                    let _ = seen.send(Seen::Closed(e.to_string()));
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// An observer connected and watching the subjects.
struct Observer {
    seen: mpsc::UnboundedReceiver<Seen>,
    stop: CancellationToken,
    figures: Value,
}

impl Observer {
    /// Connects `who` to `server`, watches `ids`, and waits (briefly) until the observer knows
    /// every one of them online.
    async fn start(
        server: &Server,
        who: &str,
        ids: &[String],
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let protocol = admin(server)?;
        let mut ws = open(&protocol, &auth(Some(who))?)
            .await
            .map_err(|e| anyhow::anyhow!("observer {who}: {e}"))?;
        let (watched, early) = watch(&mut ws, ids, settings.max_query_ids).await?;
        let (tx, mut seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(observe(ws, tx, stop.clone()));

        let mut status = watched.status.clone();
        let not_online_at_query = ids
            .iter()
            .filter(|id| status.get(*id).map(String::as_str) != Some("online"))
            .count();
        let mut apply = |s: &Seen| {
            if let Seen::Update { id, status: st, .. } = s {
                status.insert(id.clone(), st.clone());
            }
        };
        early.iter().for_each(&mut apply);
        let missing = |status: &BTreeMap<String, String>| {
            ids.iter()
                .filter(|id| status.get(*id).map(String::as_str) != Some("online"))
                .count()
        };
        let deadline = tokio::time::Instant::now() + ONLINE_TIMEOUT;
        let mut late_updates = 0;
        while missing(&status) > 0 {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some(s @ Seen::Update { .. })) => {
                    late_updates += 1;
                    if let Seen::Update { id, status: st, .. } = &s {
                        status.insert(id.clone(), st.clone());
                    }
                }
                Ok(Some(Seen::Closed(why))) => bail!("observer {who} closed: {why}"),
                Ok(None) | Err(_) => break,
            }
        }
        let figures = json!({
            "who": who,
            "instance_pid": server.pid,
            "queries": watched.queries,
            "answered": watched.status.len(),
            "watched": watched.watched,
            "refused": watched.refused,
            "not_online_at_query": not_online_at_query,
            "updates_before_online": early.len() + late_updates,
            "not_online_after_wait": missing(&status),
        });
        Ok(Self {
            seen,
            stop,
            figures,
        })
    }
}

/// One latency round's arrivals.
#[derive(Debug, Default)]
struct Arrivals {
    sent: Option<Instant>,
    ack: Option<Instant>,
    kv: Option<Instant>,
    remote: Option<Instant>,
    local: Option<Instant>,
}

impl Arrivals {
    fn complete(&self) -> bool {
        self.sent.is_some()
            && self.ack.is_some()
            && self.kv.is_some()
            && self.remote.is_some()
            && self.local.is_some()
    }
}

/// Milliseconds from `from` to `to`, when both are there.
fn ms(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    Some(to?.checked_duration_since(from?)?.as_secs_f64() * 1000.0)
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn signed_ms(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some(match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(from.duration_since(to).as_secs_f64() * 1000.0),
    })
}

/// Rounds listed in the report, slowest first (cross-instance latency).
const SLOWEST: usize = 8;

/// Whether an observer's report is the round's expected update.
fn expected(seen: &Seen, id: &str, status: &str) -> bool {
    matches!(seen, Seen::Update { id: i, status: s, .. } if i == id && s == status)
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)] // one measurement, top to bottom
async fn latency(
    args: &Args,
    settings: &Settings,
    a: &Server,
    b: &Server,
    b_id: Option<&str>,
    tap: &mut Tap,
    js: &async_nats::jetstream::Context,
    p: &PresenceArgs,
) -> anyhow::Result<Value> {
    let m = p.watched.max(1);
    let ids: Vec<String> = (0..m).map(|i| format!("lat-{i}")).collect();
    eprintln!("latency: connecting {m} subject users to B");
    let protocol = Arc::new(admin(b)?);
    let permits = Arc::new(Semaphore::new(args.fleet.concurrency.max(1)));
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let mut commands = Vec::with_capacity(m);
    for (i, id) in ids.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        commands.push(tx);
        tokio::spawn(subject(
            i,
            Arc::clone(&protocol),
            auth(Some(id))?,
            Arc::clone(&permits),
            rx,
            notes_tx.clone(),
        ));
    }
    drop(notes_tx);
    let mut failed = Vec::new();
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while ready + failed.len() < m {
        match tokio::time::timeout_at(deadline, notes.recv()).await {
            Ok(Some(Note::Ready)) => ready += 1,
            Ok(Some(Note::Failed(i, why) | Note::Closed(i, why))) => {
                failed.push(format!("{i}: {why}"))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if ready < m {
        bail!(
            "{ready} of {m} subjects connected to B; first failures: {:?}",
            failed.iter().take(3).collect::<Vec<_>>()
        );
    }

    eprintln!(
        "latency: observers on A and B watch them ({} queries each)",
        m.div_ceil(settings.max_query_ids)
    );
    let mut remote = Observer::start(a, "observer-a", &ids, settings).await?;
    let mut local = Observer::start(b, "observer-b", &ids, settings).await?;

    let quiet_before = quiet(args.quiet_wait_secs).await;
    let stream = settings.stream();
    let metrics_before = b.metrics().await;
    let stream_before = stream_state(js, &stream).await?;
    let tap_before = tap.snapshot();
    tap.recording(true);
    let mut cross = Vec::new();
    let mut same = Vec::new();
    let mut acks = Vec::new();
    let mut to_kv = Vec::new();
    let mut kv_to_remote = Vec::new();
    let mut lost: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexpected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kv_after_remote = 0;
    let mut timeline: Vec<Value> = Vec::with_capacity(p.rounds);
    let mut acks_not_ok = Vec::new();
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    let mut dead = vec![false; m];
    eprintln!("latency: {} rounds, one change in flight", p.rounds);
    let machine_before = procfs::machine_cpu();
    let started = Instant::now();
    for r in 0..p.rounds {
        // Each subject changes once per M rounds: a participant's second change within
        // `MIN_WRITE_INTERVAL` (250 ms) of its first is held back by design (coalescing), and
        // would measure that hold, not propagation.
        let i = r % m;
        let status = if (r / m).is_multiple_of(2) {
            "away"
        } else {
            "online"
        };
        // What arrives between rounds belongs to none of them.
        while let Ok(s) = remote.seen.try_recv() {
            if matches!(s, Seen::Update { .. }) {
                *unexpected.entry("remote").or_default() += 1;
            }
        }
        while let Ok(s) = local.seen.try_recv() {
            if matches!(s, Seen::Update { .. }) {
                *unexpected.entry("local").or_default() += 1;
            }
        }
        while let Ok(w) = tap.writes.try_recv() {
            if w.class != "live" {
                *unexpected.entry("kv").or_default() += 1;
            }
        }
        if dead[i] || commands[i].send(status).is_err() {
            *lost.entry("subject gone").or_default() += 1;
            continue;
        }
        let mut got = Arrivals::default();
        let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
        while !got.complete() {
            tokio::select! {
                Some(note) = notes.recv() => match note {
                    Note::Sent(j, at) if j == i => got.sent = Some(at),
                    Note::Acked(j, at, data) if j == i => {
                        got.ack = Some(at);
                        let ok = serde_json::from_str::<Value>(&data)
                            .is_ok_and(|v| v[0]["ok"] == true && v[0]["status"] == status);
                        if !ok {
                            acks_not_ok.push(data);
                        }
                    }
                    Note::Closed(j, why) | Note::Failed(j, why) => {
                        dead[j] = true;
                        *problems.entry(format!("subject closed: {why}")).or_default() += 1;
                    }
                    other => {
                        *problems.entry(format!("out of round: {other:?}")).or_default() += 1;
                    }
                },
                Some(s) = remote.seen.recv() => {
                    if got.remote.is_none() && expected(&s, &ids[i], status) {
                        if let Seen::Update { at, .. } = s {
                            got.remote = Some(at);
                        }
                    } else if let Seen::Closed(why) = s {
                        bail!("the observer on A closed: {why}");
                    } else {
                        *unexpected.entry("remote").or_default() += 1;
                    }
                },
                Some(s) = local.seen.recv() => {
                    if got.local.is_none() && expected(&s, &ids[i], status) {
                        if let Seen::Update { at, .. } = s {
                            got.local = Some(at);
                        }
                    } else if let Seen::Closed(why) = s {
                        bail!("the observer on B closed: {why}");
                    } else {
                        *unexpected.entry("local").or_default() += 1;
                    }
                },
                Some(w) = tap.writes.recv() => {
                    if got.kv.is_none() && w.class == "presence" {
                        got.kv = Some(w.at);
                    } else if w.class != "live" {
                        *unexpected.entry("kv").or_default() += 1;
                    }
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for (what, at) in [
            ("emit", got.sent),
            ("ack", got.ack),
            ("kv", got.kv),
            ("remote", got.remote),
            ("local", got.local),
        ] {
            if at.is_none() {
                *lost.entry(what).or_default() += 1;
            }
        }
        cross.extend(ms(got.sent, got.remote));
        same.extend(ms(got.sent, got.local));
        acks.extend(ms(got.sent, got.ack));
        to_kv.extend(ms(got.sent, got.kv));
        kv_to_remote.extend(signed_ms(got.kv, got.remote));
        timeline.push(json!({
            "round": r,
            "at_seconds": got.sent.map(|t| t.duration_since(started).as_secs_f64()),
            "subject": ids[i],
            "status": status,
            "remote_ms": ms(got.sent, got.remote),
            "local_ms": ms(got.sent, got.local),
            "ack_ms": ms(got.sent, got.ack),
            "kv_ms": ms(got.sent, got.kv),
        }));
        if let (Some(kv), Some(remote)) = (got.kv, got.remote)
            && remote < kv
        {
            kv_after_remote += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let machine_after = procfs::machine_cpu();
    let busy = (machine_after.0 - machine_before.0).as_secs_f64()
        / (machine_after.1 - machine_before.1).as_secs_f64().max(1e-9);
    // Late arrivals of the last round are not unexpected: let them land, then count writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tap.recording(false);
    let stream_after = stream_state(js, &stream).await?;
    let tap_after = tap.snapshot();
    let metrics_after = b.metrics().await;
    let rounds = p.rounds;
    let writes = writes(
        (&metrics_before, &metrics_after),
        (stream_before, stream_after),
        (&tap_before, &tap_after),
        rounds,
        b_id,
    );

    // Everyone leaves; their last writes land before the cost measurement reads anything.
    drop(commands);
    remote.stop.cancel();
    local.stop.cancel();
    eprintln!("latency: closing; waiting out presence.grace_ms");
    settle(
        tap,
        settings.grace + Duration::from_secs(1),
        Duration::from_secs(120),
    )
    .await;

    Ok(json!({
        "subjects": m,
        "rounds": rounds,
        "pacing": "one change in flight: a round ends when its ack, its bucket write and both \
                   observers' presence:update arrived (or after 5 s), the next starts at once",
        "seconds": seconds,
        "quiet_before": quiet_before,
        "machine_busy_during_rounds": busy,
        "rounds_per_second": rounds as f64 / seconds.max(1e-9),
        "observer_remote": remote.figures,
        "observer_local": local.figures,
        "cross_instance_ms": stats::summary(&mut cross),
        "same_instance_ms": stats::summary(&mut same),
        "ack_ms": stats::summary(&mut acks),
        "emit_to_kv_ms": stats::summary(&mut to_kv),
        "kv_to_remote_ms": stats::summary(&mut kv_to_remote),
        "kv_after_remote": kv_after_remote,
        "slowest_rounds": slowest(timeline),
        "lost": lost,
        "unexpected": unexpected,
        "acks_not_ok": acks_not_ok.iter().take(5).collect::<Vec<_>>(),
        "acks_not_ok_count": acks_not_ok.len(),
        "writes": writes,
        "problems": problems.iter().map(|(w, n)| format!("{n} x {w}")).collect::<Vec<_>>(),
    }))
}

/// The [`SLOWEST`] rounds of `timeline` by cross-instance latency (lost ones first).
fn slowest(mut timeline: Vec<Value>) -> Vec<Value> {
    let key = |v: &Value| v["remote_ms"].as_f64().unwrap_or(f64::INFINITY);
    timeline.sort_by(|a, b| key(b).total_cmp(&key(a)));
    timeline.truncate(SLOWEST);
    timeline
}

// ---------------------------------------------------------------------------------------------
// Cost per connected user.

/// Who the N sockets of a cost measurement are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// N users, each its own `sub`: N presence participants.
    Distinct,
    /// N sockets of one `sub` (as `load sio idle` connects): one participant.
    Shared,
    /// N tokens without `sub`: no presence.
    Anonymous,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Distinct => "distinct",
            Self::Shared => "shared",
            Self::Anonymous => "anonymous",
        }
    }

    fn auths(self, n: usize) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Distinct => (0..n).map(|i| auth(Some(&format!("user-{i}")))).collect(),
            Self::Shared => Ok(vec![auth(Some("load-sio"))?]),
            Self::Anonymous => Ok(vec![auth(None)?]),
        }
    }

    /// Bucket writes the documented contract implies, on connect and on disconnect of all N:
    /// one put per participant's first socket on an instance; one delete when its last socket
    /// there left (after the grace) and one put of its `last_seen` as it went offline.
    fn expected_writes(self, n: usize) -> (usize, usize) {
        match self {
            Self::Distinct => (n, 2 * n),
            Self::Shared => (1, 2),
            Self::Anonymous => (0, 0),
        }
    }
}

/// A fleet protocol whose clients each join with their own `auth` (the i-th handshake takes the
/// i-th, cycling).
#[derive(Debug)]
struct PerClient {
    inner: SioProtocol,
    auths: Vec<String>,
    next: AtomicUsize,
}

impl Protocol for PerClient {
    fn request(&self) -> ClientRequestBuilder {
        self.inner.request.clone()
    }

    async fn handshake(&self, ws: &mut Ws, subscribe: bool) -> Result<(), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let auth = self
            .auths
            .get(i % self.auths.len().max(1))
            .map_or("{}", String::as_str);
        self.inner.handshake_as(ws, subscribe, auth).await
    }

    fn subscribe_message(&self) -> String {
        self.inner.subscribe_message()
    }

    fn classify(&self, text: &str, awaiting_ack: bool) -> Incoming {
        self.inner.classify(text, awaiting_ack)
    }

    fn counted_kinds(&self) -> usize {
        self.inner.counted_kinds()
    }
}

/// RSS (bytes) and CPU time of a process.
fn process_reading(pid: u32) -> Value {
    json!({
        "rss_bytes": procfs::rss_bytes(pid),
        "cpu_seconds": procfs::cpu_time(pid).map(|d| d.as_secs_f64()),
    })
}

/// `after − before` of a field of two [`process_reading`]s.
fn delta(before: &Value, after: &Value, field: &str) -> Value {
    match (before[field].as_f64(), after[field].as_f64()) {
        (Some(b), Some(a)) => json!(a - b),
        _ => Value::Null,
    }
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)] // one measurement, top to bottom
async fn cost_variant(
    args: &Args,
    launch: &Launch,
    settings: &Settings,
    first: &Server,
    peers: &[(&str, u32)],
    tap: &Tap,
    js: &async_nats::jetstream::Context,
    variant: Variant,
    n: usize,
) -> anyhow::Result<Value> {
    let name = variant.name();
    let auths = variant.auths(n)?;
    eprintln!("cost {name}: starting gateway C (a third instance)");
    let known = tap.instances();
    let c = first.start_peer(launch, Tuning::default()).await?;
    let c_id = tap
        .new_instance(&known, settings.heartbeat + Duration::from_secs(5))
        .await;
    let stream = settings.stream();
    let nats_pid = procfs::child_named("nats-server");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_before = quiet(args.quiet_wait_secs).await;
    let rss_before = procfs::stable_rss(c.pid, Duration::from_secs(20)).await;
    // Nothing of an earlier measurement is still being written.
    settle(tap, Duration::ZERO, Duration::from_secs(60)).await;
    let peers_before: Vec<Value> = peers.iter().map(|(_, pid)| process_reading(*pid)).collect();
    let nats_before = nats_pid.map(process_reading);
    let c_before = process_reading(c.pid);
    let metrics_before = c.metrics().await;
    let stream_before = stream_state(js, &stream).await?;
    let tap_before = tap.snapshot();
    eprintln!(
        "cost {name}: C ready, pid {}, RSS {} KiB; opening {n} /admin connections",
        c.pid,
        rss_before / 1024
    );

    let protocol = PerClient {
        inner: admin(&c)?,
        auths,
        next: AtomicUsize::new(0),
    };
    let started = Instant::now();
    let mut fleet = Fleet::spawn(n, protocol, args.fleet.fleet_options());
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(900), None, true)
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = ready.matched;
    let settle_connect = settle(tap, Duration::from_millis(500), Duration::from_secs(120)).await;
    eprintln!(
        "cost {name}: {connected} connected in {connect_seconds:.1} s, writes settled in \
         {settle_connect:.1} s; waiting for a stable RSS"
    );
    let c_connected_cpu = process_reading(c.pid);
    let peers_connected_cpu: Vec<Value> =
        peers.iter().map(|(_, pid)| process_reading(*pid)).collect();
    let nats_connected_cpu = nats_pid.map(process_reading);
    let metrics_connected = c.metrics().await;
    let stream_connected = stream_state(js, &stream).await?;
    let tap_connected = tap.snapshot();
    let rss_connected = procfs::stable_rss(c.pid, Duration::from_secs(30)).await;
    let mut peers_json = Vec::new();
    for ((peer, pid), before) in peers.iter().zip(&peers_before) {
        let rss = procfs::stable_rss(*pid, Duration::from_secs(30)).await;
        let rss_before = before["rss_bytes"].as_u64().unwrap_or(0);
        peers_json.push(json!({
            "name": peer,
            "pid": pid,
            "rss_before_bytes": rss_before,
            "rss_connected_bytes": rss,
            "bytes_per_connection": rss.saturating_sub(rss_before) as f64 / connected.max(1) as f64,
        }));
    }
    for (peer, (before, after)) in peers_json
        .iter_mut()
        .zip(peers_before.iter().zip(&peers_connected_cpu))
    {
        peer["cpu_seconds_connect"] = delta(before, after, "cpu_seconds");
    }
    let nats_json = match (&nats_before, &nats_connected_cpu) {
        (Some(before), Some(after)) => json!({
            "rss_before_bytes": before["rss_bytes"],
            "rss_connected_bytes": procfs::rss_bytes(nats_pid.unwrap_or(0)),
            "cpu_seconds_connect": delta(before, after, "cpu_seconds"),
        }),
        _ => Value::Null,
    };
    let gauge = test_support::metric(
        &metrics_connected,
        "socketio_connections",
        "namespace=\"admin\"",
    );
    let client_rss = procfs::rss_bytes(std::process::id());
    let problems = fleet.problem_lines();

    fleet.close().await;
    let closed = connected;
    let settle_close = settle(
        tap,
        settings.grace + Duration::from_secs(1),
        Duration::from_secs(180),
    )
    .await;
    eprintln!("cost {name}: closed; disconnect writes settled in {settle_close:.1} s");
    let metrics_closed = c.metrics().await;
    let stream_closed = stream_state(js, &stream).await?;
    let tap_closed = tap.snapshot();
    let rss_closed = procfs::rss_bytes(c.pid);
    let pid = c.pid;
    eprintln!("cost {name}: stopping C; waiting for a peer to reap it");
    let reaped = stop_reaped(c, c_id.as_deref(), tap, settings).await;

    let per = rss_connected.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    eprintln!("cost {name}: {per:.0} B per connection on C");
    let (expect_connect, expect_disconnect) = variant.expected_writes(connected);
    let kv_delta = |after: StreamState| {
        json!({
            "messages": after.messages as i64 - stream_before.messages as i64,
            "bytes": after.bytes as i64 - stream_before.bytes as i64,
        })
    };
    Ok(json!({
        "pid": pid,
        "instance": c_id,
        "reaped_after_kill_seconds": reaped,
        "connections_open": connected,
        "connections_gauge": gauge,
        "connect_seconds": connect_seconds,
        "quiet_before": quiet_before,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "rss_after_close_bytes": rss_closed,
        "bytes_per_connection": per,
        "cpu_seconds_connect": delta(&c_before, &c_connected_cpu, "cpu_seconds"),
        "peers": peers_json,
        "nats": nats_json,
        "client_rss_bytes": client_rss,
        "writes_connect": writes(
            (&metrics_before, &metrics_connected),
            (stream_before, stream_connected),
            (&tap_before, &tap_connected),
            connected,
            c_id.as_deref(),
        ),
        "writes_disconnect": writes(
            (&metrics_connected, &metrics_closed),
            (stream_connected, stream_closed),
            (&tap_connected, &tap_closed),
            closed,
            c_id.as_deref(),
        ),
        "expected_writes": {"connect": expect_connect, "disconnect": expect_disconnect},
        "settle_seconds": {"connect": settle_connect, "disconnect": settle_close},
        "kv": {
            "before": {"messages": stream_before.messages, "bytes": stream_before.bytes},
            "connected": {"messages": stream_connected.messages, "bytes": stream_connected.bytes},
            "after_disconnect": {"messages": stream_closed.messages, "bytes": stream_closed.bytes},
            "connected_delta": kv_delta(stream_connected),
            "after_disconnect_delta": kv_delta(stream_closed),
            "bytes_per_connection": (stream_connected.bytes as f64 - stream_before.bytes as f64)
                / connected.max(1) as f64,
        },
        "problems": problems,
    }))
}

/// Kills `c` and waits until a peer reaped it: declared dead after `presence.ttl_ms`, its keys
/// purged and its live key deleted (`id`: its instance id), so the next measurement starts from
/// a quiet bucket. Returns the seconds from the kill to the reap.
async fn stop_reaped(c: Server, id: Option<&str>, tap: &Tap, settings: &Settings) -> Option<f64> {
    c.stop().await;
    let stopped = Instant::now();
    let id = id?;
    let tombstone = format!("live.delete@{id}");
    let limit = settings.ttl + settings.heartbeat * 2 + Duration::from_secs(10);
    let mut reaped = None;
    while stopped.elapsed() < limit {
        if tap.count(&tombstone) > 0 {
            reaped = Some(stopped.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(tap, Duration::ZERO, Duration::from_secs(60)).await;
    reaped
}

/// The RSS of a fresh instance with no connections, beside what the bucket holds (every
/// instance loads the whole bucket at start, one `seen` key per user ever seen included).
async fn startup_rss(
    args: &Args,
    launch: &Launch,
    settings: &Settings,
    first: &Server,
    tap: &Tap,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<Value> {
    let known = tap.instances();
    let stream = stream_state(js, &settings.stream()).await?;
    eprintln!(
        "startup: a fresh instance with {} messages in the bucket",
        stream.messages
    );
    let c = first.start_peer(launch, Tuning::default()).await?;
    let id = tap
        .new_instance(&known, settings.heartbeat + Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_before = quiet(args.quiet_wait_secs).await;
    let rss = procfs::stable_rss(c.pid, Duration::from_secs(20)).await;
    let reaped = stop_reaped(c, id.as_deref(), tap, settings).await;
    Ok(json!({
        "bucket_messages": stream.messages,
        "bucket_bytes": stream.bytes,
        "rss_bytes": rss,
        "quiet_before": quiet_before,
        "reaped_after_kill_seconds": reaped,
    }))
}

/// What presence adds per connection: `distinct` and `shared` against `anonymous`.
fn compare(cost: &mut Value) {
    let per = |v: &str| cost[v]["bytes_per_connection"].as_f64();
    let (distinct, shared, anonymous) = (per("distinct"), per("shared"), per("anonymous"));
    if let (Some(d), Some(a)) = (distinct, anonymous) {
        cost["presence_bytes_per_user"] = json!(d - a);
    }
    if let (Some(s), Some(a)) = (shared, anonymous) {
        cost["presence_bytes_per_socket_of_one_user"] = json!(s - a);
    }
}

// ---------------------------------------------------------------------------------------------
// The human report.

/// The report as lines.
pub fn human(r: &Value) -> String {
    let mut lines = vec![machine_line(&r["machine"])];
    lines.push(format!(
        "presence: bucket {} (stream {}, {}), grace {} ms, max_query_ids {}{}",
        r["bucket"].as_str().unwrap_or("?"),
        r["stream"].as_str().unwrap_or("?"),
        r["bucket_config"],
        r["grace_ms"],
        r["max_query_ids"],
        r["max_watched_per_socket_raised_to"]
            .as_u64()
            .map_or_else(String::new, |n| format!(
                ", max_watched_per_socket raised to {n}"
            )),
    ));
    let l = &r["latency"];
    if let Some(e) = l["error"].as_str() {
        lines.push(format!("  latency: error: {e}"));
    } else if !l.is_null() {
        lines.push(format!(
            "  latency: {} subjects on B, {} rounds in {:.1} s ({:.0}/s; {}; machine {:.0} % busy)",
            l["subjects"],
            l["rounds"],
            l["seconds"].as_f64().unwrap_or(0.0),
            l["rounds_per_second"].as_f64().unwrap_or(0.0),
            "one change in flight",
            l["machine_busy_during_rounds"].as_f64().unwrap_or(f64::NAN) * 100.0
        ));
        for (label, key) in [
            ("emit on B -> update on A", "cross_instance_ms"),
            ("emit on B -> update on B", "same_instance_ms"),
            ("emit on B -> ack on B", "ack_ms"),
            ("emit on B -> bucket write", "emit_to_kv_ms"),
            ("bucket write -> update on A (signed)", "kv_to_remote_ms"),
        ] {
            lines.push(format!(
                "    {label:<38}: {} (n {})",
                stats::summary_line(&l[key]),
                l[key]["n"]
            ));
        }
        let o = &l["observer_remote"];
        lines.push(format!(
            "    observer on A: {} queries, {} answered, {} watched, {} refused, {} not online at \
             query, {} not online after waiting",
            o["queries"],
            o["answered"],
            o["watched"],
            o["refused"].as_array().map_or(0, Vec::len),
            o["not_online_at_query"],
            o["not_online_after_wait"]
        ));
        let w = &l["writes"];
        lines.push(format!(
            "    bucket writes per change: metric on B {} ({}), stream {} ({} heartbeats left \
             out), tap {}; lost {}, unexpected {}, write after A's update {}, acks not ok {}",
            num(&w["per_socket_metric"], 3),
            w["metric_by_labels"],
            num(&w["per_socket_stream"], 3),
            w["heartbeats"],
            w["tap"],
            l["lost"],
            l["unexpected"],
            l["kv_after_remote"],
            l["acks_not_ok_count"]
        ));
        for round in l["slowest_rounds"].as_array().into_iter().flatten() {
            lines.push(format!(
                "    slow round {} at {} s ({} {}): A {} ms, B {} ms, ack {} ms, bucket write {} ms",
                round["round"],
                num(&round["at_seconds"], 2),
                round["subject"].as_str().unwrap_or("?"),
                round["status"].as_str().unwrap_or("?"),
                num(&round["remote_ms"], 1),
                num(&round["local_ms"], 1),
                num(&round["ack_ms"], 1),
                num(&round["kv_ms"], 1),
            ));
        }
        for p in l["problems"].as_array().into_iter().flatten() {
            lines.push(format!("    problem: {}", p.as_str().unwrap_or("")));
        }
    }
    let c = &r["cost"];
    if !c.is_null() {
        lines.push(format!(
            "  cost: {} connections per variant, each on a fresh instance C",
            c["users"]
        ));
        for variant in ["anonymous", "shared", "distinct"] {
            let v = &c[variant];
            if v.is_null() {
                continue;
            }
            if let Some(e) = v["error"].as_str() {
                lines.push(format!("    {variant:<9}: error: {e}"));
                continue;
            }
            lines.extend(variant_lines(variant, v));
        }
        lines.push(format!(
            "    a `sub` (identity room + presence) per user, distinct - anonymous: {} B; per \
             socket of one shared user, shared - anonymous: {} B",
            num(&c["presence_bytes_per_user"], 0),
            num(&c["presence_bytes_per_socket_of_one_user"], 0)
        ));
        let startup: Vec<String> = c["startup"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} with {} bucket messages ({} B)",
                    kib(&s["rss_bytes"]),
                    s["bucket_messages"],
                    s["bucket_bytes"]
                )
            })
            .collect();
        lines.push(format!(
            "    fresh instance, no connections: {}; {} B of RSS per bucket message",
            startup.join(" -> "),
            num(&c["startup_bytes_per_bucket_message"], 0)
        ));
    }
    lines.join("\n")
}

fn variant_lines(variant: &str, v: &Value) -> Vec<String> {
    let indent = "               ";
    let w = |key: &str| {
        let w = &v[key];
        format!(
            "metric {} ({}/socket; {}), stream {} ({}/socket; seq +{}, {} heartbeats), tap {}: \
             {}",
            num(&w["metric"], 0),
            num(&w["per_socket_metric"], 3),
            w["metric_by_labels"],
            w["stream"],
            num(&w["per_socket_stream"], 3),
            w["stream_sequence_delta"],
            w["heartbeats"],
            w["tap"],
            match w["methods_agree"].as_bool() {
                Some(true) => "agree",
                Some(false) => "DISAGREE",
                None => "no metric",
            }
        )
    };
    let peers: Vec<String> = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {} B/conn",
                p["name"].as_str().unwrap_or("?"),
                num(&p["bytes_per_connection"], 0)
            )
        })
        .collect();
    let mut lines = vec![
        format!(
            "    {variant:<9}: {} open in {:.1} s (gauge {}); C RSS {} -> {} ({} B/conn; after \
             close {}); peers {}; C CPU {} s",
            v["connections_open"],
            v["connect_seconds"].as_f64().unwrap_or(0.0),
            v["connections_gauge"],
            kib(&v["rss_before_bytes"]),
            kib(&v["rss_connected_bytes"]),
            num(&v["bytes_per_connection"], 0),
            kib(&v["rss_after_close_bytes"]),
            peers.join(", "),
            num(&v["cpu_seconds_connect"], 2)
        ),
        format!(
            "{indent}writes on connect (expected {}): {}",
            v["expected_writes"]["connect"],
            w("writes_connect")
        ),
        format!(
            "{indent}writes on disconnect (expected {}): {}",
            v["expected_writes"]["disconnect"],
            w("writes_disconnect")
        ),
        format!(
            "{indent}bucket: {} B held for the connected ({} B/conn, {} messages), {} B after \
             disconnect ({} messages)",
            v["kv"]["connected_delta"]["bytes"],
            num(&v["kv"]["bytes_per_connection"], 1),
            v["kv"]["connected_delta"]["messages"],
            v["kv"]["after_disconnect_delta"]["bytes"],
            v["kv"]["after_disconnect_delta"]["messages"]
        ),
    ];
    for p in v["problems"].as_array().into_iter().flatten() {
        lines.push(format!("{indent}problem: {}", p.as_str().unwrap_or("")));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bucket_keys() {
        assert_eq!(key_class("i.0191-ab.live"), ("live", Some("0191-ab")));
        assert_eq!(
            key_class("i.0191-ab.p.user.dS0x"),
            ("presence", Some("0191-ab"))
        );
        assert_eq!(
            key_class("i.0191-ab.v.deal-5.user.dS0x"),
            ("viewing", Some("0191-ab"))
        );
        assert_eq!(key_class("seen.user.dS0x"), ("seen", None));
        assert_eq!(key_class("else"), ("other", None));
    }

    #[test]
    fn reads_metric_families() {
        let text = "# TYPE socketio_presence_kv_writes_total counter\n\
                    socketio_presence_kv_writes_total{op=\"put\"} 3\n\
                    socketio_presence_kv_writes_total{op=\"delete\"} 2\n\
                    socketio_presence_kv_writes_total_other 9\n\
                    socketio_connections{namespace=\"admin\"} 1\n";
        let s = series(text, KV_WRITES).unwrap();
        assert_eq!(s["op=\"put\""], 3.0);
        assert_eq!(s.len(), 2);
        assert_eq!(series("x 1\n", KV_WRITES), None);
        assert_eq!(
            series(
                "# TYPE socketio_presence_kv_writes_total counter\n",
                KV_WRITES
            ),
            Some(BTreeMap::new())
        );
    }

    #[test]
    fn counts_writes_three_ways() {
        // The gateway's counter as it is: heartbeats are puts, purges add no stream message.
        let before = "socketio_presence_kv_writes_total{op=\"put\"} 1\n";
        let after = "socketio_presence_kv_writes_total{op=\"put\"} 13\n\
                     socketio_presence_kv_writes_total{op=\"purge\"} 1\n";
        let s0 = StreamState {
            last_sequence: 100,
            ..StreamState::default()
        };
        let s1 = StreamState {
            last_sequence: 113,
            ..StreamState::default()
        };
        let t0 = BTreeMap::from([("live.put".to_owned(), 5), ("live.put@c".to_owned(), 1)]);
        let t1 = BTreeMap::from([
            ("live.put".to_owned(), 8),
            ("live.put@c".to_owned(), 3),
            ("live.put@b".to_owned(), 1),
            ("presence.put".to_owned(), 10),
            ("presence.put@c".to_owned(), 10),
        ]);
        let w = writes((before, after), (s0, s1), (&t0, &t1), 10, Some("c"));
        assert_eq!(w["metric_own_heartbeats_left_out"], 2);
        assert_eq!(w["metric"], 10.0);
        assert_eq!(w["stream"], 10);
        assert_eq!(w["heartbeats"], 3);
        assert_eq!(w["tap"], 10);
        assert_eq!(w["methods_agree"], true);
        assert_eq!(w["per_socket_stream"], 1.0);
        // A counter that labels heartbeats apart needs no correction.
        let labelled = "socketio_presence_kv_writes_total{op=\"put\"} 11\n\
                        socketio_presence_kv_writes_total{op=\"heartbeat\"} 2\n";
        let w = writes((before, labelled), (s0, s1), (&t0, &t1), 10, Some("c"));
        assert_eq!(w["metric"], 10.0);
        let absent = writes(("", ""), (s0, s1), (&t0, &t1), 10, None);
        assert!(absent["metric"].is_null() && absent["methods_agree"].is_null());
    }

    #[test]
    fn reads_settings_from_the_gateway_env() {
        let launch = Launch {
            gateway_bin: "x".into(),
            node_dir: "x".into(),
            node_bin: "node".into(),
            secret: String::new(),
            nats_url: String::new(),
            gateway_env: vec![
                ("GATEWAY_SOCKETIO_PRESENCE__GRACE_MS".into(), "500".into()),
                ("GATEWAY_SOCKETIO_PRESENCE__BUCKET".into(), "b2".into()),
            ],
            node_env: Vec::new(),
        };
        let s = Settings::of(&launch);
        assert_eq!(s.grace, Duration::from_millis(500));
        assert_eq!(s.stream(), "KV_b2");
        assert_eq!(s.max_query_ids, DEFAULT_MAX_QUERY_IDS);
        assert_eq!(s.max_watched, DEFAULT_MAX_WATCHED);
    }
}
