//! Signing secrets (`SigningKey::parse`) and the `X-Webhook-Signature` check
//! (`verify_seed_header`) on arbitrary input: never panics, and a random header does not
//! verify. The first line of the input is the secret, the rest the header.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use webhook_dispatcher::signing::{SigningKey, verify_seed_header};

static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret")
});

fuzz_target!(|text: &str| {
    let (secret, header) = text.split_once('\n').unwrap_or(("", text));
    let _ = SigningKey::parse(secret);
    let now = 1_700_000_000;
    assert!(!verify_seed_header(header, &KEY, b"{}", now, 300));
});
