//! Everything one scenario runs against: a private nats-server, a fresh PostgreSQL database,
//! the dispatcher in this process (as its e2e tests run it), the receiver, and subscriptions
//! created through the dispatcher's API.

use std::time::Duration;

use serde_json::{Value, json};
use service_runtime::{ConfigSource, ServiceError};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use test_support::{NatsServer, TestDatabase, eventually, http_client, http_status};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::receiver::Receiver;

const API_KEY: &str = "load-webhook-api-key-0123456789";

/// How the dispatcher and its subscriptions are configured.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `DELIVERY__CONCURRENCY`.
    pub concurrency: usize,
    /// Further `KEY=VALUE` settings, without the `WEBHOOK_DISPATCHER_` prefix.
    pub settings: Vec<(String, String)>,
    /// Subscriptions to `order.updated`, all pointing at the receiver.
    pub subscriptions: usize,
    /// `max_concurrency` of each subscription; `None` keeps the dispatcher's default.
    pub subscription_concurrency: Option<i32>,
    /// Sample `pg_stat_activity` this often during the measurement.
    pub sample_activity: Option<Duration>,
    /// Query parameters appended to the dispatcher's database URL.
    pub db_url_params: Option<String>,
    /// Run ANALYZE this often during the measurement.
    pub analyze_every: Option<Duration>,
    /// Finished deliveries (each with its event and one attempt) written before the
    /// measurement, spread over the last 30 days, then ANALYZE (as autovacuum would have).
    pub history_rows: u64,
    /// Run this webhook-dispatcher binary as a separate process instead of in this process.
    pub dispatcher_binary: Option<std::path::PathBuf>,
    /// Log every statement of the test database (`log_min_duration_statement = 0`, set on
    /// that database only) and read the durations back from this server log file.
    pub statement_log: Option<std::path::PathBuf>,
}

impl StackOptions {
    /// The settings passed to the dispatcher, prefix stripped (for the report).
    pub fn dispatcher_settings(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "DELIVERY__ALLOW_NETWORKS".to_owned(),
                "[127.0.0.1/32]".to_owned(),
            ),
            (
                "DELIVERY__CONCURRENCY".to_owned(),
                self.concurrency.to_string(),
            ),
            ("LOG__FORMAT".to_owned(), "json".to_owned()),
            ("SHUTDOWN__GRACE_SECS".to_owned(), "5".to_owned()),
        ];
        env.extend(self.settings.iter().cloned());
        env
    }
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDatabase,
    /// The tool's own connections (application_name `load-webhook`).
    pub observer: PgPool,
    pub receiver: Receiver,
    /// The signing secret of every subscription, to check the receiver's signatures with.
    pub secret: String,
    /// When the measured part began (unix seconds): rows from before it are history.
    pub since: f64,
    dispatcher: Dispatcher,
}

/// Where the dispatcher runs.
#[derive(Debug)]
enum Dispatcher {
    /// In this process, as its end-to-end tests run it.
    InProcess {
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), ServiceError>>,
    },
    /// The release binary in its own process, as it is deployed.
    Process(Option<std::process::Child>),
}

impl Stack {
    pub async fn start(options: &StackOptions) -> Self {
        let nats = NatsServer::start();
        let db = TestDatabase::create().await;
        if options.statement_log.is_some() {
            let name = database_name(db.url());
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
                .await
                .unwrap();
            for setting in [
                "log_min_duration_statement = 0",
                "log_parameter_max_length = 0",
            ] {
                sqlx::query(&format!("ALTER DATABASE {name} SET {setting}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let receiver = Receiver::start();

        let mut env: Vec<(String, String)> = vec![
            ("NATS__URL".to_owned(), nats.url()),
            (
                "DATABASE__URL".to_owned(),
                match &options.db_url_params {
                    Some(params) => format!("{}?{params}", db.url()),
                    None => db.url().to_owned(),
                },
            ),
            ("API__KEYS".to_owned(), format!("[{API_KEY}]")),
        ];
        env.extend(options.dispatcher_settings());
        let env = env
            .into_iter()
            .map(|(k, v)| (format!("WEBHOOK_DISPATCHER_{k}"), v))
            .collect();
        let (dispatcher, addr) = match &options.dispatcher_binary {
            None => start_in_process(env).await,
            Some(binary) => start_process(binary, env),
        };
        let client = http_client();
        let ready = format!("http://{addr}/readyz");
        eventually("dispatcher ready", || async {
            (http_status(&client, &ready).await == Some(200)).then_some(())
        })
        .await;

        let secret = webhook_dispatcher::signing::generate_secret();
        for i in 0..options.subscriptions {
            let mut body = json!({
                "url": receiver.url(),
                "secret": secret,
                "event_types": ["order.updated"],
                "description": format!("load-webhook {i}"),
            });
            if let Some(c) = options.subscription_concurrency {
                body["max_concurrency"] = json!(c);
            }
            let resp = client
                .post(format!("http://{addr}/crm/webhook-subscriptions"))
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let created: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(status, 201, "creating a subscription: {created}");
            assert!(created["id"].is_string(), "{created}");
        }

        if options.history_rows > 0 {
            write_history(db.url(), options.history_rows).await;
        }

        let observer = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(
                db.url()
                    .parse::<PgConnectOptions>()
                    .unwrap()
                    .application_name("load-webhook"),
            )
            .await
            .unwrap();
        Self {
            nats,
            db,
            observer,
            receiver,
            secret,
            since: super::unix_secs(std::time::SystemTime::now()),
            dispatcher,
        }
    }

    /// The test database's name.
    pub fn database_name(&self) -> String {
        database_name(self.db.url())
    }

    /// Deliveries still pending. Read through the partial index on pending deliveries, so
    /// polling it costs the same whatever the history (a `count(*)` of the whole table,
    /// polled every 100 ms, was the tool's own sequential scan inside the timed window).
    pub async fn pending_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.observer)
            .await
            .unwrap_or(-1)
    }

    /// `(succeeded, all)` deliveries of this run (history excluded).
    pub async fn delivery_counts(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM webhook_deliveries \
             WHERE created_at >= to_timestamp($1)",
        )
        .bind(self.since)
        .fetch_one(&self.observer)
        .await
        .unwrap_or((0, 0))
    }

    /// When the last delivery of this run was inserted (unix seconds).
    pub async fn last_insert_unix(&self) -> Option<f64> {
        sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(created_at))::float8 FROM webhook_deliveries \
             WHERE created_at >= to_timestamp($1)",
        )
        .bind(self.since)
        .fetch_one(&self.observer)
        .await
        .ok()
        .flatten()
    }

    /// Attempts of this run.
    pub async fn attempt_count(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM webhook_attempts WHERE started_at >= to_timestamp($1)",
        )
        .bind(self.since)
        .fetch_one(&self.observer)
        .await
        .unwrap_or(-1)
    }

    /// Seconds from this run's first attempt's start to its last attempt's end, by the
    /// attempt rows' own timestamps (the dispatcher's clock, not this tool's polling).
    pub async fn attempt_span_secs(&self) -> Option<f64> {
        sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(started_at + duration_ms * interval '1 millisecond') \
                    - min(started_at))::float8 FROM webhook_attempts WHERE started_at >= to_timestamp($1)",
        )
        .bind(self.since)
        .fetch_one(&self.observer)
        .await
        .ok()
        .flatten()
    }

    /// This run's deliveries by status.
    pub async fn status_counts(&self) -> Value {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM webhook_deliveries WHERE created_at >= to_timestamp($1) \
             GROUP BY status ORDER BY status",
        )
        .bind(self.since)
        .fetch_all(&self.observer)
        .await
        .unwrap_or_default();
        Value::Object(rows.into_iter().map(|(s, n)| (s, json!(n))).collect())
    }

    /// Stops the dispatcher (its database connections close, flushing their statistics).
    pub async fn stop_dispatcher(&mut self) {
        match &mut self.dispatcher {
            Dispatcher::InProcess { shutdown, task } => {
                shutdown.cancel();
                match tokio::time::timeout(Duration::from_secs(15), task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(err))) => eprintln!("dispatcher failed: {err}"),
                    Ok(Err(err)) => eprintln!("dispatcher task: {err}"),
                    Err(_) => eprintln!("dispatcher did not stop within 15 s"),
                }
            }
            Dispatcher::Process(child) => {
                if let Some(mut child) = child.take() {
                    stop_child(&mut child).await;
                }
            }
        }
        // Exiting backends report their last statistics.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    /// Stops everything; the database is dropped and nats-server killed.
    pub async fn close(self) {
        self.receiver.stop();
        self.observer.close().await;
        drop(self.db);
        drop(self.nats);
    }
}

/// Writes `rows` succeeded deliveries of the existing subscriptions (round robin), each with
/// its event and one attempt, created over the last 29 days (inside the 30-day retention), in chunks of 100,000; then
/// ANALYZE.
async fn write_history(url: &str, rows: u64) {
    let started = std::time::Instant::now();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let chunk = 100_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = chunk.min(rows - done);
        sqlx::query(
            "WITH subs AS (SELECT array_agg(id ORDER BY id) AS ids FROM webhook_subscriptions), \
             g AS (SELECT i, gen_random_uuid() AS event_id, gen_random_uuid() AS delivery_id, \
                          now() - (random() * interval '29 days') AS at \
                   FROM generate_series(1, $1::bigint) AS i), \
             ev AS (INSERT INTO webhook_events (id, event_type, payload, received_at) \
                    SELECT event_id, 'order.updated', '{\"history\":true}', at FROM g), \
             de AS (INSERT INTO webhook_deliveries (id, event_id, subscription_id, event_type, status, \
                      attempts, next_attempt_at, created_at, completed_at) \
                    SELECT delivery_id, event_id, subs.ids[1 + (i % cardinality(subs.ids))], 'order.updated', \
                           'succeeded', 1, at, at, at + interval '20 milliseconds' FROM g, subs) \
             INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, response_status) \
             SELECT delivery_id, 1, at, 20, 200 FROM g",
        )
        .bind(n as i64)
        .execute(&mut conn)
        .await
        .unwrap();
        done += n;
    }
    for table in ["webhook_events", "webhook_deliveries", "webhook_attempts"] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    eprintln!(
        "history: {rows} finished deliveries, events and attempts written and analyzed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn start_in_process(env: Vec<(String, String)>) -> (Dispatcher, std::net::SocketAddr) {
    let settings = webhook_dispatcher::SPEC
        .load::<webhook_dispatcher::Config>(&ConfigSource { file: None, env })
        .unwrap_or_else(|e| panic!("dispatcher settings: {e}"));
    let prepared = webhook_dispatcher::prepare(&settings)
        .unwrap_or_else(|e| panic!("dispatcher settings: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(webhook_dispatcher::run(
        settings,
        prepared,
        listener,
        shutdown.clone(),
    ));
    (Dispatcher::InProcess { shutdown, task }, addr)
}

/// Starts `binary` with `env` on a free port (its logs go to this process's stderr).
fn start_process(
    binary: &std::path::Path,
    env: Vec<(String, String)>,
) -> (Dispatcher, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let child = std::process::Command::new(binary)
        .envs(env)
        .env("WEBHOOK_DISPATCHER_HTTP__LISTEN", addr.to_string())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    (Dispatcher::Process(Some(child)), addr)
}

/// SIGTERM (graceful: in-flight attempts recorded), then SIGKILL after 15 s.
async fn stop_child(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("dispatcher did not stop within 15 s; killed");
    let _ = child.kill();
    let _ = child.wait();
}

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}
