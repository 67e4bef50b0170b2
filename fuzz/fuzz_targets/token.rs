//! `events::token::validate_token`: never panics; accepts exactly `[A-Za-z0-9_-]{1,128}`.
#![no_main]

use events::token::{MAX_TOKEN_LEN, Token, validate_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let valid = (1..=MAX_TOKEN_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    assert_eq!(validate_token("fuzz", text).is_ok(), valid, "{text:?}");
    if let Ok(token) = Token::new("fuzz", text) {
        assert_eq!(token.as_str(), text);
    }
});
