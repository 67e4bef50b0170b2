//! `gateway_ws::protocol::parse` on arbitrary text frames: never panics, and what it accepts
//! is an object whose `type` is subscribe, unsubscribe or ping.
#![no_main]

use gateway_ws::protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if parse(text).is_ok() {
        let value: serde_json::Value = serde_json::from_str(text).expect("accepted text is JSON");
        let kind = value.get("type").and_then(serde_json::Value::as_str);
        assert!(
            matches!(kind, Some("subscribe" | "unsubscribe" | "ping")),
            "{text:?}"
        );
    }
});
