//! The global subscriber as services install it (one test: it is process-wide).

use service_runtime::config::LogFormat;

/// Without an exporter, JSON logs take no spans, so a span is disabled at its callsite and
/// costs nothing (the gateways open one per relayed event); log events are unaffected.
#[test]
fn without_an_exporter_json_logging_disables_spans_but_not_events() {
    let _guard = service_runtime::telemetry::init("telemetry-test", LogFormat::Json, None);
    assert!(tracing::info_span!("relay", subject = "events.a.b").is_disabled());
    assert!(tracing::error_span!("relay").is_disabled());
    if std::env::var_os("RUST_LOG").is_none() {
        assert!(tracing::enabled!(tracing::Level::INFO));
        assert!(!tracing::enabled!(tracing::Level::DEBUG));
    }
}
