//! `events::subject::Subject::parse`: never panics; what it accepts prints back unchanged and
//! holds no wildcard.
#![no_main]

use events::subject::Subject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(parsed) = Subject::parse(text) {
        assert_eq!(parsed.to_subject_string(), text);
        assert!(!text.contains(['*', '>']), "{text:?}");
    }
});
