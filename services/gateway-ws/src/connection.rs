//! One authenticated `/ws` connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use events::surface::WsChannel;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::config::{HeartbeatConfig, LimitsConfig};
use crate::hub::{Frame, Hub};
use crate::limits::{RateLimiter, is_idle_past};
use crate::protocol::{self, ClientMessage};
use crate::sessions::{Revocation, Revoked};

/// Close codes this gateway uses.
pub mod close {
    /// Going away: server shutdown; reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: authentication, per-IP cap, abuse.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later: instance full, store unavailable, slow consumer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Rate-limit violations tolerated (each answered with an error) before closing with 1008.
const MAX_RATE_VIOLATIONS: u32 = 20;

/// What a connection needs besides its socket.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Limits.
    pub limits: Arc<LimitsConfig>,
    /// Keepalive.
    pub heartbeat: Arc<HeartbeatConfig>,
}

type Sink = SplitSink<WebSocket, Message>;

#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Close(u16, &'static str),
    /// The peer is gone or unresponsive: no close handshake.
    Drop,
}

/// Sends a close frame, then waits briefly for the peer's close so the code reaches it.
pub async fn close_with(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The close reason (code 1008) of a connection whose session stopped authenticating it;
/// the same words as the handshake refusals where the situation is the same.
fn revoked_reason(why: Revoked) -> &'static str {
    match why {
        Revoked::Ended => "session expired or destroyed",
        Revoked::NoUser => "session has no user",
        Revoked::UserChanged => "session user changed",
    }
}

/// Serves an authenticated connection until the client leaves, the session is revoked, the
/// server shuts down, or a limit is breached.
pub async fn serve(
    socket: WebSocket,
    user_id: Value,
    hub: Arc<Hub>,
    settings: ConnectionSettings,
    revocation: Revocation,
    shutdown: CancellationToken,
) {
    let (mut sink, mut stream) = socket.split();
    let write_timeout = Duration::from_secs(settings.limits.write_timeout_secs);
    let exit = match send(
        &mut sink,
        protocol::connected(&user_id).into(),
        write_timeout,
    )
    .await
    {
        Err(exit) => exit,
        Ok(()) => {
            run(
                &mut sink,
                &mut stream,
                &hub,
                &settings,
                &revocation,
                &shutdown,
            )
            .await
        }
    };
    if let Exit::Close(code, reason) = exit {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame))))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            // Give the peer a moment to answer the close handshake.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// The connection's subscriptions: one optional receiver per channel, at
/// [`WsChannel::index`] (so position `i` is `WsChannel::ALL[i]`).
#[derive(Default)]
struct Subscriptions([Option<broadcast::Receiver<Frame>>; WsChannel::ALL.len()]);

impl Subscriptions {
    fn slot(&mut self, channel: WsChannel) -> &mut Option<broadcast::Receiver<Frame>> {
        &mut self.0[channel.index()]
    }
}

async fn recv(rx: &mut Option<broadcast::Receiver<Frame>>) -> Result<Frame, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn run(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    hub: &Hub,
    settings: &ConnectionSettings,
    revocation: &Revocation,
    shutdown: &CancellationToken,
) -> Exit {
    let limits = &settings.limits;
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let idle_timeout = Duration::from_secs(settings.heartbeat.timeout_secs);
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(settings.heartbeat.interval_secs));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut rate = RateLimiter::new(
        limits.messages_per_second,
        limits.messages_per_second.saturating_mul(2),
    );
    let mut violations = 0u32;
    let mut last_seen = Instant::now();
    let mut subs = Subscriptions::default();

    let exit = loop {
        // One branch per channel; the pattern stops compiling if a channel is added.
        let [s0, s1, s2, s3, s4] = &mut subs.0;
        let event = tokio::select! {
            () = shutdown.cancelled() => break Exit::Close(close::GOING_AWAY, "server shutting down"),
            why = revocation.revoked() => break Exit::Close(close::POLICY, revoked_reason(why)),
            _ = heartbeat.tick() => {
                if is_idle_past(last_seen, Instant::now(), idle_timeout) {
                    break Exit::Drop;
                }
                if let Err(exit) = send(sink, Message::Ping(Default::default()), write_timeout).await {
                    break exit;
                }
                continue;
            }
            incoming = stream.next() => {
                last_seen = Instant::now();
                match incoming {
                    None | Some(Ok(Message::Close(_))) => break Exit::Drop,
                    Some(Err(err)) => break exit_for_read_error(&err),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        match send(sink, protocol::error("binary frames are not supported; send JSON text").into(), write_timeout).await {
                            Ok(()) => continue,
                            Err(exit) => break exit,
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        metrics::counter!("ws_messages_in_total").increment(1);
                        if !rate.allow(Instant::now()) {
                            violations += 1;
                            metrics::counter!("ws_dropped_total", "reason" => "rate_limited").increment(1);
                            if violations > MAX_RATE_VIOLATIONS {
                                break Exit::Close(close::POLICY, "rate limit exceeded");
                            }
                            match send(sink, protocol::error("rate limit exceeded; message dropped").into(), write_timeout).await {
                                Ok(()) => continue,
                                Err(exit) => break exit,
                            }
                        }
                        let reply = handle(&text, &mut subs, hub);
                        match send(sink, reply.into(), write_timeout).await {
                            Ok(()) => continue,
                            Err(exit) => break exit,
                        }
                    }
                }
            }
            r = recv(s0) => (WsChannel::ALL[0], r),
            r = recv(s1) => (WsChannel::ALL[1], r),
            r = recv(s2) => (WsChannel::ALL[2], r),
            r = recv(s3) => (WsChannel::ALL[3], r),
            r = recv(s4) => (WsChannel::ALL[4], r),
        };
        let (channel, event) = event;
        match event {
            Ok(frame) => {
                // Write this event and whatever else is already queued on the channel, then
                // flush once: one syscall per burst instead of one per event.
                let burst =
                    write_burst(sink, frame, subs.slot(channel).as_mut(), write_timeout).await;
                match burst {
                    Ok(()) => {}
                    Err(BurstError::Exit(exit)) => break exit,
                    Err(BurstError::Lagged) => {
                        metrics::counter!("ws_dropped_total", "reason" => "slow_consumer")
                            .increment(1);
                        break Exit::Close(close::TRY_AGAIN_LATER, "slow consumer: too far behind");
                    }
                }
            }
            Err(RecvError::Lagged(_)) => {
                metrics::counter!("ws_dropped_total", "reason" => "slow_consumer").increment(1);
                break Exit::Close(close::TRY_AGAIN_LATER, "slow consumer: too far behind");
            }
            Err(RecvError::Closed) => break Exit::Close(close::GOING_AWAY, "server shutting down"),
        }
    };
    for channel in WsChannel::ALL {
        if subs.slot(channel).take().is_some() {
            hub.report(channel);
        }
    }
    exit
}

/// Applies a client text message and returns the reply.
fn handle(text: &str, subs: &mut Subscriptions, hub: &Hub) -> String {
    match protocol::parse(text) {
        Ok(ClientMessage::Ping) => protocol::PONG.to_owned(),
        Ok(ClientMessage::Subscribe(channel)) => {
            let slot = subs.slot(channel);
            if slot.is_none() {
                *slot = Some(hub.subscribe(channel));
            }
            protocol::ack("subscribed", channel)
        }
        Ok(ClientMessage::Unsubscribe(channel)) => {
            if subs.slot(channel).take().is_some() {
                hub.report(channel);
            }
            protocol::ack("unsubscribed", channel)
        }
        Err(err) => protocol::error(&err.to_string()),
    }
}

/// How a connection ends after reading failed: 1009 for a message or frame over
/// `limits.max_message_bytes` (tungstenite's capacity error, which axum wraps as the
/// error's source); any other read error means the peer is gone or broke the protocol.
fn exit_for_read_error(err: &axum::Error) -> Exit {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    let too_big = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<WsError>())
        .is_some_and(|e| matches!(e, WsError::Capacity(CapacityError::MessageTooLong { .. })));
    if too_big {
        Exit::Close(close::TOO_BIG, "message too big")
    } else {
        Exit::Drop
    }
}

/// Events written per flush at most, so one busy channel cannot starve the others.
const MAX_BURST: usize = 64;

enum BurstError {
    Exit(Exit),
    Lagged,
}

async fn write_burst(
    sink: &mut Sink,
    first: Frame,
    rx: Option<&mut broadcast::Receiver<Frame>>,
    timeout: Duration,
) -> Result<(), BurstError> {
    let work = async {
        sink.feed(Message::Text(first)).await?;
        if let Some(rx) = rx {
            for _ in 1..MAX_BURST {
                match rx.try_recv() {
                    Ok(frame) => sink.feed(Message::Text(frame)).await?,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => return Ok(false),
                    Err(_) => break,
                }
            }
        }
        sink.flush().await.map(|()| true)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(BurstError::Lagged),
        Ok(Err(_)) => Err(BurstError::Exit(Exit::Drop)),
        Err(_) => {
            metrics::counter!("ws_dropped_total", "reason" => "write_timeout").increment(1);
            Err(BurstError::Exit(Exit::Drop))
        }
    }
}

async fn send(sink: &mut Sink, message: Message, timeout: Duration) -> Result<(), Exit> {
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Exit::Drop),
        Err(_) => {
            metrics::counter!("ws_dropped_total", "reason" => "write_timeout").increment(1);
            Err(Exit::Drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};

    use super::*;

    #[test]
    fn an_oversized_message_closes_with_1009_and_other_read_errors_drop() {
        let too_long = axum::Error::new(WsError::Capacity(CapacityError::MessageTooLong {
            size: 5000,
            max_size: 4096,
        }));
        assert_eq!(
            exit_for_read_error(&too_long),
            Exit::Close(close::TOO_BIG, "message too big")
        );
        for other in [
            axum::Error::new(WsError::ConnectionClosed),
            axum::Error::new(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake,
            )),
            // The old wording check would have closed this one with 1009.
            axum::Error::new(std::io::Error::other("frame too big")),
        ] {
            assert_eq!(exit_for_read_error(&other), Exit::Drop, "{other}");
        }
    }
}
