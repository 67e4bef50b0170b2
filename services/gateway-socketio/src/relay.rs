//! NATS → sockets: domain events to `/admin` rooms, widget pushes to `/widget` rooms, widget-key
//! deactivations, cluster-wide socket counts, and the token-expiry sweeper. Every instance
//! subscribes itself (core NATS, no queue group) and delivers to its own sockets only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::surface::AdminEmitKind;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use service_runtime::{Backoff, ReadyFlag};
use socketioxide::SocketIo;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sockets::{Gateway, NAMESPACES, widget_room};
use crate::widget::DEACTIVATED_SUBJECT;

/// Subject of the Discord boost requests sent by widgets (request/reply).
pub const DISCORD_SUBJECT: &str = "cmd.discord.request_send";
/// Subject where each instance reports its socket counts.
pub const METRICS_SUBJECT: &str = "rt.metrics.sockets";

/// Starts every relay; they stop on `shutdown`.
/// `subscribed` is set once the domain-event subscription is in place.
pub fn spawn(
    io: SocketIo,
    gateway: Arc<Gateway>,
    nats: async_nats::Client,
    subscribed: ReadyFlag,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(domain_events(
        io.clone(),
        nats.clone(),
        subscribed,
        shutdown.clone(),
    ));
    set.spawn(widget_pushes(io.clone(), nats.clone(), shutdown.clone()));
    set.spawn(deactivations(
        io.clone(),
        Arc::clone(&gateway),
        nats.clone(),
        shutdown.clone(),
    ));
    set.spawn(socket_metrics(
        io.clone(),
        Arc::clone(&gateway),
        nats,
        shutdown.clone(),
    ));
    set.spawn(expiry_sweeper(io, gateway, shutdown));
    set
}

/// Subscribes, retrying while NATS is not connected yet (the client reconnects by itself).
async fn subscribe(
    nats: &async_nats::Client,
    subject: &'static str,
    shutdown: &CancellationToken,
) -> Option<async_nats::Subscriber> {
    let mut backoff = Backoff::new(SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_MAX);
    loop {
        match nats.subscribe(subject).await {
            Ok(sub) => return Some(sub),
            Err(e) => tracing::warn!(subject, error = %e, "subscribe failed; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// First and longest wait between two subscription attempts.
const SUBSCRIBE_RETRY_BASE: Duration = Duration::from_millis(100);
const SUBSCRIBE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The `event_kind` label of `socketio_events_relayed_total` for an `/admin` emit.
const fn relayed_label(kind: AdminEmitKind) -> &'static str {
    match kind {
        AdminEmitKind::Updated => "updated",
        AdminEmitKind::EventLog => "event_log",
        AdminEmitKind::EventLogCreated => "event_log_created",
        AdminEmitKind::ChannelMessage => "feed_message",
    }
}

/// A NATS payload as JSON to forward unchanged, when it is JSON.
fn raw_json(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    RawValue::from_string(text.to_owned()).ok()
}

/// The next message, or `None` once shutting down or the subscription ended.
async fn next(
    sub: &mut async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> Option<async_nats::Message> {
    tokio::select! {
        () = shutdown.cancelled() => None,
        m = sub.next() => m,
    }
}

async fn domain_events(
    io: SocketIo,
    nats: async_nats::Client,
    subscribed: ReadyFlag,
    shutdown: CancellationToken,
) {
    let Some(mut sub) = subscribe(&nats, events::subject::ALL_EVENTS, &shutdown).await else {
        return;
    };
    subscribed.set();
    while let Some(message) = next(&mut sub, &shutdown).await {
        relay_event(&io, &message.payload).await;
    }
}

/// One domain event to the `/admin` rooms `events::surface` names. The payload is the envelope
/// exactly as published, serialised once for all sockets.
async fn relay_event(io: &SocketIo, payload: &[u8]) {
    let envelope = match events::Envelope::decode(payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            metrics::counter!("socketio_events_invalid_total").increment(1);
            tracing::warn!(error = %e, "undecodable domain event skipped");
            return;
        }
    };
    // Decoding succeeded, so the bytes are one JSON object in UTF-8.
    let Some(raw) = raw_json(payload) else {
        return;
    };
    let Some(admin) = io.of("/admin") else { return };
    for emit in events::surface::admin_emits(&envelope) {
        let kind = relayed_label(emit.kind);
        if let Err(e) = admin.clone().to(emit.rooms).emit(&emit.event, &raw).await {
            count_broadcast_error(&e);
        }
        metrics::counter!("socketio_events_relayed_total", "event_kind" => kind).increment(1);
    }
}

/// Sockets whose queue was full missed the emit; they are counted (and dropped by their next
/// heartbeat, which cannot be queued either).
fn count_broadcast_error(error: &socketioxide::BroadcastError) {
    match error {
        socketioxide::BroadcastError::Socket(errors) => {
            metrics::counter!("socketio_emits_dropped_total").increment(errors.len() as u64);
        }
        other => tracing::warn!(error = %other, "broadcast failed"),
    }
}

async fn widget_pushes(io: SocketIo, nats: async_nats::Client, shutdown: CancellationToken) {
    let Some(mut sub) = subscribe(&nats, "rt.widget.*.*", &shutdown).await else {
        return;
    };
    while let Some(message) = next(&mut sub, &shutdown).await {
        let mut tokens = message.subject.split('.').skip(2);
        let (Some(key), Some(kind)) = (tokens.next(), tokens.next()) else {
            continue;
        };
        let event = match kind {
            "update" => "widget:update",
            "intercom_notify" => "widget:intercom:notify",
            _ => continue,
        };
        let Some(raw) = raw_json(&message.payload) else {
            metrics::counter!("socketio_widget_pushes_invalid_total").increment(1);
            tracing::warn!(subject = %message.subject, "widget push is not JSON; skipped");
            continue;
        };
        let Some(widget) = io.of("/widget") else {
            continue;
        };
        if let Err(e) = widget.to(widget_room(key)).emit(event, &raw).await {
            count_broadcast_error(&e);
        }
        metrics::counter!("socketio_events_relayed_total", "event_kind" => "widget").increment(1);
    }
}

async fn deactivations(
    io: SocketIo,
    gateway: Arc<Gateway>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) {
    let Some(mut sub) = subscribe(&nats, DEACTIVATED_SUBJECT, &shutdown).await else {
        return;
    };
    while let Some(message) = next(&mut sub, &shutdown).await {
        let Ok(key) = std::str::from_utf8(&message.payload) else {
            continue;
        };
        gateway.widgets.invalidate(key);
        let Some(widget) = io.of("/widget") else {
            continue;
        };
        let room = widget_room(key);
        let reason = serde_json::json!({"reason": "widget key deactivated"});
        let _ = widget
            .clone()
            .to(room.clone())
            .emit("widget:deactivated", &reason)
            .await;
        if let Err(e) = widget.to(room).disconnect().await {
            tracing::debug!(error = %e, "disconnecting a deactivated widget's sockets");
        }
        tracing::info!("widget key deactivated; its sockets were disconnected");
    }
}

/// One instance's report on [`METRICS_SUBJECT`].
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    instance: String,
    namespaces: HashMap<String, i64>,
    #[serde(with = "events::envelope::timestamp")]
    at: OffsetDateTime,
}

async fn socket_metrics(
    io: SocketIo,
    gateway: Arc<Gateway>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(gateway.config.metrics.interval_secs);
    let instance = uuid::Uuid::now_v7().to_string();
    let Some(mut sub) = subscribe(&nats, METRICS_SUBJECT, &shutdown).await else {
        return;
    };
    let mut latest: HashMap<String, (Instant, HashMap<String, i64>)> = HashMap::new();
    let mut last_sent: Option<(HashMap<String, i64>, usize)> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            m = sub.next() => {
                let Some(m) = m else { return };
                match serde_json::from_slice::<Report>(&m.payload) {
                    Ok(report) => {
                        latest.insert(report.instance, (Instant::now(), report.namespaces));
                    }
                    Err(e) => tracing::debug!(error = %e, "unreadable socket report"),
                }
            }
            _ = tick.tick() => {
                let counts = gateway.local_counts();
                let own: HashMap<String, i64> = NAMESPACES
                    .iter()
                    .zip(counts)
                    .map(|(ns, n)| ((*ns).to_owned(), n))
                    .collect();
                let report = Report {
                    instance: instance.clone(),
                    namespaces: own.clone(),
                    at: OffsetDateTime::now_utc(),
                };
                if let Ok(body) = serde_json::to_vec(&report) {
                    let _ = nats.publish(METRICS_SUBJECT, body.into()).await;
                }
                // Our own report counts even before it comes back from NATS.
                latest.insert(instance.clone(), (Instant::now(), own));
                latest.retain(|_, (seen, _)| seen.elapsed() < interval * 3);
                let mut totals: HashMap<String, i64> =
                    NAMESPACES.iter().map(|ns| ((*ns).to_owned(), 0)).collect();
                for (_, namespaces) in latest.values() {
                    for (ns, n) in namespaces {
                        *totals.entry(ns.clone()).or_default() += n;
                    }
                }
                let current = (totals, latest.len());
                if last_sent.as_ref() == Some(&current) {
                    continue;
                }
                let body = metrics_body(&current.0, current.1, OffsetDateTime::now_utc());
                *gateway
                    .cluster_counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(body.clone()));
                if let Some(admin) = io.of("/admin")
                    && let Err(e) = admin.emit("socket_metrics_updated", &body).await
                {
                    count_broadcast_error(&e);
                }
                last_sent = Some(current);
            }
        }
    }
}

/// The `socket_metrics_updated` payload.
fn metrics_body(totals: &HashMap<String, i64>, instances: usize, at: OffsetDateTime) -> Value {
    serde_json::json!({
        "namespaces": totals,
        "total": totals.values().sum::<i64>(),
        "instances": instances,
        "updated_at": events::envelope::timestamp::format(at),
    })
}

/// Disconnects sockets whose token expired, after telling them why.
async fn expiry_sweeper(io: SocketIo, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for (exp, sid, ns) in gateway.take_expired(now) {
            let Some(socket) = io.of(format!("/{ns}")).and_then(|ops| ops.get_socket(sid)) else {
                continue;
            };
            let expired_at = OffsetDateTime::from_unix_timestamp(exp)
                .map(events::envelope::timestamp::format)
                .unwrap_or_default();
            let _ = socket.emit(
                "auth:expired",
                &serde_json::json!({"reason": "token expired", "expired_at": expired_at}),
            );
            let _ = socket.disconnect();
            metrics::counter!("socketio_tokens_expired_total", "namespace" => ns).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_matches_schema(name: &str, instance: &Value) {
        let path = format!("{}/../../proto/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&raw).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{instance}\n{errors:#?}");
    }

    #[test]
    fn relayed_events_are_labelled_by_their_kind() {
        let envelope = events::Envelope::new(
            events::EventType::parse("deal.provider_assigned").unwrap(),
            "555",
            Value::Null,
        )
        .unwrap()
        .with_audience(events::envelope::Audience {
            channel: Some(events::token::Token::new("channel", "deal_feed").unwrap()),
            ..Default::default()
        });
        let labels: Vec<_> = events::surface::admin_emits(&envelope)
            .into_iter()
            .map(|emit| relayed_label(emit.kind))
            .collect();
        assert_eq!(
            labels,
            ["updated", "event_log", "event_log_created", "feed_message"]
        );
    }

    #[test]
    fn payloads_match_their_published_schemas() {
        let totals: HashMap<String, i64> = NAMESPACES
            .iter()
            .enumerate()
            .map(|(i, ns)| ((*ns).to_owned(), i as i64))
            .collect();
        let body = metrics_body(&totals, 2, OffsetDateTime::now_utc());
        assert_eq!(body["total"], 6);
        assert_matches_schema("socketio-socket-metrics.schema.json", &body);

        let report = Report {
            instance: uuid::Uuid::now_v7().to_string(),
            namespaces: totals,
            at: OffsetDateTime::now_utc(),
        };
        assert_matches_schema(
            "socket-report.schema.json",
            &serde_json::to_value(&report).unwrap(),
        );
        assert_matches_schema(
            "discord-request.schema.json",
            &crate::discord::discord_body("wk_abcdef", Some("https://a.example"), Value::Null),
        );
    }
}
