//! `/admin` subscribe payloads (`gateway_socketio::policy::plan`) and grant claims
//! (`Grants::from_claim`) from arbitrary JSON: never panics, and every joined room is a
//! known prefix followed by literal token characters only.
#![no_main]

use gateway_socketio::policy::{Grants, plan};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn safe(room: &str) -> bool {
    let (prefix, rest) = room.split_once(':').unwrap_or(("", ""));
    matches!(prefix, "entity" | "domain" | "channel")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let claimed = Grants::from_claim(Some(&payload));
    for grants in [&Grants::all(), &Grants::default(), &claimed] {
        for check in [true, false] {
            let reply = plan(&payload, grants, check);
            for room in &reply.subscribed {
                assert!(safe(room), "unsafe room {room:?}");
            }
        }
    }
    assert!(
        plan(&payload, &Grants::default(), true)
            .subscribed
            .is_empty()
    );
});
