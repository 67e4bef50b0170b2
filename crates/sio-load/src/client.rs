//! A minimal Engine.IO v4 / Socket.IO v5 client over a tokio-tungstenite WebSocket, and a fleet
//! of them held by this process, opened with bounded concurrency and steered together.
//!
//! Only what the load needs: the `websocket` transport from the start (no long-polling, no
//! upgrade), one namespace, text packets only, `2` (ping) answered with `3` (pong), events
//! with and without ack ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect attempts per client before it counts as failed.
const ATTEMPTS: u32 = 5;
/// Ack id of the subscribe request.
const SUBSCRIBE_ACK_ID: u32 = 1;

/// What every client of a fleet does.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `ws://host:port` (the path `/socket.io/?EIO=4&transport=websocket` is added).
    pub base: String,
    /// Namespace, e.g. `/admin`.
    pub namespace: String,
    /// The `auth` object of the namespace connect, as JSON.
    pub auth: String,
    /// Join the namespace after the Engine.IO handshake (false: stay an Engine.IO session only,
    /// to separate its memory from the namespace's).
    pub join: bool,
    /// The `subscribe` payload, as JSON.
    pub subscribe: String,
    /// Subscribe (with an ack) right after joining the namespace, before reporting ready.
    pub subscribe_on_connect: bool,
    /// Report a finished round after each `per_round` counted events (0: never).
    pub per_round: u64,
    /// Event names that count as deliveries.
    pub counted: Vec<String>,
    /// tungstenite read buffer of each client.
    pub read_buffer: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

/// What the fleet is told to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep the connection open, answer pings, count events.
    Hold,
    /// Subscribe now (with an ack).
    Subscribe,
    /// Close the connection.
    Close,
}

/// What a client tells the fleet.
#[derive(Debug)]
enum Report {
    /// Namespace joined (and subscribed, when asked to).
    Ready,
    /// Subscribe ack received after [`Phase::Subscribe`].
    Subscribed,
    /// Another `per_round` counted events arrived.
    RoundDone,
    /// Connecting or the handshake failed; the client is gone.
    Failed(String),
    /// The connection ended after it was ready; the client is gone.
    Closed(String),
    /// A packet this tool did not expect.
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
    /// Whether every live client reported before giving up.
    pub complete: bool,
}

/// Deliveries counted by every client of a fleet.
#[derive(Debug)]
pub struct Counters {
    base: Instant,
    /// Counted events, per name (same order as [`FleetOptions::counted`]).
    pub per_event: Vec<AtomicU64>,
    /// Other events (e.g. `socket_metrics_updated`).
    pub other: AtomicU64,
    /// Nanoseconds since `base` of the latest counted delivery.
    last_ns: AtomicU64,
}

impl Counters {
    fn new(events: usize) -> Self {
        Self {
            base: Instant::now(),
            per_event: (0..events).map(|_| AtomicU64::new(0)).collect(),
            other: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    /// Counted deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.per_event
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// When the latest counted delivery arrived.
    pub fn last_delivery(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    fn count(&self, index: usize) {
        self.per_event[index].fetch_add(1, Ordering::Relaxed);
        let now = self.base.elapsed().as_nanos() as u64;
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// Clients running in this process.
#[derive(Debug)]
pub struct Fleet {
    phase: watch::Sender<Phase>,
    reports: mpsc::UnboundedReceiver<Report>,
    tasks: JoinSet<()>,
    /// Deliveries counted by the clients.
    pub counters: Arc<Counters>,
    /// Clients still connected (or connecting).
    pub alive: usize,
    /// Problems seen so far, by message, with counts.
    pub problems: BTreeMap<String, usize>,
}

impl Fleet {
    /// Spawns `n` clients; they connect at most `options.concurrency` at a time.
    pub fn spawn(n: usize, options: FleetOptions) -> Self {
        let (phase, phase_rx) = watch::channel(Phase::Hold);
        let (tx, reports) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let counters = Arc::new(Counters::new(options.counted.len()));
        let options = Arc::new(options);
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            tasks.spawn(client(
                Arc::clone(&options),
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
    /// `stall`, once the delivery counters have not moved for that long. With `progress`,
    /// prints a line to stderr every few seconds.
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
                | (Awaited::Subscribed, Some(Report::Subscribed))
                | (Awaited::RoundDone, Some(Report::RoundDone)) => waited.matched += 1,
                (_, Some(Report::Failed(why))) => {
                    self.alive -= 1;
                    *self.problems.entry(format!("failed: {why}")).or_default() += 1;
                }
                (_, Some(Report::Closed(why))) => {
                    self.alive -= 1;
                    *self.problems.entry(format!("closed: {why}")).or_default() += 1;
                }
                (_, Some(Report::Unexpected(what))) => {
                    *self
                        .problems
                        .entry(format!("unexpected packet: {what}"))
                        .or_default() += 1;
                }
                (_, Some(other)) => {
                    *self
                        .problems
                        .entry(format!("out of phase: {other:?}"))
                        .or_default() += 1;
                }
            }
            if progress && last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!("  ... {what:?}: {}/{}", waited.matched, self.alive);
            }
        }
        waited.complete = true;
        waited
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

/// A Socket.IO packet of the fleet's namespace, as this tool reads it.
#[derive(Debug, PartialEq, Eq)]
enum Packet<'a> {
    /// Engine.IO `2`: answer `3`.
    Ping,
    /// Engine.IO `1`.
    EngineClose,
    /// Socket.IO `0` (connect ok).
    Connected,
    /// Socket.IO `4` (connect_error) with its data.
    ConnectError(&'a str),
    /// Socket.IO `1` (namespace disconnect).
    Disconnected,
    /// Socket.IO `2` (event): its name.
    Event(&'a str),
    /// Socket.IO `3` (ack): its id and data.
    Ack(u32, &'a str),
    /// Anything else.
    Other,
}

fn parse<'a>(text: &'a str, namespace: &str) -> Packet<'a> {
    match text.as_bytes().first() {
        Some(b'2') => return Packet::Ping,
        Some(b'1') => return Packet::EngineClose,
        Some(b'4') => {}
        _ => return Packet::Other,
    }
    let rest = &text[1..];
    let Some(kind) = rest.as_bytes().first().copied() else {
        return Packet::Other;
    };
    let mut body = &rest[1..];
    if namespace != "/" {
        let Some(after) = body
            .strip_prefix(namespace)
            .and_then(|b| b.strip_prefix(','))
        else {
            return Packet::Other;
        };
        body = after;
    }
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let (id, data) = body.split_at(digits);
    match kind {
        b'0' => Packet::Connected,
        b'1' => Packet::Disconnected,
        b'4' => Packet::ConnectError(data),
        b'2' => {
            let name = data
                .strip_prefix("[\"")
                .and_then(|d| d.split_once('"'))
                .map_or("", |(name, _)| name);
            Packet::Event(name)
        }
        b'3' => Packet::Ack(id.parse().unwrap_or(0), data),
        _ => Packet::Other,
    }
}

async fn client(
    options: Arc<FleetOptions>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<Phase>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let permit = permits.acquire_owned().await.ok();
    let mut ws = match handshake(&options).await {
        Ok(ws) => ws,
        Err(why) => {
            let _ = tx.send(Report::Failed(why));
            return;
        }
    };
    drop(permit);
    let _ = tx.send(Report::Ready);

    let mut counted = 0u64;
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
                        if let Err(e) = ws.send(Message::text(subscribe_packet(&options))).await {
                            let _ = tx.send(Report::Closed(format!("subscribe: {e}")));
                            return;
                        }
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
                Some(Ok(Message::Text(text))) => match parse(text.as_str(), &options.namespace) {
                    Packet::Event(name) => {
                        if let Some(i) = options.counted.iter().position(|c| c == name) {
                            counters.count(i);
                            counted += 1;
                            if options.per_round > 0 && counted.is_multiple_of(options.per_round) {
                                let _ = tx.send(Report::RoundDone);
                            }
                        } else {
                            counters.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Packet::Ping => {
                        if let Err(e) = ws.send(Message::text("3")).await {
                            let _ = tx.send(Report::Closed(format!("pong: {e}")));
                            return;
                        }
                    }
                    Packet::Ack(SUBSCRIBE_ACK_ID, data) => {
                        if let Err(why) = check_subscribe_ack(data) {
                            let _ = tx.send(Report::Unexpected(why));
                        }
                        let _ = tx.send(Report::Subscribed);
                    }
                    Packet::EngineClose | Packet::Disconnected => {
                        let _ = tx.send(Report::Closed(format!("server closed: {}", shorten(&text))));
                        return;
                    }
                    _ => {
                        let _ = tx.send(Report::Unexpected(shorten(&text)));
                    }
                },
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

fn subscribe_packet(options: &FleetOptions) -> String {
    format!(
        "42{},{SUBSCRIBE_ACK_ID}[\"subscribe\",{}]",
        options.namespace, options.subscribe
    )
}

/// The ack data is `[{"subscribed": [...], "refused": [...]}]`; nothing may be refused.
fn check_subscribe_ack(data: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("subscribe ack not JSON: {e}"))?;
    let reply = &value[0];
    let joined = reply["subscribed"].as_array().map_or(0, Vec::len);
    let refused = reply["refused"].as_array().map_or(1, Vec::len);
    if joined == 0 || refused > 0 {
        return Err(format!(
            "subscribe ack {}",
            data.chars().take(120).collect::<String>()
        ));
    }
    Ok(())
}

/// Connects, reads the Engine.IO open packet, joins the namespace, and subscribes when asked
/// to.
async fn handshake(options: &FleetOptions) -> Result<Ws, String> {
    let mut ws = connect(options).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        return Err(format!("expected the Engine.IO open packet, got {open}"));
    }
    if !options.join {
        return Ok(ws);
    }
    let join = format!("40{},{}", options.namespace, options.auth);
    ws.send(Message::text(join))
        .await
        .map_err(|e| format!("namespace connect: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        match parse(&text, &options.namespace) {
            Packet::Connected => break,
            Packet::ConnectError(data) => return Err(format!("connect_error {data}")),
            Packet::Ping => ws
                .send(Message::text("3"))
                .await
                .map_err(|e| format!("pong: {e}"))?,
            Packet::Event(_) => {} // e.g. socket_metrics_updated right after the join
            _ => return Err(format!("expected the namespace connect, got {text}")),
        }
    }
    if options.subscribe_on_connect {
        ws.send(Message::text(subscribe_packet(options)))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        loop {
            let text = next_text(&mut ws).await?;
            match parse(&text, &options.namespace) {
                Packet::Ack(SUBSCRIBE_ACK_ID, data) => {
                    check_subscribe_ack(data)?;
                    break;
                }
                Packet::Ping => ws
                    .send(Message::text("3"))
                    .await
                    .map_err(|e| format!("pong: {e}"))?,
                Packet::Event(_) => {}
                _ => return Err(format!("expected the subscribe ack, got {text}")),
            }
        }
    }
    Ok(ws)
}

async fn connect(options: &FleetOptions) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(options.read_buffer);
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        options.base.trim_end_matches('/')
    );
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Err(format!("connect: {last}"))
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
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
    wait.unwrap_or_else(|_| Err("no packet within 30 s".to_owned()))
}

fn shorten(text: &Utf8Bytes) -> String {
    text.as_str().chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets() {
        let ns = "/admin";
        assert_eq!(parse("2", ns), Packet::Ping);
        assert_eq!(parse("1", ns), Packet::EngineClose);
        assert_eq!(parse("40/admin,{\"sid\":\"x\"}", ns), Packet::Connected);
        assert_eq!(
            parse("44/admin,{\"message\":\"invalid token: expired\"}", ns),
            Packet::ConnectError("{\"message\":\"invalid token: expired\"}")
        );
        assert_eq!(
            parse("42/admin,[\"orders_updated\",{\"id\":1}]", ns),
            Packet::Event("orders_updated")
        );
        assert_eq!(
            parse("43/admin,1[{\"subscribed\":[]}]", ns),
            Packet::Ack(1, "[{\"subscribed\":[]}]")
        );
        assert_eq!(parse("41/admin,", ns), Packet::Disconnected);
        assert_eq!(parse("42/other,[\"x\"]", ns), Packet::Other);
        assert_eq!(parse("0{\"sid\":\"x\"}", ns), Packet::Other);
    }

    #[test]
    fn checks_subscribe_acks() {
        assert!(
            check_subscribe_ack(r#"[{"subscribed":["entity:orders:101"],"refused":[]}]"#).is_ok()
        );
        assert!(
            check_subscribe_ack(
                r#"[{"subscribed":[],"refused":[{"target":"payload","reason":"x"}]}]"#
            )
            .is_err()
        );
    }
}
