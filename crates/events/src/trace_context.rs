//! W3C Trace Context (`traceparent`) on NATS messages.
//!
//! Every published event carries a `traceparent` header. Inside a traced span the header names
//! that span, so the consumer's work joins the publisher's trace; outside one, a fresh root is
//! generated so the header is still well-formed and consumers can correlate their logs.

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header carrying the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying W3C vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// Formats a span context as `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The `traceparent` for a message published now: the current span's context when it is
/// valid, otherwise a new random root (sampled flag off).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        return format_traceparent(sc);
    }
    let trace_id = TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes());
    let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
    format_traceparent(&SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::default(),
        false,
        TraceState::default(),
    ))
}

/// Parses a `traceparent` value (version 00). Returns `None` for anything malformed (the spec
/// allows lowercase hex digits only) or for the all-zero ids the spec declares invalid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || version != "00"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || ![trace, span, flags]
            .iter()
            .all(|p| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// The OpenTelemetry context a consumer should use as its span's parent for a received
/// message (`span.set_parent(parent_context(headers))`).
pub fn parent_context(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    headers
        .and_then(|h| h.get(TRACEPARENT))
        .and_then(|v| parse_traceparent(v.as_str()))
        .map(|sc| opentelemetry::Context::new().with_remote_span_context(sc))
        .unwrap_or_default()
}

/// Makes `span` a child of the span a `traceparent` value names (a message header, or one
/// stored with deferred work). A disabled span (no layer wants it) returns at once, without
/// parsing; a missing or malformed value leaves the span's parent as it was. Call it before the
/// span is first entered: from then on its OpenTelemetry parent is fixed.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        // Without an OpenTelemetry layer (no exporter configured) there is nothing to set.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// [`set_remote_parent`] with the `traceparent` header of a received message.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if span.is_disabled() {
        return;
    }
    let value = headers.and_then(|h| h.get(TRACEPARENT));
    set_remote_parent(span, value.map(|v| v.as_str()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_traceparent_is_well_formed() {
        let tp = current_traceparent();
        let sc = parse_traceparent(&tp).expect("parses");
        assert!(sc.is_valid());
        assert_eq!(tp.len(), 55);
        assert_eq!(format_traceparent(&sc), tp);
    }

    #[test]
    fn parses_the_spec_example_and_rejects_garbage() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.trace_flags().is_sampled());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
            // Uppercase hex and a sign are not the spec's lowercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
