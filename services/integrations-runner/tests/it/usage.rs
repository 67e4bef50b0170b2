//! Usage accounting against a real PostgreSQL (`src/usage.rs`): a poison row is dropped and
//! counted while the other rows land; a database that cannot be reached, or that refuses
//! connections, loses no count (within `usage.max_pending_rows`) and gets every one, once, when
//! it is back.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use integrations_runner::MIGRATOR;
use integrations_runner::usage::{self, Counts, UsageConfig, UsageRecorder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use test_support::TestDatabase;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PROJECT: &str = "p1";

/// A migrated test database with integrations `ids`, and a pool straight to it.
async fn database(ids: &[&str]) -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    for id in ids {
        sqlx::query(
            "INSERT INTO integrations (id, project_id, provider, name, base_url, auth, endpoints)
             VALUES ($1, $2, 'test', 'test', 'https://api.example.com', '{}', '{}')",
        )
        .bind(id)
        .bind(PROJECT)
        .execute(&pool)
        .await
        .unwrap();
    }
    (db, pool)
}

fn recorder(max_pending_rows: usize) -> UsageRecorder {
    UsageRecorder::new(&UsageConfig {
        flush_ms: 500,
        max_pending_rows,
    })
}

/// What the table holds for `id`, per endpoint.
async fn stored(pool: &PgPool, id: &str) -> BTreeMap<String, Counts> {
    usage::summary(pool, id).await.unwrap().endpoints
}

/// Asserts that the table holds exactly `expected` for `id`.
async fn assert_stored(pool: &PgPool, id: &str, expected: &[(&str, Counts)]) {
    let expected: BTreeMap<String, Counts> = expected
        .iter()
        .map(|(e, c)| ((*e).to_owned(), *c))
        .collect();
    assert_eq!(stored(pool, id).await, expected, "usage of {id}");
}

fn counts(calls: i64, successes: i64, failures: i64) -> Counts {
    Counts {
        calls,
        successes,
        failures,
    }
}

/// The integrations a flush reported as touched, sorted.
fn ids(touched: &HashMap<String, String>) -> Vec<&str> {
    let mut ids: Vec<&str> = touched.keys().map(String::as_str).collect();
    ids.sort_unstable();
    ids
}

/// The process's counter `name` with labels containing `label`. Tests may share the process
/// (`cargo test`): a test reads exact deltas only of counters no other test here increments.
fn counter(name: &str, label: &str) -> f64 {
    let text = service_runtime::ops::metrics_handle().render();
    test_support::metric(&text, name, label)
}

const POISON: &str = "integration_usage_poison_rows_total";
const FAILURES: &str = "integration_usage_flush_failures_total";
const DROPPED: &str = "integration_usage_dropped_total";

#[tokio::test]
async fn a_poison_row_is_dropped_and_counted_while_the_others_land() {
    let (_db, pool) = database(&["a", "b", "doomed"]).await;
    let usage = recorder(100);
    usage.record("a", PROJECT, "getUserTweets", true);
    usage.record("a", PROJECT, "getUserTweets", true);
    usage.record("a", PROJECT, "getUserTweets", false);
    usage.record("a", PROJECT, "healthCheck", true);
    usage.record("b", PROJECT, "getUserTweets", true);
    usage.record("doomed", PROJECT, "getUserTweets", true);
    usage.record("doomed", PROJECT, "healthCheck", false);
    // Deleted between its calls and the flush: its rows now break the foreign key, and with
    // them the whole batch.
    sqlx::query("DELETE FROM integrations WHERE id = 'doomed'")
        .execute(&pool)
        .await
        .unwrap();
    let before = counter(POISON, "");

    let touched = usage.flush(&pool).await;

    assert_eq!(
        ids(&touched),
        ["a", "b"],
        "a deleted integration is not announced"
    );
    assert_eq!(touched["a"], PROJECT);
    assert_stored(
        &pool,
        "a",
        &[
            ("getUserTweets", counts(3, 2, 1)),
            ("healthCheck", counts(1, 1, 0)),
        ],
    )
    .await;
    assert_stored(&pool, "b", &[("getUserTweets", counts(1, 1, 0))]).await;
    let doomed_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM integration_usage WHERE integration_id = 'doomed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(doomed_rows, 0);
    assert_eq!(counter(POISON, "") - before, 2.0, "one per refused row");
    assert!(counter(FAILURES, "kind=\"batch_refused\"") >= 1.0);
    assert!(usage::last_used(&pool, "a").await.unwrap().is_some());
    assert!(usage::last_used(&pool, "b").await.unwrap().is_some());

    // Dropped, not retried: the next flush has nothing to write and counts nothing.
    assert!(usage.flush(&pool).await.is_empty());
    assert_eq!(counter(POISON, "") - before, 2.0);
    assert_eq!(stored(&pool, "a").await["getUserTweets"], counts(3, 2, 1));
}

/// A TCP proxy in front of PostgreSQL that can be cut: while cut it closes every open
/// connection and every new one at once, like a database host that went away.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let state = up.subscribe();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = state.clone();
                if !*state.borrow() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, accept }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn an_unreachable_database_keeps_the_counts_within_the_bound_and_gets_them_once_back() {
    let (db, direct) = database(&["a", "b"]).await;
    let options = PgConnectOptions::from_str(db.url()).unwrap();
    let proxy = Proxy::start((options.get_host().to_owned(), options.get_port())).await;
    let proxied = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.addr.port()));
    let usage = recorder(3);
    usage.record("a", PROJECT, "e1", true);
    assert_eq!(
        ids(&usage.flush(&proxied).await),
        ["a"],
        "through the proxy"
    );

    proxy.cut();
    usage.record("a", PROJECT, "e1", true);
    usage.record("a", PROJECT, "e2", false);
    usage.record("b", PROJECT, "e1", true);
    let unavailable = counter(FAILURES, "kind=\"unavailable\"");
    assert!(usage.flush(&proxied).await.is_empty(), "nothing written");
    assert!(counter(FAILURES, "kind=\"unavailable\"") > unavailable);
    // Kept keys take more counts; new keys past the bound (3) are dropped and counted.
    let dropped = counter(DROPPED, "reason=\"pending_full\"");
    usage.record("a", PROJECT, "e1", true);
    usage.record("a", PROJECT, "e3", true);
    usage.record("b", PROJECT, "e4", true);
    assert_eq!(counter(DROPPED, "reason=\"pending_full\"") - dropped, 2.0);
    assert!(usage.flush(&proxied).await.is_empty(), "still down");
    // Only what landed before the cut.
    assert_stored(&direct, "a", &[("e1", counts(1, 1, 0))]).await;

    proxy.restore();
    assert_eq!(ids(&usage.flush(&proxied).await), ["a", "b"]);
    assert_stored(
        &direct,
        "a",
        &[("e1", counts(3, 3, 0)), ("e2", counts(1, 0, 1))],
    )
    .await;
    assert_stored(&direct, "b", &[("e1", counts(1, 1, 0))]).await;
    // Landed once: the next flush adds nothing.
    assert!(usage.flush(&proxied).await.is_empty());
    assert_eq!(stored(&direct, "a").await["e1"], counts(3, 3, 0));
}

#[tokio::test]
async fn a_database_refusing_connections_loses_no_count() {
    // The server answers, with an error (55000: not accepting connections) that is about the
    // database, not the rows: as in maintenance, a restart or after a password rotation.
    let (db, pool) = database(&["a", "b"]).await;
    let name = db.url().rsplit_once('/').unwrap().1.to_owned();
    let mut admin = sqlx::PgConnection::connect(&test_support::postgres_admin_url())
        .await
        .unwrap();
    let usage = recorder(100);
    usage.record("a", PROJECT, "e1", true);
    usage.record("b", PROJECT, "e1", false);

    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();
    // Not written, and not dropped as poison either: the rows land below.
    assert!(usage.flush(&pool).await.is_empty(), "nothing written");
    assert!(usage.flush(&pool).await.is_empty(), "nor on the next tick");

    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(ids(&usage.flush(&pool).await), ["a", "b"]);
    assert_stored(&pool, "a", &[("e1", counts(1, 1, 0))]).await;
    assert_stored(&pool, "b", &[("e1", counts(1, 0, 1))]).await;
}
