//! A fleet of WebSocket clients held by this process, opened with bounded concurrency and
//! steered together through phases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::COOKIE;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The subscribe request every client sends.
const SUBSCRIBE: &str = r#"{"type":"subscribe","channel":"order_changes"}"#;
/// How every event frame starts (`events::surface::ws_message` of an `order.updated` event).
const EVENT_PREFIX: &str = r#"{"event":"order:updated""#;
/// Connect attempts per client before it counts as failed.
const ATTEMPTS: u32 = 5;

/// What every client of a fleet does.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `ws://host:port/path`.
    pub url: String,
    /// `Cookie` header, if any.
    pub cookie: Option<String>,
    /// Subscribe to `order_changes` right after `connected`, before reporting ready.
    pub subscribe_on_connect: bool,
    /// Report [`Report::RoundDone`] after each `per_round` event frames (0: never).
    pub per_round: u64,
    /// tungstenite read buffer of each client.
    pub read_buffer: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

/// What the fleet is told to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep the connection open and read.
    Hold,
    /// Subscribe to `order_changes` now.
    Subscribe,
    /// Close the connection.
    Close,
}

/// What a client tells the fleet.
#[derive(Debug)]
enum Report {
    /// Handshake done and `connected` received (and `subscribed`, when asked to).
    Ready,
    /// `subscribed` received after [`Phase::Subscribe`].
    Subscribed,
    /// Another `per_round` events arrived, at this instant.
    RoundDone(Instant),
    /// Connecting or the handshake failed; the client is gone.
    Failed(String),
    /// The connection ended after it was ready; the client is gone.
    Closed(String),
    /// A frame that should have been an event was not.
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
    /// Latest [`Report::RoundDone`] instant.
    pub latest: Option<Instant>,
    /// Whether every live client reported before the timeout.
    pub complete: bool,
}

/// Clients running in this process.
#[derive(Debug)]
pub struct Fleet {
    phase: watch::Sender<Phase>,
    reports: mpsc::UnboundedReceiver<Report>,
    tasks: JoinSet<()>,
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
        let options = Arc::new(options);
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            tasks.spawn(client(
                Arc::clone(&options),
                Arc::clone(&permits),
                phase_rx.clone(),
                tx.clone(),
            ));
        }
        Self {
            phase,
            reports,
            tasks,
            alive: n,
            problems: BTreeMap::new(),
        }
    }

    /// Tells every client to move to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }

    /// Waits until every live client reported `what`, or `timeout`. With `progress`, prints a
    /// line to stderr every few seconds.
    pub async fn wait(&mut self, what: Awaited, timeout: Duration, progress: bool) -> Waited {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waited = Waited::default();
        let mut last_print = Instant::now();
        while waited.matched < self.alive {
            let report = match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return waited,
            };
            match (what, report) {
                (Awaited::Ready, Report::Ready) | (Awaited::Subscribed, Report::Subscribed) => {
                    waited.matched += 1;
                }
                (Awaited::RoundDone, Report::RoundDone(at)) => {
                    waited.matched += 1;
                    waited.latest = Some(waited.latest.map_or(at, |l| l.max(at)));
                }
                (_, Report::Failed(why)) => {
                    self.alive -= 1;
                    *self.problems.entry(format!("failed: {why}")).or_default() += 1;
                }
                (_, Report::Closed(why)) => {
                    self.alive -= 1;
                    *self.problems.entry(format!("closed: {why}")).or_default() += 1;
                }
                (_, Report::Unexpected(what)) => {
                    *self
                        .problems
                        .entry(format!("unexpected frame: {what}"))
                        .or_default() += 1;
                }
                (_, other) => {
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

async fn client(
    options: Arc<FleetOptions>,
    permits: Arc<Semaphore>,
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

    let mut events = 0u64;
    let mut awaiting_ack = false;
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
                        if let Err(e) = ws.send(Message::text(SUBSCRIBE)).await {
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
                    if awaiting_ack && text.as_str().contains(r#""type":"subscribed""#) {
                        awaiting_ack = false;
                        let _ = tx.send(Report::Subscribed);
                        continue;
                    }
                    events += 1;
                    if events == 1 && !text.as_str().starts_with(EVENT_PREFIX) {
                        let _ = tx.send(Report::Unexpected(shorten(&text)));
                    }
                    if options.per_round > 0 && events.is_multiple_of(options.per_round) {
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
                Some(Ok(_)) => {} // pings are answered by tungstenite
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

/// Connects (with a few retries), reads `connected`, and subscribes when asked to.
async fn handshake(options: &FleetOptions) -> Result<Ws, String> {
    let mut ws = connect(options).await?;
    expect_text(&mut ws, r#""type":"connected""#).await?;
    if options.subscribe_on_connect {
        ws.send(Message::text(SUBSCRIBE))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        expect_text(&mut ws, r#""type":"subscribed""#).await?;
    }
    Ok(ws)
}

async fn connect(options: &FleetOptions) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(options.read_buffer);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut request = options
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some(cookie) = &options.cookie {
            let value = HeaderValue::from_str(cookie).map_err(|e| e.to_string())?;
            request.headers_mut().insert(COOKIE, value);
        }
        match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Err(format!("connect: {last}"))
}

async fn expect_text(ws: &mut Ws, marker: &str) -> Result<(), String> {
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
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
    match wait {
        Ok(Ok(text)) if text.as_str().contains(marker) => Ok(()),
        Ok(Ok(text)) => Err(format!("expected {marker}, got {}", shorten(&text))),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no {marker} within 30 s")),
    }
}

fn shorten(text: &Utf8Bytes) -> String {
    text.as_str().chars().take(80).collect()
}
