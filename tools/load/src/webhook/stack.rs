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
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
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
        let settings = webhook_dispatcher::SPEC
            .load::<webhook_dispatcher::Config>(&ConfigSource { file: None, env })
            .unwrap_or_else(|e| panic!("dispatcher settings: {e}"));
        let prepared = webhook_dispatcher::prepare(&settings)
            .unwrap_or_else(|e| panic!("dispatcher settings: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dispatcher = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(webhook_dispatcher::run(
            settings,
            prepared,
            listener,
            shutdown.clone(),
        ));
        let client = http_client();
        let ready = format!("http://{dispatcher}/readyz");
        eventually("dispatcher ready", || async {
            (http_status(&client, &ready).await == Some(200)).then_some(())
        })
        .await;

        for i in 0..options.subscriptions {
            let mut body = json!({
                "url": receiver.url(),
                "event_types": ["order.updated"],
                "description": format!("load-webhook {i}"),
            });
            if let Some(c) = options.subscription_concurrency {
                body["max_concurrency"] = json!(c);
            }
            let resp = client
                .post(format!("http://{dispatcher}/crm/webhook-subscriptions"))
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
            shutdown,
            task,
        }
    }

    /// The test database's name.
    pub fn database_name(&self) -> String {
        database_name(self.db.url())
    }

    /// `(succeeded, all)` deliveries.
    pub async fn delivery_counts(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM webhook_deliveries",
        )
        .fetch_one(&self.observer)
        .await
        .unwrap_or((0, 0))
    }

    /// Rows in `webhook_attempts`.
    pub async fn attempt_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM webhook_attempts")
            .fetch_one(&self.observer)
            .await
            .unwrap_or(-1)
    }

    /// Deliveries by status.
    pub async fn status_counts(&self) -> Value {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM webhook_deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.observer)
        .await
        .unwrap_or_default();
        Value::Object(rows.into_iter().map(|(s, n)| (s, json!(n))).collect())
    }

    /// Stops the dispatcher (its database connections close, flushing their statistics).
    pub async fn stop_dispatcher(&mut self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(15), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => eprintln!("dispatcher failed: {err}"),
            Ok(Err(err)) => eprintln!("dispatcher task: {err}"),
            Err(_) => eprintln!("dispatcher did not stop within 15 s"),
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

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}
