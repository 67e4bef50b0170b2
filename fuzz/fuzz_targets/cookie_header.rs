//! `gateway_ws::cookie::find_cookie` on arbitrary `Cookie` headers: never panics. The first
//! line of the input is the cookie name, the rest the header.
#![no_main]

use gateway_ws::cookie::{find_cookie, unsign};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (name, header) = text.split_once('\n').unwrap_or(("connect.sid", text));
    for name in [name, "connect.sid"] {
        if let Some(value) = find_cookie(header, name) {
            let _ = unsign(&value, &["secret"]);
        }
    }
});
