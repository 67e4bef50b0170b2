//! A fleet of WebSocket clients held by this process, opened with bounded concurrency and
//! steered together through phases (hold, subscribe, close). What a surface says on the wire
//! is its [`Protocol`]; connecting, phases, counting and waiting are the same for every surface.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client's WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect attempts per client before it counts as failed.
const ATTEMPTS: u32 = 5;
/// How long a handshake step waits for the server's next text frame.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one surface says on the wire.
pub trait Protocol: Send + Sync + 'static {
    /// The WebSocket request of one connection (URL, headers).
    fn request(&self) -> ClientRequestBuilder;
    /// Runs after the WebSocket handshake, before the client reports ready: the surface's own
    /// handshake, and its subscribe (acknowledged) when `subscribe` is set.
    fn handshake(
        &self,
        ws: &mut Ws,
        subscribe: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// The subscribe request sent in [`Phase::Subscribe`].
    fn subscribe_message(&self) -> String;
    /// What a text frame after the handshake is. `awaiting_ack`: a subscribe was sent in
    /// [`Phase::Subscribe`] and not acknowledged yet.
    fn classify(&self, text: &str, awaiting_ack: bool) -> Incoming;
    /// Kinds of counted deliveries ([`Incoming::Counted`] indexes).
    fn counted_kinds(&self) -> usize;
}

/// What a text frame is, as the surface's [`Protocol`] reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A delivery of counted kind `index`.
    Counted(usize),
    /// A delivery of counted kind `index` that does not look as expected: counted, and the
    /// first such frame of a connection is reported as a problem.
    CountedOdd(usize, String),
    /// An event the measurement does not count (e.g. `socket_metrics_updated`).
    Uncounted,
    /// Answer with this text frame (e.g. an Engine.IO pong).
    Reply(&'static str),
    /// The subscribe acknowledgement, with what was wrong with it.
    Subscribed(Option<String>),
    /// The server ended the session.
    Ended(String),
    /// Anything else.
    Unexpected(String),
}

/// What every client of a fleet does.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// tungstenite read buffer of each client.
    pub read_buffer: usize,
    /// Subscribe (acknowledged) during the handshake, before reporting ready.
    pub subscribe_on_connect: bool,
    /// Report a finished round after each `per_round` counted deliveries (0: never).
    pub per_round: u64,
    /// Count every delivery in the shared [`Counters`] as it arrives (totals per kind and the
    /// latest delivery's time, which incomplete rounds are measured by). Two atomic operations
    /// and a clock read per message; off, a round is timed by its completion reports only.
    pub live_counts: bool,
}

/// What the fleet is told to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep the connection open, answer pings, count deliveries.
    Hold,
    /// Subscribe now (acknowledged).
    Subscribe,
    /// Close the connection.
    Close,
}

/// What a client tells the fleet.
#[derive(Debug)]
enum Report {
    /// Handshake done (and subscribed, when asked to).
    Ready,
    /// Subscribe ack received after [`Phase::Subscribe`].
    Subscribed,
    /// Another `per_round` counted deliveries arrived, at this instant.
    RoundDone(Instant),
    /// Connecting or the handshake failed; the client is gone.
    Failed(String),
    /// The connection ended after it was ready; the client is gone.
    Closed(String),
    /// A frame the surface did not expect.
    Unexpected(String),
}

/// Which report [`Fleet::wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// Every live client ready.
    Ready,
    /// Every live client subscribed.
    Subscribed,
    /// Every live client done with the round.
    RoundDone,
}

/// How a wait ended.
#[derive(Debug, Default)]
pub struct Waited {
    /// Clients that reported what was awaited.
    pub matched: usize,
    /// The latest round completion reported.
    pub latest: Option<Instant>,
    /// Whether every live client reported before giving up.
    pub complete: bool,
}

/// Deliveries counted by every client of a fleet (with [`FleetOptions::live_counts`]).
#[derive(Debug)]
pub struct Counters {
    base: Instant,
    /// Counted deliveries, per kind.
    pub per_kind: Vec<AtomicU64>,
    /// Uncounted events.
    pub other: AtomicU64,
    /// Nanoseconds since `base` of the latest counted delivery.
    last_ns: AtomicU64,
}

impl Counters {
    fn new(kinds: usize) -> Self {
        Self {
            base: Instant::now(),
            per_kind: (0..kinds).map(|_| AtomicU64::new(0)).collect(),
            other: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Counted deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.per_kind
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// When the latest counted delivery arrived.
    fn last_delivery(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    fn count(&self, kind: usize) {
        self.per_kind[kind].fetch_add(1, Ordering::Relaxed);
        let now = self.base.elapsed().as_nanos() as u64;
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// Where a round started, for [`Fleet::round`].
#[derive(Debug, Clone, Copy)]
pub struct RoundStart {
    delivered: u64,
}

/// What a round delivered.
#[derive(Debug, Clone, Copy)]
pub struct RoundOutcome {
    /// Counted deliveries: every one with live counts, else those of the clients that
    /// completed the round.
    pub delivered: u64,
    /// When the last of them arrived.
    pub last: Option<Instant>,
}

/// Clients running in this process.
#[derive(Debug)]
pub struct Fleet {
    phase: watch::Sender<Phase>,
    reports: mpsc::UnboundedReceiver<Report>,
    tasks: JoinSet<()>,
    options: FleetOptions,
    /// Deliveries counted by the clients (with live counts).
    pub counters: Arc<Counters>,
    /// Clients still connected (or connecting).
    pub alive: usize,
    /// Problems seen so far, by message, with counts.
    problems: BTreeMap<String, usize>,
}

impl Fleet {
    /// Spawns `n` clients speaking `protocol`; they connect at most `options.concurrency` at a
    /// time.
    pub fn spawn<P: Protocol>(n: usize, protocol: P, options: FleetOptions) -> Self {
        let (phase, phase_rx) = watch::channel(Phase::Hold);
        let (tx, reports) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let counters = Arc::new(Counters::new(protocol.counted_kinds()));
        let shared = Arc::new((protocol, options.clone()));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            tasks.spawn(client(
                Arc::clone(&shared),
                Arc::clone(&permits),
                Arc::clone(&counters),
                phase_rx.clone(),
                tx.clone(),
            ));
        }
        Self {
            phase,
            reports,
            tasks,
            options,
            counters,
            alive: n,
            problems: BTreeMap::new(),
        }
    }

    /// Tells every client to move to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }

    /// Waits until every live client reported `what`; gives up after `timeout`, or, with
    /// `stall` (and live counts), once the delivery counters have not moved for that long.
    /// With `progress`, prints a line to stderr every few seconds.
    pub async fn wait(
        &mut self,
        what: Awaited,
        timeout: Duration,
        stall: Option<Duration>,
        progress: bool,
    ) -> Waited {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waited = Waited::default();
        let mut last_print = Instant::now();
        let mut last_count = (self.counters.delivered(), Instant::now());
        while waited.matched < self.alive {
            let tick = tokio::time::Instant::now() + Duration::from_millis(500);
            let report =
                match tokio::time::timeout_at(deadline.min(tick), self.reports.recv()).await {
                    Ok(Some(r)) => Some(r),
                    Ok(None) => return waited,
                    Err(_) if tokio::time::Instant::now() >= deadline => return waited,
                    Err(_) => None,
                };
            if let Some(stall) = stall {
                let now = self.counters.delivered();
                if now != last_count.0 {
                    last_count = (now, Instant::now());
                } else if last_count.1.elapsed() >= stall {
                    return waited;
                }
            }
            match (what, report) {
                (_, None) => {}
                (Awaited::Ready, Some(Report::Ready))
                | (Awaited::Subscribed, Some(Report::Subscribed)) => waited.matched += 1,
                (Awaited::RoundDone, Some(Report::RoundDone(at))) => {
                    waited.matched += 1;
                    waited.latest = Some(waited.latest.map_or(at, |l| l.max(at)));
                }
                (_, Some(Report::Failed(why))) => {
                    self.alive -= 1;
                    self.problem(format!("failed: {why}"));
                }
                (_, Some(Report::Closed(why))) => {
                    self.alive -= 1;
                    self.problem(format!("closed: {why}"));
                }
                (_, Some(Report::Unexpected(what))) => self.problem(format!("unexpected: {what}")),
                (_, Some(other)) => self.problem(format!("out of phase: {other:?}")),
            }
            if progress && last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!("  ... {what:?}: {}/{}", waited.matched, self.alive);
            }
        }
        waited.complete = true;
        waited
    }

    fn problem(&mut self, what: String) {
        *self.problems.entry(what).or_default() += 1;
    }

    /// Marks the start of a round.
    pub fn round_start(&self) -> RoundStart {
        RoundStart {
            delivered: self.counters.delivered(),
        }
    }

    /// What the round begun at `start` delivered, once [`Fleet::wait`] for
    /// [`Awaited::RoundDone`] returned `waited`.
    pub fn round(&self, start: RoundStart, waited: &Waited) -> RoundOutcome {
        if self.options.live_counts {
            let delivered = self.counters.delivered() - start.delivered;
            RoundOutcome {
                delivered,
                last: (delivered > 0).then(|| self.counters.last_delivery()),
            }
        } else {
            RoundOutcome {
                delivered: waited.matched as u64 * self.options.per_round,
                last: waited.latest,
            }
        }
    }

    /// Closes every connection and waits (briefly) for the clients to finish.
    pub async fn close(mut self) {
        self.set_phase(Phase::Close);
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }

    /// Problems as one line each: `count x message`.
    pub fn problem_lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(what, n)| format!("{n} x {what}"))
            .collect()
    }
}

async fn client<P: Protocol>(
    shared: Arc<(P, FleetOptions)>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<Phase>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let (protocol, options) = &*shared;
    let permit = permits.acquire_owned().await.ok();
    let mut ws = match connect(protocol, options.read_buffer).await {
        Ok(mut ws) => match protocol
            .handshake(&mut ws, options.subscribe_on_connect)
            .await
        {
            Ok(()) => ws,
            Err(why) => {
                let _ = tx.send(Report::Failed(why));
                return;
            }
        },
        Err(why) => {
            let _ = tx.send(Report::Failed(why));
            return;
        }
    };
    drop(permit);
    let _ = tx.send(Report::Ready);

    let mut counted = 0u64;
    let mut awaiting_ack = false;
    let mut odd_reported = false;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = *phase.borrow_and_update();
                match next {
                    Phase::Hold => {}
                    Phase::Subscribe => {
                        if let Err(e) = ws.send(Message::text(protocol.subscribe_message())).await {
                            let _ = tx.send(Report::Closed(format!("subscribe: {e}")));
                            return;
                        }
                        awaiting_ack = true;
                    }
                    Phase::Close => {
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        return;
                    }
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let kind = match protocol.classify(text.as_str(), awaiting_ack) {
                        Incoming::Counted(kind) => kind,
                        Incoming::CountedOdd(kind, what) => {
                            if !odd_reported {
                                odd_reported = true;
                                let _ = tx.send(Report::Unexpected(what));
                            }
                            kind
                        }
                        Incoming::Uncounted => {
                            if options.live_counts {
                                counters.other.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        Incoming::Reply(reply) => {
                            if let Err(e) = ws.send(Message::text(reply)).await {
                                let _ = tx.send(Report::Closed(format!("reply: {e}")));
                                return;
                            }
                            continue;
                        }
                        Incoming::Subscribed(problem) => {
                            awaiting_ack = false;
                            if let Some(why) = problem {
                                let _ = tx.send(Report::Unexpected(why));
                            }
                            let _ = tx.send(Report::Subscribed);
                            continue;
                        }
                        Incoming::Ended(why) => {
                            let _ = tx.send(Report::Closed(format!("server closed: {why}")));
                            return;
                        }
                        Incoming::Unexpected(what) => {
                            let _ = tx.send(Report::Unexpected(what));
                            continue;
                        }
                    };
                    if options.live_counts {
                        counters.count(kind);
                    }
                    counted += 1;
                    if options.per_round > 0 && counted.is_multiple_of(options.per_round) {
                        let _ = tx.send(Report::RoundDone(Instant::now()));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map_or_else(
                        || "close without code".to_owned(),
                        |f| format!("{} {}", u16::from(f.code), f.reason),
                    );
                    let _ = tx.send(Report::Closed(why));
                    return;
                }
                Some(Ok(_)) => {} // WebSocket pings are answered by tungstenite
                Some(Err(e)) => {
                    let _ = tx.send(Report::Closed(e.to_string()));
                    return;
                }
                None => {
                    let _ = tx.send(Report::Closed("end of stream".to_owned()));
                    return;
                }
            }
        }
    }
}

/// Opens the WebSocket, with a few retries.
async fn connect<P: Protocol>(protocol: &P, read_buffer: usize) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio_tungstenite::connect_async_with_config(protocol.request(), Some(config), true)
            .await
        {
            Ok((ws, _)) => return Ok(ws),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Err(format!("connect: {last}"))
}

/// The next text frame, within 30 s.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    let wait = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or_else(
                        || "closed".to_owned(),
                        |f| format!("closed {} {}", u16::from(f.code), f.reason),
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("end of stream".to_owned()),
            }
        }
    })
    .await;
    wait.unwrap_or_else(|_| Err(format!("no packet within {} s", STEP_TIMEOUT.as_secs())))
}

/// Sends a text frame during a handshake.
pub async fn send_text(ws: &mut Ws, step: &str, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("{step}: {e}"))
}

/// The start of a frame, for a problem line.
pub fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}
