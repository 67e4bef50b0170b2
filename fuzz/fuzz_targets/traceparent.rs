//! `events::trace_context::parse_traceparent`: never panics; what it accepts is a valid
//! context that formats back to a well-formed header.
#![no_main]

use events::trace_context::{format_traceparent, parse_traceparent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(cx) = parse_traceparent(text) {
        assert!(cx.is_valid());
        let header = format_traceparent(&cx);
        let again = parse_traceparent(&header).map(|c| (c.trace_id(), c.span_id()));
        assert_eq!(again, Some((cx.trace_id(), cx.span_id())));
    }
});
