//! The `integrations-runner` binary as a process: health, readiness, config errors, SIGTERM.

use test_support::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_integrations-runner");
const PREFIX: &str = "INTEGRATIONS_RUNNER_";

fn required(db_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE__URL", db_url.to_owned()),
        ("API__KEYS", "[lifecycle-key-0123456789]".to_owned()),
        ("CRYPTO__KEYS", crate::common::keys(&[("k1", 1)])),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn starts_reports_readiness_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    let env = required(db.url());
    test_support::lifecycle::serves_and_drains(BIN, PREFIX, &borrowed(&env)).await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_nats() {
    let db = TestDatabase::create().await;
    let env = required(db.url());
    test_support::lifecycle::not_ready_without_nats(BIN, PREFIX, &borrowed(&env)).await;
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    test_support::lifecycle::rejects_invalid_config(BIN, PREFIX);
}

#[test]
fn the_example_config_file_loads() {
    let env = required("postgres://postgres@127.0.0.1:5432/unused");
    test_support::lifecycle::accepts_example_config(
        BIN,
        PREFIX,
        "integrations-runner",
        &borrowed(&env),
    );
}

#[test]
fn a_database_url_that_does_not_parse_is_refused_before_binding() {
    let mut env = required("postgres://u@h:notaport/db");
    env.retain(|(k, _)| *k != "DATABASE__URL");
    env.push(("DATABASE__URL", "postgres://u@h:notaport/db".to_owned()));
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &borrowed(&env),
        "database.url",
    );
}

#[test]
fn a_placeholder_or_missing_encryption_key_is_refused_before_binding() {
    let mut env = required("postgres://postgres@127.0.0.1:5432/unused");
    env.retain(|(k, _)| *k != "CRYPTO__KEYS");
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &borrowed(&env),
        "crypto.keys",
    );
    env.push((
        "CRYPTO__KEYS",
        r#"[{id = "k1", key = "CHANGE-ME-base64-of-32-random-bytes"}]"#.to_owned(),
    ));
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &borrowed(&env),
        "crypto.keys[0].key",
    );
}
