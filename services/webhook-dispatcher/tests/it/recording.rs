//! Claiming and recording against a real PostgreSQL: what a claim takes, and that no outcome
//! can hold up the others.

use std::time::{Duration, Instant};

use events::pattern::Pattern;
use sqlx::PgPool;
use test_support::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;
use webhook_dispatcher::store::{
    Claimed, DeliveryStatus, LocalLoad, NewSubscription, OutboxEvent, Outcome, Store,
};
use webhook_dispatcher::worker::recorder::{RecordReport, Recorder};

async fn store(db: &TestDatabase) -> Store {
    let pool = PgPool::connect(db.url()).await.unwrap();
    webhook_dispatcher::MIGRATOR.run(&pool).await.unwrap();
    Store::new(pool)
}

async fn subscription(store: &Store, max_concurrency: i32, rate: Option<i32>) -> Uuid {
    store
        .create_subscription(&NewSubscription {
            url: "https://example.com/hook".to_owned(),
            event_types: vec![Pattern::All],
            description: String::new(),
            max_attempts: 3,
            rate_limit_per_sec: rate,
            max_concurrency,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
        })
        .await
        .unwrap()
        .id
}

/// `n` due deliveries for `sub`.
async fn due(store: &Store, sub: Uuid, n: usize) {
    let events: Vec<OutboxEvent> = (0..n)
        .map(|_| OutboxEvent {
            id: Uuid::now_v7(),
            event_type: "deal.created".to_owned(),
            payload: "{}".to_owned(),
            traceparent: None,
        })
        .collect();
    let deliveries: Vec<(Uuid, Uuid, String)> = events
        .iter()
        .map(|e| (e.id, sub, e.event_type.clone()))
        .collect();
    store.insert_outbox(&events, &deliveries).await.unwrap();
}

async fn claim(store: &Store, limit: i64, local: &[LocalLoad]) -> Vec<Claimed> {
    store
        .claim(limit, 60, Uuid::now_v7(), local, 1)
        .await
        .unwrap()
}

fn success(c: &Claimed) -> Outcome {
    let now = OffsetDateTime::now_utc();
    Outcome {
        delivery_id: c.id,
        subscription_id: c.subscription_id,
        lease_token: c.lease_token,
        lease_deadline: Instant::now() + Duration::from_secs(60),
        attempt: c.attempts,
        started_at: now,
        duration_ms: 5,
        response_status: Some(200),
        response_body: Some(b"ok\0\xff".to_vec()),
        error: None,
        status: DeliveryStatus::Succeeded,
        next_attempt_at: now,
        disable: None,
    }
}

async fn attempts(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_attempts")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rejected_outcome_is_dropped_alone_and_the_rest_are_recorded() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let sub = subscription(&store, 16, None).await;
    due(&store, sub, 7).await;
    let claimed = claim(&store, 10, &[]).await;
    assert_eq!(claimed.len(), 7);
    let mut batch: Vec<Outcome> = claimed.iter().map(success).collect();
    // PostgreSQL `text` refuses 0x00: this row can never be written as it is.
    batch[3].error = Some("broken\0".to_owned());
    let report = Recorder::new(store.clone(), 0).record(batch).await;
    assert_eq!(
        report,
        RecordReport {
            recorded: 6,
            rejected: 1,
            ..RecordReport::default()
        }
    );
    assert_eq!(attempts(&store).await, 6);
    // Response bodies are stored byte for byte, NUL and non-UTF-8 included.
    let d = store.get_delivery(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert_eq!(
        d.attempt_log[0].response_body.as_deref(),
        Some(&b"ok\0\xff"[..])
    );
    let shown = serde_json::to_value(&d.attempt_log[0]).unwrap();
    assert_eq!(shown["response_body"], "ok\u{0}\u{FFFD}");
    assert_eq!(shown["response_body_base64"], "b2sA/w==");
}

#[tokio::test]
async fn outcomes_of_vanished_deliveries_are_dropped_without_failing_the_batch() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let gone = subscription(&store, 16, None).await;
    let kept = subscription(&store, 16, None).await;
    due(&store, gone, 2).await;
    due(&store, kept, 2).await;
    let claimed = claim(&store, 10, &[]).await;
    assert_eq!(claimed.len(), 4);
    assert!(store.delete_subscription(gone).await.unwrap());
    let batch: Vec<Outcome> = claimed.iter().map(success).collect();
    let done = store.record(&batch, 100).await.unwrap();
    assert_eq!(done.recorded, 2);
    assert_eq!(done.vanished.len(), 2);
    assert!(done.lease_lost.is_empty());
    assert_eq!(attempts(&store).await, 2);
}

#[tokio::test]
async fn an_outcome_is_recorded_only_under_its_own_claim() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let sub = subscription(&store, 16, None).await;
    due(&store, sub, 1).await;
    let first = claim(&store, 10, &[]).await.remove(0);
    // Its lease runs out before the outcome is written, and another claim takes it over.
    sqlx::query(
        "UPDATE webhook_deliveries SET lease_until = now() - interval '1 second', \
           next_attempt_at = now() - interval '1 second'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let second = claim(&store, 10, &[]).await.remove(0);
    assert_eq!((second.id, second.attempts), (first.id, 2));
    assert_ne!(second.lease_token, first.lease_token);

    let late = store.record(&[success(&first)], 0).await.unwrap();
    assert_eq!((late.recorded, late.lease_lost), (0, vec![first.id]));
    let d = store.get_delivery(first.id).await.unwrap().unwrap();
    assert_eq!(
        d.status,
        DeliveryStatus::Pending,
        "the newer claim still owns it"
    );
    assert!(
        claim(&store, 10, &[]).await.is_empty(),
        "and still holds it"
    );

    let current = store.record(&[success(&second)], 0).await.unwrap();
    assert_eq!(current.recorded, 1);
    assert_eq!(attempts(&store).await, 1);
}

#[tokio::test]
async fn a_claim_takes_only_what_each_subscription_may_send_now() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let narrow = subscription(&store, 2, None).await;
    let wide = subscription(&store, 16, None).await;
    let limited = subscription(&store, 16, Some(3)).await;
    due(&store, narrow, 5).await;
    due(&store, wide, 4).await;
    due(&store, limited, 5).await;
    let count = |c: &[Claimed], sub: Uuid| c.iter().filter(|d| d.subscription_id == sub).count();

    let claimed = claim(&store, 100, &[]).await;
    assert_eq!(count(&claimed, narrow), 2, "max_concurrency");
    assert_eq!(count(&claimed, wide), 4);
    assert_eq!(count(&claimed, limited), 3, "one second's rate budget");

    // With those in flight here, nothing more may start for narrow or limited.
    let local = [
        LocalLoad {
            subscription_id: narrow,
            in_flight: 2,
            rate_tokens: None,
            rounds: 1,
        },
        LocalLoad {
            subscription_id: limited,
            in_flight: 3,
            rate_tokens: Some(0),
            rounds: 1,
        },
    ];
    assert!(claim(&store, 100, &local).await.is_empty());
    // One slot free, one token back: one each.
    let local = [
        LocalLoad {
            in_flight: 1,
            ..local[0]
        },
        LocalLoad {
            rate_tokens: Some(1),
            ..local[1]
        },
    ];
    let claimed = claim(&store, 100, &local).await;
    assert_eq!(count(&claimed, narrow), 1);
    assert_eq!(count(&claimed, limited), 1);
    // A subscription allowed two rounds here may hold twice its max_concurrency: with its
    // two slots busy it still takes two more (all it has left).
    let local = [LocalLoad {
        in_flight: 2,
        rounds: 2,
        ..local[0]
    }];
    let claimed = claim(&store, 100, &local).await;
    assert_eq!(count(&claimed, narrow), 2, "two rounds");
}

#[tokio::test]
async fn a_claimed_delivery_is_due_again_when_its_lease_ends_and_a_released_one_at_once() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let sub = subscription(&store, 16, None).await;
    due(&store, sub, 2).await;
    let claimed = claim(&store, 10, &[]).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.attempts == 1));
    // In flight: not due before the lease ends, so the next claim does not even walk it.
    let (lease_until, next_at): (OffsetDateTime, OffsetDateTime) =
        sqlx::query_as("SELECT lease_until, next_attempt_at FROM webhook_deliveries WHERE id = $1")
            .bind(claimed[0].id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(next_at, lease_until);
    assert!(lease_until > OffsetDateTime::now_utc() + Duration::from_secs(50));
    assert!(claim(&store, 10, &[]).await.is_empty());

    // Released under a stale token: untouched. Under its own: due now, attempt uncounted.
    let stale = [(claimed[0].id, Uuid::now_v7())];
    assert_eq!(store.release(&stale).await.unwrap(), 0);
    let mine = [(claimed[0].id, claimed[0].lease_token)];
    assert_eq!(store.release(&mine).await.unwrap(), 1);
    let again = claim(&store, 10, &[]).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (claimed[0].id, 1));
    // The first claim's token no longer records anything.
    let done = store.record(&[success(&claimed[0])], 0).await.unwrap();
    assert_eq!(done.lease_lost, vec![claimed[0].id]);
}
