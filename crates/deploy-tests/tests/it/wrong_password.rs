//! A service whose password the server does not know keeps trying and is never ready.

use service_runtime::ConfigSource;
use test_support::{eventually, http_client, http_status};

use crate::common::AuthNats;

#[tokio::test]
async fn a_refused_password_keeps_the_service_retrying_and_not_ready() {
    let nats = AuthNats::start();
    let mut env = nats.service_env("STAT_AGGREGATOR_", "stat-aggregator");
    env.retain(|(k, _)| !k.ends_with("NATS__PASSWORD"));
    env.push((
        "STAT_AGGREGATOR_NATS__PASSWORD".to_owned(),
        "a-rotated-away-password".to_owned(),
    ));
    let settings = stat_aggregator::SPEC
        .load(&ConfigSource { file: None, env })
        .unwrap();
    let prepared = stat_aggregator::prepare(&settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(stat_aggregator::run(
        settings,
        prepared,
        listener,
        shutdown.clone(),
    ));

    // Refused more than once: the client retries instead of giving up.
    let refusal = "authentication error - User \"stat-aggregator\"";
    eventually("two refused logins", || async {
        (nats.server.log().matches(refusal).count() >= 2).then_some(())
    })
    .await;
    assert_eq!(http_status(&http_client(), &readyz).await, Some(503));
    assert!(!task.is_finished(), "the service gave up");
    assert!(
        !nats.server.log().contains("a-rotated-away-password"),
        "the server logged the password"
    );
    shutdown.cancel();
}
