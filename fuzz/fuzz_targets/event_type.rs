//! `events::EventType::parse`: never panics; what it accepts prints back unchanged and
//! parses again to the same value.
#![no_main]

use events::EventType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(parsed) = EventType::parse(text) {
        assert_eq!(parsed.as_str(), text);
        assert_eq!(
            EventType::parse(&parsed.to_string()).ok(),
            Some(parsed.clone())
        );
        assert_eq!(
            EventType::new(parsed.domain(), parsed.name()).ok(),
            Some(parsed)
        );
    }
});
