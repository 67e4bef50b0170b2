//! `eventctl` as people and scripts use it, against a real nats-server.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use test_support::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_eventctl");

fn eventctl(nats: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--nats-url")
        .arg(nats)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn publish_then_tail_sees_the_event_with_headers() {
    let nats = NatsServer::start();
    let provisioned = eventctl(&nats.url(), &["provision"]);
    assert!(provisioned.status.success(), "{provisioned:?}");

    let mut tail = Command::new(BIN)
        .args([
            "--nats-url",
            &nats.url(),
            "tail",
            "--json",
            "--count",
            "1",
            "events.order.>",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tailer reports on stderr once its subscription is registered with the server.
    let mut stderr = BufReader::new(tail.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("following events.order.>"), "{line}");

    let out = eventctl(
        &nats.url(),
        &[
            "publish",
            "order.status_changed",
            "--entity",
            "101",
            "--data",
            r#"{"status":"paid"}"#,
            "--changed-fields",
            r#"{"status":"paid"}"#,
            "--actor",
            "user:42",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let ack: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ack["subject"], "events.order.status_changed");
    assert_eq!(ack["stream"], "EVENTS");
    assert_eq!(ack["duplicate"], false);

    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success());
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["subject"], "events.order.status_changed");
    assert_eq!(seen["headers"]["Nats-Msg-Id"], ack["id"]);
    assert!(
        seen["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-")
    );
    assert_eq!(seen["payload"]["id"], ack["id"]);
    assert_eq!(seen["payload"]["entity"]["id"], "101");
    assert_eq!(seen["payload"]["data"]["status"], "paid");
    assert_eq!(seen["payload"]["actor"]["id"], "42");

    // Re-publishing the same id is reported as a duplicate.
    let id = ack["id"].as_str().unwrap();
    let again = eventctl(
        &nats.url(),
        &[
            "publish",
            "order.status_changed",
            "--entity",
            "101",
            "--id",
            id,
        ],
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["duplicate"], true);
}

#[test]
fn bad_input_gets_clear_errors_and_distinct_exit_codes() {
    let nats = NatsServer::start();
    let url = nats.url();

    let out = eventctl(
        &url,
        &[
            "publish",
            "order.created",
            "--entity",
            "1",
            "--data",
            "{oops",
        ],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data is not valid JSON"));

    let out = eventctl(&url, &["publish", "order.*", "--entity", "1"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'*'"));

    let out = eventctl(&url, &["publish", "order.created", "--entity", "1.2"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("entity id"));

    let out = eventctl(&url, &["publish", "order.created", "--entitty", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--entitty"));

    // No stream yet: the error says how to get one.
    let out = eventctl(&url, &["publish", "order.created", "--entity", "1"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("eventctl provision"));
}

#[test]
fn unreachable_nats_fails_fast_with_exit_69() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = eventctl(
        &format!("nats://127.0.0.1:{port}"),
        &["publish", "order.created", "--entity", "1"],
    );
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to NATS"));
}

#[test]
fn catalog_json_is_the_published_proto_catalog() {
    let out = Command::new(BIN)
        .args(["catalog", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let published: Value =
        serde_json::from_str(include_str!("../../../proto/catalog.json")).unwrap();
    assert_eq!(
        printed, published,
        "regenerate with `eventctl catalog --json > proto/catalog.json`"
    );
}

/// Answers `cmd.stat.rebuild` once with `reply`, as stat-aggregator's leader would.
async fn answer_rebuild(nats: &NatsServer, reply: &'static str) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client
        .subscribe(events::subject::STAT_REBUILD)
        .await
        .unwrap();
    client.flush().await.unwrap();
    // The server has the subscription once a round trip on this connection is done.
    let _ = client.request("eventctl.test.barrier", "".into()).await;
    tokio::spawn(async move {
        if let Some(message) = sub.next().await
            && let Some(inbox) = message.reply
        {
            client.publish(inbox, reply.into()).await.unwrap();
            client.flush().await.unwrap();
        }
    })
}

#[tokio::test(flavor = "current_thread")]
async fn rebuild_stats_prints_the_reply_and_fails_when_it_is_refused() {
    let nats = NatsServer::start();
    let url = nats.url();
    let out = eventctl(&url, &["rebuild-stats", "--timeout-secs", "5"]);
    assert_eq!(out.status.code(), Some(69), "nobody answers: unavailable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stat-aggregator"));

    let task = answer_rebuild(&nats, r#"{"ok":true,"replayed":3,"seq":3,"version":7}"#).await;
    let run = tokio::task::spawn_blocking({
        let url = url.clone();
        move || eventctl(&url, &["rebuild-stats"])
    });
    let out = run.await.unwrap();
    task.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["version"], 7);

    let task = answer_rebuild(&nats, r#"{"ok":false,"error":"not_leader"}"#).await;
    let run = tokio::task::spawn_blocking(move || eventctl(&url, &["rebuild-stats"]));
    let out = run.await.unwrap();
    task.await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_leader"));
}
