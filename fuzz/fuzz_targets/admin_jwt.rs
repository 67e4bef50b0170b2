//! `/admin` handshake tokens (`gateway_socketio::auth::AdminVerifier::verify`, which reads the
//! JWS header before verifying) for HS256, ES256 and RS256: never panics, and an arbitrary
//! token is always refused.
#![no_main]

use std::sync::LazyLock;

use gateway_socketio::auth::AdminVerifier;
use gateway_socketio::config::{AdminAlgorithm, AdminConfig};
use libfuzzer_sys::fuzz_target;

const ES256_PUB: &str =
    include_str!("../../services/gateway-socketio/tests/fixtures/admin-es256.pub.pem");
const RS256_PUB: &str =
    include_str!("../../services/gateway-socketio/tests/fixtures/admin-rs256.pub.pem");

static VERIFIERS: LazyLock<Vec<AdminVerifier>> = LazyLock::new(|| {
    let hs = AdminConfig {
        secret: "0123456789abcdef0123456789abcdef".to_owned(),
        subscribe_claim: "scope".to_owned(),
        ..AdminConfig::default()
    };
    let es = AdminConfig {
        algorithm: AdminAlgorithm::ES256,
        public_keys: vec![ES256_PUB.to_owned()],
        ..AdminConfig::default()
    };
    let rs = AdminConfig {
        algorithm: AdminAlgorithm::RS256,
        public_keys: vec![RS256_PUB.to_owned()],
        ..AdminConfig::default()
    };
    [hs, es, rs]
        .iter()
        .map(|c| AdminVerifier::new(c).expect("fixture config is valid"))
        .collect()
});

fuzz_target!(|token: &str| {
    for verifier in VERIFIERS.iter() {
        assert!(verifier.verify(token).is_err(), "accepted {token:?}");
    }
});
