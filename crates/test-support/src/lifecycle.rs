//! Process-level checks every service binary must pass: it starts, answers `/healthz`, is
//! ready only while NATS answers, exits 0 on SIGTERM, and refuses invalid configuration.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::{NatsServer, ServiceProcess, eventually, http_client, http_status};

fn base_env(prefix: &str, nats_url: String, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        (format!("{prefix}HTTP__LISTEN"), "127.0.0.1:0".to_owned()),
        (format!("{prefix}NATS__URL"), nats_url),
        (format!("{prefix}SHUTDOWN__GRACE_SECS"), "5".to_owned()),
        (format!("{prefix}LOG__FORMAT"), "json".to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), (*v).to_owned())),
    );
    env
}

fn spawn(bin: &str, env: &[(String, String)]) -> ServiceProcess {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    ServiceProcess::spawn(bin, &[], &env)
}

/// Starts the service against a private NATS, waits for it to be ready, takes NATS away and
/// back (not ready, then ready again), then sends SIGTERM and expects exit code 0.
/// `extra` holds the service's own required settings, without the prefix.
pub async fn serves_and_drains(bin: &str, prefix: &str, extra: &[(&str, &str)]) {
    let mut nats = NatsServer::start();
    let mut service = spawn(bin, &base_env(prefix, nats.url(), extra));
    let client = http_client();

    assert_eq!(
        http_status(&client, &service.url("/healthz")).await,
        Some(200)
    );
    let ready = service.url("/readyz");
    eventually("ready with nats up", || async {
        (http_status(&client, &ready).await == Some(200)).then_some(())
    })
    .await;
    let metrics_url = service.url("/metrics");
    eventually("the nats connection counted in /metrics", || async {
        let text = client
            .get(&metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("nats_connection_events_total{event=\"connected\"}")
            .then_some(())
    })
    .await;

    nats.stop();
    eventually("not ready with nats down", || async {
        (http_status(&client, &ready).await == Some(503)).then_some(())
    })
    .await;
    assert_eq!(
        http_status(&client, &service.url("/healthz")).await,
        Some(200)
    );

    nats.restart();
    eventually("ready again after nats restart", || async {
        (http_status(&client, &ready).await == Some(200)).then_some(())
    })
    .await;

    service.signal("TERM");
    let status = service
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM; logs:\n{}", service.logs()));
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.logs());
}

/// Points the service at a port where nothing listens: alive, not ready, and the readiness
/// body names NATS.
pub async fn not_ready_without_nats(bin: &str, prefix: &str, extra: &[(&str, &str)]) {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut service = spawn(
        bin,
        &base_env(prefix, format!("nats://127.0.0.1:{closed}"), extra),
    );
    let client = http_client();
    assert_eq!(
        http_status(&client, &service.url("/healthz")).await,
        Some(200)
    );
    let resp = client.get(service.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["checks"]["nats"], "not connected", "{body}");

    service.signal("INT");
    let status = service
        .wait_exit(Duration::from_secs(10))
        .expect("exits on Ctrl-C");
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.logs());
}

/// An invalid value exits with code 64 and one stderr line naming the key, before binding.
pub fn rejects_invalid_config(bin: &str, prefix: &str) {
    let out = Command::new(bin)
        .env(format!("{prefix}NATS__URL"), "nats://127.0.0.1:4222")
        .env(format!("{prefix}HTTP__LISTEN"), "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("http.listen"), "{stderr}");

    let out = Command::new(bin).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

/// Starts the binary with `--config deploy/config/<name>.toml` (plus `extra` env): the example
/// file must load, validate and serve.
pub fn accepts_example_config(bin: &str, prefix: &str, name: &str, extra: &[(&str, &str)]) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../deploy/config/{name}.toml"));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = base_env(prefix, format!("nats://127.0.0.1:{closed}"), extra);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut service = ServiceProcess::spawn(bin, &["--config", file.to_str().unwrap()], &env);
    service.signal("TERM");
    let status = service
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.logs());
}

/// A setting that only the service's own preparation can judge (a PEM key, a CORS origin, a
/// network) is refused with exit 64 naming `key`, **before the port is bound**: the test holds
/// the port itself, so a service that bound first would fail with "address in use" (exit 1)
/// instead.
pub fn rejects_prepared_config_before_binding(
    bin: &str,
    prefix: &str,
    bad: &[(&str, &str)],
    key: &str,
) {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut command = Command::new(bin);
    command
        .env(format!("{prefix}NATS__URL"), "nats://127.0.0.1:4222")
        .env(format!("{prefix}HTTP__LISTEN"), format!("127.0.0.1:{port}"))
        .env(format!("{prefix}LOG__FORMAT"), "json");
    for (k, v) in bad {
        command.env(format!("{prefix}{k}"), v);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    let line = stderr
        .lines()
        .rfind(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("no configuration error line:\n{stderr}"));
    assert!(line.contains(key), "{line}");
    drop(held);
}
