//! The `stat-aggregator` binary as a process: health, readiness, config errors, SIGTERM.

const BIN: &str = env!("CARGO_BIN_EXE_stat-aggregator");

#[tokio::test]
async fn starts_reports_readiness_and_stops_on_sigterm() {
    test_support::lifecycle::serves_and_drains(BIN, "STAT_AGGREGATOR_", &[]).await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_nats() {
    test_support::lifecycle::not_ready_without_nats(BIN, "STAT_AGGREGATOR_", &[]).await;
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    test_support::lifecycle::rejects_invalid_config(BIN, "STAT_AGGREGATOR_");
}

#[test]
fn the_example_config_file_loads() {
    test_support::lifecycle::accepts_example_config(
        BIN,
        "STAT_AGGREGATOR_",
        "stat-aggregator",
        &[],
    );
}

#[test]
fn a_database_url_that_does_not_parse_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        "STAT_AGGREGATOR_",
        &[("DATABASE__URL", "postgres://u@h:notaport/db")],
        "database.url",
    );
}
