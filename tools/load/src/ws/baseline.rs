//! The baseline: the least a tokio-tungstenite fan-out server can do. An accept loop, one task
//! per connection forwarding a `tokio::sync::broadcast` ring to its socket, and a broadcast
//! loop pushing one pre-serialised frame as fast as the ring allows. No authentication, no
//! NATS, no JSON, no subscriptions, no heartbeats, no metrics.
//!
//! It runs as a separate process (this binary's hidden `load ws serve-baseline` command, on a
//! default multi-threaded runtime like the gateway's), so that it competes with the clients for the
//! CPUs the way the gateway process does, its CPU time is read like the gateway's, and its
//! sockets do not count against the clients' open-file limit. It is driven over stdin/stdout:
//! `broadcast <n>` (answered `sent` once the last frame is in the ring) and `stats`
//! (answered `lagged <n> receivers <n>`). Each connection uses the gateway's WebSocket
//! settings (read buffer 1 KiB, write buffer 0, one write per frame).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig, frame::coding};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Write deadline of the gateway-like loops (the gateway's `limits.write_timeout_secs`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames the batched loop writes per flush at most.
const BATCH: usize = 64;

/// The per-connection loop of the server. `Bare` is the baseline; the others are experiments
/// that locate the gateway's per-message CPU cost (see `docs/benchmarks.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loop {
    /// `select!` over the ring and the socket; one `send` (one write) per frame.
    Bare,
    /// The gateway's `connection::run` loop reproduced: a `select!` that re-creates the shared
    /// shutdown token's and a per-connection token's `cancelled()` futures, a heartbeat
    /// interval, the socket and five subscription slots on every iteration, and a
    /// `tokio::time::timeout` around every frame's `send`.
    GatewayLike,
    /// `GatewayLike` with the cancellation futures pinned once outside the loop, a `biased`
    /// `select!` that polls only the subscribed ring, and the rest unchanged (one timeout and
    /// one write per frame).
    Lean,
    /// `Lean` that, once a frame is ready, also takes every frame already in the ring (up
    /// to 64) with `try_recv`, `feed`s them into a 4 KiB tungstenite write buffer and flushes
    /// once under one timeout.
    Batched,
}

/// The baseline server process; killed when dropped.
#[derive(Debug)]
pub struct Baseline {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl Baseline {
    /// Starts `load ws serve-baseline` with a ring of `queue` frames; each connection first receives
    /// `connected`, then `frame` once per broadcast.
    pub async fn spawn(
        queue: usize,
        kind: Loop,
        connected: &str,
        frame: &str,
    ) -> std::io::Result<Self> {
        let kind_name = clap::ValueEnum::to_possible_value(&kind)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["ws", "serve-baseline", "--queue", &queue.to_string()])
            .args(["--baseline-loop", &kind_name, "--connected", connected])
            .args(["--frame", frame])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("no pipes to serve-baseline"));
        };
        let mut stdout = BufReader::new(stdout).lines();
        let line = stdout.next_line().await?.unwrap_or_default();
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("serve-baseline said {line:?}")))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    /// `ws://<addr>/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn ask(&mut self, command: &str) -> std::io::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(self.stdout.next_line().await?.unwrap_or_default())
    }

    /// Has the server put `count` frames in its ring, never more than the ring holds ahead of
    /// the slowest receiver; returns when the last one is in.
    pub async fn broadcast(&mut self, count: usize) -> std::io::Result<()> {
        self.ask(&format!("broadcast {count}")).await.map(drop)
    }

    /// Connections closed as slow consumers, and connections subscribed to the ring.
    pub async fn stats(&mut self) -> (u64, u64) {
        let line = self.ask("stats").await.unwrap_or_default();
        let mut numbers = line
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok());
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }
}

/// The `serve-baseline` process: serves on a free loopback port, prints `listening <addr>`,
/// then answers commands on stdin until it closes.
pub async fn serve_process(queue: usize, kind: Loop, connected: String, frame: String) {
    let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
        println!("error: cannot bind");
        return;
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (tx, _) = broadcast::channel::<Utf8Bytes>(queue);
    let lagged = Arc::new(AtomicU64::new(0));
    let connected = Utf8Bytes::from(connected);
    let frame = Utf8Bytes::from(frame);
    let shutdown = CancellationToken::new();
    let accept_tx = tx.clone();
    let accept_lagged = Arc::clone(&lagged);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(serve(
                stream,
                accept_tx.clone(),
                connected.clone(),
                Arc::clone(&accept_lagged),
                kind,
                shutdown.clone(),
            ));
        }
    });
    println!("listening {addr}");
    // stdin is read on a plain thread: tokio's `io-std` feature is not enabled in this
    // workspace, and enabling it would rebuild everything that depends on tokio.
    let (lines_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        let mut words = command.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("broadcast"), Some(count)) => {
                // On a worker thread, like the gateway's relay task.
                let (tx, frame) = (tx.clone(), frame.clone());
                let _ = tokio::spawn(async move {
                    for _ in 0..count {
                        while tx.len() >= queue {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        let _ = tx.send(frame.clone());
                    }
                })
                .await;
                println!("sent");
            }
            (Some("stats"), _) => println!(
                "lagged {} receivers {}",
                lagged.load(Ordering::Relaxed),
                tx.receiver_count()
            ),
            _ => println!("error: unknown command {command:?}"),
        }
    }
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
type Stream = SplitStream<WebSocketStream<TcpStream>>;

async fn serve(
    stream: TcpStream,
    tx: broadcast::Sender<Utf8Bytes>,
    connected: Utf8Bytes,
    lagged: Arc<AtomicU64>,
    kind: Loop,
    shutdown: CancellationToken,
) {
    // The gateway's settings: `read_buffer_size(1024)`, `write_buffer_size(0)`.
    let write_buffer = if kind == Loop::Batched { 4096 } else { 0 };
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(write_buffer);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let rx = tx.subscribe();
    let (mut sink, stream) = ws.split();
    if sink.send(Message::Text(connected)).await.is_err() {
        return;
    }
    let lag = match kind {
        Loop::Bare => bare(sink, stream, rx).await,
        Loop::GatewayLike => gateway_like(&mut sink, stream, rx, &shutdown).await,
        Loop::Lean | Loop::Batched => {
            lean(&mut sink, stream, rx, &shutdown, kind == Loop::Batched).await
        }
    };
    if lag {
        lagged.fetch_add(1, Ordering::Relaxed);
    }
}

fn slow_consumer() -> Message {
    Message::Close(Some(CloseFrame {
        code: coding::CloseCode::Again,
        reason: "slow consumer".into(),
    }))
}

/// Returns whether the connection lagged.
async fn bare(mut sink: Sink, mut stream: Stream, mut rx: broadcast::Receiver<Utf8Bytes>) -> bool {
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Ok(frame) => {
                    if sink.send(Message::Text(frame)).await.is_err() {
                        return false;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let _ = sink.send(slow_consumer()).await;
                    return true;
                }
                Err(RecvError::Closed) => return false,
            },
            incoming = stream.next() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn timed_send(sink: &mut Sink, message: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await,
        Ok(Ok(()))
    )
}

async fn recv(rx: &mut Option<broadcast::Receiver<Utf8Bytes>>) -> Result<Utf8Bytes, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn heartbeat() -> tokio::time::Interval {
    let mut heartbeat = tokio::time::interval(Duration::from_secs(25));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    heartbeat
}

/// The shape of gateway-ws `connection::run`. Returns whether the connection lagged.
async fn gateway_like(
    sink: &mut Sink,
    mut stream: Stream,
    rx: broadcast::Receiver<Utf8Bytes>,
    shutdown: &CancellationToken,
) -> bool {
    let revoked = CancellationToken::new();
    let mut heartbeat = heartbeat();
    let mut subs: [Option<broadcast::Receiver<Utf8Bytes>>; 5] = [Some(rx), None, None, None, None];
    loop {
        let [s0, s1, s2, s3, s4] = &mut subs;
        let event = tokio::select! {
            () = shutdown.cancelled() => return false,
            () = revoked.cancelled() => return false,
            _ = heartbeat.tick() => {
                if !timed_send(sink, Message::Ping(Default::default())).await {
                    return false;
                }
                continue;
            }
            incoming = stream.next() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => continue,
            },
            r = recv(s0) => r,
            r = recv(s1) => r,
            r = recv(s2) => r,
            r = recv(s3) => r,
            r = recv(s4) => r,
        };
        match event {
            Ok(frame) => {
                if !timed_send(sink, Message::Text(frame)).await {
                    return false;
                }
            }
            Err(RecvError::Lagged(_)) => {
                let _ = timed_send(sink, slow_consumer()).await;
                return true;
            }
            Err(RecvError::Closed) => return false,
        }
    }
}

/// The gateway loop with its per-iteration costs removed; with `batch`, several ready frames
/// per flush. Returns whether the connection lagged.
async fn lean(
    sink: &mut Sink,
    mut stream: Stream,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    shutdown: &CancellationToken,
    batch: bool,
) -> bool {
    let revoked = CancellationToken::new();
    let mut heartbeat = heartbeat();
    let mut shutdown = std::pin::pin!(shutdown.cancelled());
    let mut revoked = std::pin::pin!(revoked.cancelled());
    loop {
        let event = tokio::select! {
            biased;
            () = &mut shutdown => return false,
            () = &mut revoked => return false,
            r = rx.recv() => r,
            incoming = stream.next() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => continue,
            },
            _ = heartbeat.tick() => {
                if !timed_send(sink, Message::Ping(Default::default())).await {
                    return false;
                }
                continue;
            }
        };
        let frame = match event {
            Ok(frame) => frame,
            Err(RecvError::Lagged(_)) => {
                let _ = timed_send(sink, slow_consumer()).await;
                return true;
            }
            Err(RecvError::Closed) => return false,
        };
        if !batch {
            if !timed_send(sink, Message::Text(frame)).await {
                return false;
            }
            continue;
        }
        let mut lagged = false;
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            sink.feed(Message::Text(frame)).await?;
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(TryRecvError::Lagged(_)) => {
                        lagged = true;
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            sink.flush().await
        })
        .await;
        if lagged {
            let _ = timed_send(sink, slow_consumer()).await;
            return true;
        }
        if !matches!(written, Ok(Ok(()))) {
            return false;
        }
    }
}
