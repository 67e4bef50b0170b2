//! The `gateway-socketio` binary as a process: health, readiness, config errors, SIGTERM.

use test_support::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-socketio");
const PREFIX: &str = "GATEWAY_SOCKETIO_";
const SECRET: &str = "lifecycle-secret-0123456789abcdef";

#[tokio::test]
async fn starts_reports_readiness_and_stops_on_sigterm() {
    let db = TestDatabase::create().await;
    let extra = [("DATABASE__URL", db.url()), ("ADMIN__SECRET", SECRET)];
    test_support::lifecycle::serves_and_drains(BIN, PREFIX, &extra).await;
}

#[tokio::test]
async fn is_alive_but_not_ready_without_nats() {
    let db = TestDatabase::create().await;
    let extra = [("DATABASE__URL", db.url()), ("ADMIN__SECRET", SECRET)];
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
        PREFIX,
        "gateway-socketio",
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("ADMIN__SECRET", SECRET),
        ],
    );
}

#[test]
fn a_public_key_that_is_not_pem_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("ADMIN__ALGORITHM", "RS256"),
            ("ADMIN__PUBLIC_KEYS", "[not a pem]"),
        ],
        "admin.public_keys",
    );
}

#[test]
fn a_cors_origin_that_is_not_a_header_value_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/unused"),
            ("ADMIN__SECRET", SECRET),
            // The environment parser turns `\n` into a newline, which no header value holds.
            ("SOCKETIO__CORS_ORIGINS", r#"["https://a.example\n"]"#),
        ],
        "socketio.cors_origins",
    );
}

#[test]
fn a_database_url_that_does_not_parse_is_refused_before_binding() {
    test_support::lifecycle::rejects_prepared_config_before_binding(
        BIN,
        PREFIX,
        &[
            ("DATABASE__URL", "postgres://u@h:notaport/db"),
            ("ADMIN__SECRET", SECRET),
        ],
        "database.url",
    );
}
