//! Token expiry: every socket authenticated by a token is disconnected at its `exp`, after an
//! `auth:expired` event saying why.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::namespace::Namespace;

/// Sockets by the Unix second their token expires.
#[derive(Debug, Default)]
pub(crate) struct Schedule(Mutex<BTreeSet<(i64, Sid, Namespace)>>);

impl Schedule {
    pub(crate) fn insert(&self, exp: i64, sid: Sid, ns: Namespace) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((exp, sid, ns));
    }

    pub(crate) fn remove(&self, exp: i64, sid: Sid, ns: Namespace) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(exp, sid, ns));
    }

    /// Sockets whose token expired by `now` (Unix seconds), removed from the schedule.
    fn take_due(&self, now: i64) -> Vec<(i64, Sid, Namespace)> {
        let mut schedule = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        while let Some(first) = schedule.first()
            && first.0 <= now
        {
            if let Some(entry) = schedule.pop_first() {
                due.push(entry);
            }
        }
        due
    }
}

/// Disconnects sockets whose token expired, after telling them why.
pub(crate) async fn sweeper(io: SocketIo, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for (exp, sid, ns) in gateway.expiry.take_due(now) {
            let Some(socket) = io.of(ns.path()).and_then(|ops| ops.get_socket(sid)) else {
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
            metrics::counter!("socketio_tokens_expired_total", "namespace" => ns.name())
                .increment(1);
        }
    }
}
