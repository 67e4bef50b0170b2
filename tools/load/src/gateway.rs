//! A release gateway binary under test: started as a real process (as it runs in production),
//! waited for until ready, and asked for its metrics.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use test_support::ServiceProcess;

/// Starts `bin` with `env` and then `extra` (later entries win), and waits until `/readyz`
/// answers 200.
pub async fn start(
    bin: &Path,
    env: Vec<(String, String)>,
    extra: &[(String, String)],
) -> anyhow::Result<ServiceProcess> {
    if !bin.exists() {
        let package = bin
            .file_name()
            .map_or_else(|| "<gateway>".into(), |n| n.to_string_lossy());
        bail!(
            "{} not found: build it with `cargo build --release -p {package} -p load` or pass \
             --gateway-bin",
            bin.display()
        );
    }
    let bin = bin.to_string_lossy().into_owned();
    let mut env = env;
    env.extend(extra.iter().cloned());
    let service = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        ServiceProcess::spawn(&bin, &[], &env)
    })
    .await
    .context("the gateway did not start (see the panic above)")?;
    wait_ready(&service.url("/readyz"), Duration::from_secs(60), || {
        Some(service.logs())
    })
    .await?;
    Ok(service)
}

/// Polls `url` until it answers 200, for at most `limit`; the error carries `logs()`.
pub async fn wait_ready(
    url: &str,
    limit: Duration,
    logs: impl Fn() -> Option<String>,
) -> anyhow::Result<()> {
    let client = test_support::http_client();
    let deadline = tokio::time::Instant::now() + limit;
    while test_support::http_status(&client, url).await != Some(200) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{url} not ready in {} s{}",
                limit.as_secs(),
                logs().map(|l| format!("; logs:\n{l}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The Prometheus text at `url` (empty when it cannot be read).
pub async fn metrics(url: &str) -> String {
    match test_support::http_client().get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}
