//! Claiming and recording against a real PostgreSQL: what a claim takes, and that no outcome
//! can hold up the others.

use std::time::{Duration, Instant};

use events::pattern::Pattern;
use sqlx::PgPool;
use test_support::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;
use webhook_dispatcher::store::{
    ClaimOnInsert, Claimed, DeliveryStatus, LocalLoad, NewSubscription, OutboxEvent, Outcome, Store,
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

/// Events of `per_sub[i].1` deliveries for each subscription `per_sub[i].0`, one event per
/// delivery, in that order.
fn batch(per_sub: &[(Uuid, usize)]) -> (Vec<OutboxEvent>, Vec<(Uuid, Uuid, String)>) {
    let mut events = Vec::new();
    let mut deliveries = Vec::new();
    for (sub, n) in per_sub {
        for _ in 0..*n {
            let id = Uuid::now_v7();
            events.push(OutboxEvent {
                id,
                event_type: "deal.created".to_owned(),
                payload: format!("{{\"id\":\"{id}\"}}"),
                traceparent: None,
            });
            deliveries.push((id, *sub, "deal.created".to_owned()));
        }
    }
    (events, deliveries)
}

#[tokio::test]
async fn intake_claims_what_fits_as_it_stores_and_leaves_the_rest_to_the_claim() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let narrow = subscription(&store, 2, None).await;
    let limited = subscription(&store, 16, Some(5)).await;
    let busy = subscription(&store, 4, None).await;
    let deleted = Uuid::now_v7();
    let (events, deliveries) = batch(&[(narrow, 5), (limited, 3), (busy, 3), (deleted, 1)]);
    let token = Uuid::now_v7();
    // busy already has 3 of its 4 (one round here) under way.
    let local = [LocalLoad {
        subscription_id: busy,
        in_flight: 3,
        rate_tokens: None,
        rounds: 1,
    }];
    let claim_on_insert = ClaimOnInsert {
        limit: 10,
        lease_secs: 60,
        token,
        local: &local,
        rounds: 2,
    };
    let (stored, claimed) = store
        .insert_outbox_claiming(&events, &deliveries, &claim_on_insert)
        .await
        .unwrap();
    assert_eq!(stored, 11, "none for a subscription that does not exist");
    let count = |c: &[Claimed], sub: Uuid| c.iter().filter(|d| d.subscription_id == sub).count();
    assert_eq!(
        count(&claimed, narrow),
        4,
        "two rounds of max_concurrency 2"
    );
    assert_eq!(
        count(&claimed, limited),
        0,
        "rate budgets are the claim loop's"
    );
    assert_eq!(count(&claimed, busy), 1, "the room left here");
    for c in &claimed {
        assert_eq!((c.attempts, c.lease_token), (1, token));
        assert_eq!(
            c.payload.as_deref(),
            Some(format!("{{\"id\":\"{}\"}}", c.event_id).as_str())
        );
        assert_eq!(c.secrets.len(), 1);
    }
    // The first ones in the batch's order are the ones claimed.
    let narrow_events: Vec<Uuid> = deliveries
        .iter()
        .filter(|d| d.1 == narrow)
        .map(|d| d.0)
        .take(4)
        .collect();
    let mut claimed_narrow: Vec<Uuid> = claimed
        .iter()
        .filter(|c| c.subscription_id == narrow)
        .map(|c| c.event_id)
        .collect();
    claimed_narrow.sort();
    assert_eq!(claimed_narrow, narrow_events);

    // Leased as a claim leaves them: the claim loop finds only the rest.
    let rest = claim(&store, 100, &[]).await;
    assert_eq!(rest.len(), 6);
    assert!(rest.iter().all(|r| claimed.iter().all(|c| c.id != r.id)));
    // Their outcomes are recorded under the intake's token.
    let done = store
        .record(&claimed.iter().map(success).collect::<Vec<_>>(), 0)
        .await
        .unwrap();
    assert_eq!(done.recorded, 5);

    // No more than `limit` in all, and nothing claimed without `insert_outbox_claiming`.
    let (events, deliveries) = batch(&[(narrow, 3)]);
    let one = ClaimOnInsert {
        limit: 1,
        ..claim_on_insert
    };
    let (stored, claimed) = store
        .insert_outbox_claiming(&events, &deliveries, &one)
        .await
        .unwrap();
    assert_eq!((stored, claimed.len()), (3, 1));
    let (events, deliveries) = batch(&[(narrow, 2)]);
    assert_eq!(store.insert_outbox(&events, &deliveries).await.unwrap(), 2);
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE lease_token IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        leased,
        6 + 1,
        "the claim loop's six and the one claimed at intake"
    );
}

#[tokio::test]
async fn deleting_a_subscription_or_pruning_takes_the_deliveries_attempts_with_them() {
    let db = TestDatabase::create().await;
    let store = store(&db).await;
    let gone = subscription(&store, 16, None).await;
    let kept = subscription(&store, 16, None).await;
    due(&store, gone, 2).await;
    due(&store, kept, 3).await;
    let claimed = claim(&store, 10, &[]).await;
    let done = store
        .record(&claimed.iter().map(success).collect::<Vec<_>>(), 0)
        .await
        .unwrap();
    assert_eq!(done.recorded, 5);
    let rows = |table: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    assert!(store.delete_subscription(gone).await.unwrap());
    assert_eq!(rows("webhook_deliveries").await, 3);
    assert_eq!(rows("webhook_attempts").await, 3);
    assert!(!store.delete_subscription(gone).await.unwrap());

    // Two of kept's three finished deliveries are older than the retention.
    sqlx::query(
        "UPDATE webhook_deliveries SET created_at = now() - interval '40 days' \
         WHERE id IN (SELECT id FROM webhook_deliveries ORDER BY id LIMIT 2)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE webhook_events SET received_at = now() - interval '40 days'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.prune(30).await.unwrap(), 2);
    assert_eq!(rows("webhook_deliveries").await, 1);
    assert_eq!(rows("webhook_attempts").await, 1);
    assert_eq!(
        rows("webhook_events").await,
        1,
        "only the event a delivery still refers to"
    );
}
