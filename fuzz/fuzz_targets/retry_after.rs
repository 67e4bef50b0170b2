//! `webhook_dispatcher::worker::parse_retry_after` on arbitrary receiver text: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhook_dispatcher::worker::parse_retry_after;

fuzz_target!(|text: &str| {
    let _ = parse_retry_after(text);
});
