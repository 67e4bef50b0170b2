//! `webhook_dispatcher::pattern::Pattern::parse`: never panics; only the canonical spelling
//! (`Display`) is accepted and it parses back to the same pattern; `any_matches` agrees with
//! `matches`. The input's lines are patterns, the last one is also used as the event type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhook_dispatcher::pattern::{Pattern, any_matches};

fuzz_target!(|text: &str| {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut patterns = Vec::new();
    for raw in &lines {
        if let Ok(pattern) = Pattern::parse(raw) {
            assert_eq!(pattern.to_string(), *raw);
            assert_eq!(Pattern::parse(raw).ok().as_ref(), Some(&pattern));
            patterns.push(pattern);
        }
    }
    let event_type = lines.last().copied().unwrap_or("");
    let expected = patterns.iter().any(|p| p.matches(event_type));
    assert_eq!(any_matches(&patterns, event_type), expected);
});
