//! `socket_metrics_updated`: every instance reports its socket counts on
//! `rt.metrics.sockets`; each sums the reports it heard lately and tells its `/admin` sockets
//! when the totals change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::subject::SOCKET_METRICS;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::bus::{count_broadcast_error, subscribe};
use crate::gateway::Gateway;
use crate::namespace::Namespace;

/// One instance's report on [`SOCKET_METRICS`].
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    instance: String,
    namespaces: HashMap<String, i64>,
    #[serde(with = "events::envelope::timestamp")]
    at: OffsetDateTime,
}

pub(crate) async fn relay(
    io: SocketIo,
    gateway: Arc<Gateway>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(gateway.config.metrics.interval_secs);
    let instance = uuid::Uuid::now_v7().to_string();
    let Some(mut sub) = subscribe(&nats, SOCKET_METRICS, &shutdown).await else {
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
                let own: HashMap<String, i64> = Namespace::ALL
                    .iter()
                    .zip(counts)
                    .map(|(ns, n)| (ns.name().to_owned(), n))
                    .collect();
                let report = Report {
                    instance: instance.clone(),
                    namespaces: own.clone(),
                    at: OffsetDateTime::now_utc(),
                };
                if let Ok(body) = serde_json::to_vec(&report) {
                    let _ = nats.publish(SOCKET_METRICS, body.into()).await;
                }
                // Our own report counts even before it comes back from NATS.
                latest.insert(instance.clone(), (Instant::now(), own));
                latest.retain(|_, (seen, _)| seen.elapsed() < interval * 3);
                let mut totals: HashMap<String, i64> =
                    Namespace::ALL.iter().map(|ns| (ns.name().to_owned(), 0)).collect();
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
                if let Some(admin) = io.of(Namespace::Admin.path())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_check::assert_matches_schema;

    #[test]
    fn payloads_match_their_published_schemas() {
        let totals: HashMap<String, i64> = Namespace::ALL
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns.name().to_owned(), i as i64))
            .collect();
        let body = metrics_body(&totals, 2, OffsetDateTime::now_utc());
        assert_eq!(body["total"], 10);
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
    }
}
