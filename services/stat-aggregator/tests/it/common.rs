//! Shared set-up: NATS, the service in process, publishing events, reading the snapshot.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use events::stat::{StatSnapshot, StatUpdate};
use events::subject::{STAT_SNAPSHOT_BUCKET, STAT_SNAPSHOT_KEY, STAT_UPDATES};
use events::{Envelope, EventType, Publisher};
use futures_util::StreamExt;
use serde_json::{Value, json};
use stat_aggregator::clock::{Clock, ManualClock};
use test_support::InProcess;
use test_support::NatsServer;

pub const PREFIX: &str = "STAT_AGGREGATOR_";

/// A private NATS and a client on it.
pub struct Bus {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub publisher: Publisher,
}

impl Bus {
    pub async fn start() -> Self {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        events::provision::ensure_stream(&js, &events::provision::StreamSettings::events())
            .await
            .unwrap();
        Self {
            publisher: Publisher::from_context(js.clone()),
            nats,
            client,
            js,
        }
    }

    /// The service's settings as environment pairs (short lease for fail-over tests).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            (format!("{PREFIX}NATS__URL"), self.nats.url()),
            (format!("{PREFIX}SHUTDOWN__GRACE_SECS"), "5".to_owned()),
            (
                format!("{PREFIX}AGGREGATOR__LEASE_TTL_SECS"),
                "2".to_owned(),
            ),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned())),
        );
        env
    }

    /// The service in process, with `clock` when given.
    pub async fn aggregator(
        &self,
        clock: Option<Arc<ManualClock>>,
        extra: &[(&str, &str)],
    ) -> InProcess {
        InProcess::start(
            &stat_aggregator::SPEC,
            self.env(extra),
            move |s| {
                let mut p = stat_aggregator::prepare(s)?;
                if let Some(c) = clock {
                    p.clock = c as Arc<dyn Clock>;
                }
                Ok(p)
            },
            stat_aggregator::run,
        )
        .await
    }

    pub async fn publish(&self, event: &Envelope) {
        self.publisher.publish(event).await.unwrap();
    }

    /// Publishes many events without waiting for each acknowledgement in turn.
    pub async fn publish_all(&self, events: &[Envelope]) {
        events::Publisher::from_context(self.js.clone())
            .publish_all(events, 500)
            .await
            .unwrap();
    }

    pub async fn snapshot(&self) -> Option<StatSnapshot> {
        let kv = self.js.get_key_value(STAT_SNAPSHOT_BUCKET).await.ok()?;
        let entry = kv.get(STAT_SNAPSHOT_KEY).await.ok()??;
        serde_json::from_slice(&entry).ok()
    }

    /// Waits until the snapshot satisfies `ok`.
    pub async fn snapshot_where(
        &self,
        what: &str,
        ok: impl Fn(&StatSnapshot) -> bool,
    ) -> StatSnapshot {
        test_support::eventually(what, || async { self.snapshot().await.filter(|s| ok(s)) }).await
    }

    /// Every update published from now on.
    pub async fn updates(&self) -> tokio::sync::mpsc::UnboundedReceiver<StatUpdate> {
        let mut sub = self.client.subscribe(STAT_UPDATES).await.unwrap();
        self.client.flush().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if tx
                    .send(serde_json::from_slice(&m.payload).unwrap())
                    .is_err()
                {
                    return;
                }
            }
        });
        rx
    }
}

pub fn event(ty: &str, data: Value) -> Envelope {
    let (d, n) = ty.split_once('.').unwrap();
    Envelope::new(EventType::new(d, n).unwrap(), "1", data).unwrap()
}

/// A mixed burst: `n` events over the default counters' domains, with the totals it must
/// produce for `deals_completed`, `orders_created`, `orders_completed` and `deals_open`.
pub struct Burst {
    pub events: Vec<Envelope>,
    pub deals_completed: i64,
    pub orders_created: i64,
    pub orders_completed: i64,
    pub deals_open: i64,
}

pub fn burst(n: usize) -> Burst {
    let mut b = Burst {
        events: Vec::with_capacity(n),
        deals_completed: 0,
        orders_created: 0,
        orders_completed: 0,
        deals_open: 0,
    };
    for i in 0..n {
        let e = match i % 5 {
            0 => {
                b.deals_open += 1;
                event("deal.created", json!({"id": i}))
            }
            1 => {
                b.deals_completed += 1;
                b.deals_open -= 1;
                event("deal.completed", json!({"id": i}))
            }
            2 => {
                b.orders_created += 1;
                event("order.created", json!({"id": i}))
            }
            3 => {
                b.orders_completed += 1;
                event(
                    "order.status_changed",
                    json!({"id": i, "status": "completed"}),
                )
            }
            _ => event(
                "order.status_changed",
                json!({"id": i, "status": "processing"}),
            ),
        };
        b.events.push(e);
    }
    b
}

impl Burst {
    /// Whether `s` holds exactly this burst's totals (from an empty start).
    pub fn matches(&self, s: &StatSnapshot) -> bool {
        let total = |c: &str| s.counters.get(c).and_then(|w| w.get("total")).copied();
        total("deals_completed") == Some(self.deals_completed)
            && total("orders_created") == Some(self.orders_created)
            && total("orders_completed") == Some(self.orders_completed)
            && total("deals_open") == Some(self.deals_open)
    }
}

pub fn total(s: &StatSnapshot, counter: &str) -> i64 {
    s.counters[counter]["total"]
}

/// Lets in-flight work land before checking that nothing more changes.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// Waits until a cancelled in-process service has stopped.
pub async fn stopped(service: &InProcess) {
    test_support::eventually("service stopped", || async {
        service.task.is_finished().then_some(())
    })
    .await;
}
