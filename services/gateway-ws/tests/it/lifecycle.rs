//! The `gateway-ws` binary as a process: health, readiness, config errors, SIGTERM.

/// A Redis session store keeps the process test independent of a host database.
const EXTRA: &[(&str, &str)] = &[
    ("SESSION__SECRETS", "[s3cret]"),
    ("SESSION__STORE", "redis"),
];

const BIN: &str = env!("CARGO_BIN_EXE_gateway-ws");

#[tokio::test]
async fn starts_reports_readiness_and_stops_on_sigterm() {
    test_support::lifecycle::serves_and_drains(BIN, "GATEWAY_WS_", EXTRA).await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_nats() {
    test_support::lifecycle::not_ready_without_nats(BIN, "GATEWAY_WS_", EXTRA).await;
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    test_support::lifecycle::rejects_invalid_config(BIN, "GATEWAY_WS_");
}

#[test]
fn the_example_config_file_loads() {
    test_support::lifecycle::accepts_example_config(BIN, "GATEWAY_WS_", "gateway-ws", EXTRA);
}

#[test]
fn a_bad_redis_url_exits_64_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        "GATEWAY_WS_",
        &[
            ("SESSION__SECRETS", "[s3cret]"),
            ("SESSION__STORE", "redis"),
            ("SESSION__REDIS_URL", "not a url"),
        ],
        "session.redis_url",
    );
}

#[test]
fn a_bad_database_url_exits_64_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        "GATEWAY_WS_",
        &[
            ("SESSION__SECRETS", "[s3cret]"),
            ("DATABASE__URL", "postgres://u@h:notaport/db"),
        ],
        "database.url",
    );
}

#[test]
fn the_postgres_store_without_a_database_url_exits_64_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        "GATEWAY_WS_",
        &[("SESSION__SECRETS", "[s3cret]")],
        "database.url",
    );
}
