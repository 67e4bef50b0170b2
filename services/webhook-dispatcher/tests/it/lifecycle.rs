//! The `webhook-dispatcher` binary as a process: health, readiness, config errors, SIGTERM.

use test_support::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_webhook-dispatcher");
const PREFIX: &str = "WEBHOOK_DISPATCHER_";

#[tokio::test]
async fn starts_reports_readiness_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    let extra = [
        ("DATABASE__URL", db.url()),
        ("API__KEYS", "[lifecycle-key-0123456789]"),
    ];
    test_support::lifecycle::serves_and_drains(BIN, PREFIX, &extra).await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_nats() {
    let db = TestDatabase::create().await;
    let extra = [
        ("DATABASE__URL", db.url()),
        ("API__KEYS", "[lifecycle-key-0123456789]"),
    ];
    test_support::lifecycle::not_ready_without_nats(BIN, PREFIX, &extra).await;
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    test_support::lifecycle::rejects_invalid_config(BIN, PREFIX);
}

#[test]
fn the_example_config_file_loads() {
    test_support::lifecycle::accepts_example_config(
        BIN,
        "WEBHOOK_DISPATCHER_",
        "webhook-dispatcher",
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("API__KEYS", "[lifecycle-key-0123456789]"),
        ],
    );
}

#[test]
fn a_database_url_that_does_not_parse_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://u@h:notaport/db"),
            ("API__KEYS", "[lifecycle-key-0123456789]"),
        ],
        "database.url",
    );
}

#[test]
fn a_proxy_that_is_not_http_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("API__KEYS", "[lifecycle-key-0123456789]"),
            ("DELIVERY__PROXY", "socks5://proxy.internal:1080"),
        ],
        "delivery.proxy",
    );
}

#[test]
fn an_allowed_network_that_does_not_parse_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("API__KEYS", "[lifecycle-key-0123456789]"),
            ("DELIVERY__ALLOW_NETWORKS", "[10.0.0.0/33]"),
        ],
        "delivery.allow_networks",
    );
}
