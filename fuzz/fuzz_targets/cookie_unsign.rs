//! `gateway_ws::cookie::unsign` on arbitrary cookie values: never panics, and accepts only a
//! value that `sign` produces for one of the secrets (trailing `=` padding aside). The first
//! line of the input is the secret, the rest the value. Also checks sign → unsign.
#![no_main]

use gateway_ws::cookie::{sign, unsign};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (secret, value) = text.split_once('\n').unwrap_or(("", text));
    let secrets = [secret, "keyboard cat"];
    if let Ok(sid) = unsign(value, &secrets) {
        let canonical = value.trim_end_matches('=');
        assert!(
            secrets
                .iter()
                .any(|s| sign(&sid, s.as_bytes()) == canonical)
        );
    }
    if !value.is_empty() {
        let signed = sign(value, secret.as_bytes());
        assert_eq!(unsign(&signed, &[secret]).as_deref(), Ok(value));
    }
});
