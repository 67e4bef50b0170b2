//! `ServiceContext` against real NATS and PostgreSQL.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use service_runtime::{CommonConfig, ServiceContext};
use sqlx::migrate::Migrator;
use test_support::{NatsServer, TestDatabase, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn becomes_ready_once_nats_answers_and_migrations_ran() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;

    let dir = tempfile::tempdir().unwrap();
    let mut m = std::fs::File::create(dir.path().join("1_widgets.sql")).unwrap();
    writeln!(
        m,
        "CREATE TABLE widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL);"
    )
    .unwrap();
    let migrator: &'static Migrator = Box::leak(Box::new(Migrator::new(dir.path()).await.unwrap()));

    let mut common = CommonConfig::with_port(0);
    common.nats.url = nats.url();
    common.database.url = db.url().to_owned();
    let ctx = ServiceContext::start("test", &common, Some(migrator), CancellationToken::new())
        .await
        .unwrap();

    let states = eventually("all checks pass", || async {
        let (ready, states) = ctx.readiness.evaluate().await;
        ready.then_some(states)
    })
    .await;
    assert_eq!(states["nats"], "ok");
    assert_eq!(states["jetstream"], "ok");
    assert_eq!(states["postgres"], "ok");

    let pool = ctx.db.clone().unwrap();
    sqlx::query("INSERT INTO widgets VALUES (1, 'a')")
        .execute(&pool)
        .await
        .unwrap();
    let mut stream = ctx.jetstream.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.subjects, ["events.>"]);
    pool.close().await;
}

#[tokio::test]
async fn postgres_that_does_not_answer_keeps_the_service_not_ready() {
    let nats = NatsServer::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut common = CommonConfig::with_port(0);
    common.nats.url = nats.url();
    common.database.url = format!("postgres://postgres@127.0.0.1:{closed}/x");
    common.database.acquire_timeout_secs = 1;
    let shutdown = CancellationToken::new();
    let ctx = ServiceContext::start("test", &common, None, shutdown.clone())
        .await
        .unwrap();
    eventually("nats up", || async {
        let (_, states) = ctx.readiness.evaluate().await;
        (states["nats"] == "ok").then_some(())
    })
    .await;
    let (ready, states) = ctx.readiness.evaluate().await;
    assert!(!ready);
    assert_eq!(states["postgres"], "not answering");
    shutdown.cancel();
}
