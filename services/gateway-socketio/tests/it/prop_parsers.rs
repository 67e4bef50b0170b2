//! Property tests for what gateway-socketio reads from clients: handshake tokens (`/admin` and
//! `/provider`), the grant claim inside them, the `/admin` subscribe payload and widget keys.
//!
//! Nothing here may panic on arbitrary input; a token that is not signed by a configured key
//! is refused; signed tokens and well-formed payloads are accepted.

use std::collections::HashSet;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use events::surface::{plural, singular};
use gateway_socketio::auth::{AdminVerifier, ProviderVerifier};
use gateway_socketio::config::{AdminAlgorithm, AdminConfig, ProviderConfig};
use gateway_socketio::policy::{Grants, plan};
use gateway_socketio::widget::is_key;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

static HS256: LazyLock<AdminVerifier> = LazyLock::new(|| {
    AdminVerifier::new(&AdminConfig {
        secret: SECRET.to_owned(),
        subscribe_claim: "scope".to_owned(),
        ..AdminConfig::default()
    })
    .unwrap()
});

static ES256: LazyLock<AdminVerifier> = LazyLock::new(|| {
    AdminVerifier::new(&AdminConfig {
        algorithm: AdminAlgorithm::ES256,
        public_keys: vec![fixture("admin-es256.pub.pem")],
        ..AdminConfig::default()
    })
    .unwrap()
});

static RS256: LazyLock<AdminVerifier> = LazyLock::new(|| {
    AdminVerifier::new(&AdminConfig {
        algorithm: AdminAlgorithm::RS256,
        public_keys: vec![fixture("admin-rs256.pub.pem")],
        ..AdminConfig::default()
    })
    .unwrap()
});

fn verifiers() -> [&'static AdminVerifier; 3] {
    [&HS256, &ES256, &RS256]
}

/// Text that stresses parsers: any unicode, text made of JWT-ish characters, long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    let alphabet = prop_oneof![
        Just('.'),
        Just('='),
        Just('-'),
        Just('_'),
        Just('e'),
        Just('y'),
        Just('J'),
        Just('0'),
        Just(' '),
        Just('\0'),
        Just('é'),
        Just('{'),
        Just('"'),
        any::<char>(),
    ];
    prop_oneof![
        4 => any::<String>(),
        4 => vec(alphabet, 0..300).prop_map(|cs| cs.into_iter().collect()),
        1 => ("[A-Za-z0-9_.=-]{1,8}", 500usize..8_000).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

/// JSON values of any shape.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        Just(json!("HS256")),
        Just(json!("ES256")),
        Just(json!("none")),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compact-JWS-shaped strings: random segments, encoded random bytes, encoded random JSON
/// headers (with every `alg`, including the configured ones) and forged signatures.
fn token_like() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        json_value(),
        (
            prop_oneof![
                Just("HS256".to_owned()),
                Just("ES256".to_owned()),
                Just("RS256".to_owned()),
                Just("none".to_owned()),
                Just("HS512".to_owned()),
                any::<String>(),
            ],
            proptest::option::of(any::<String>())
        )
            .prop_map(|(alg, kid)| json!({"alg": alg, "typ": "JWT", "kid": kid})),
    ];
    let claims = prop_oneof![
        json_value(),
        any::<i64>().prop_map(|exp| json!({"exp": exp, "sub": "1"})),
        Just(json!({"exp": 4_102_444_800_i64, "sub": "1", "scope": "*"})),
    ];
    prop_oneof![
        hostile_text(),
        vec("[A-Za-z0-9_=-]{0,60}", 0..6).prop_map(|parts| parts.join(".")),
        (
            vec(any::<u8>(), 0..80),
            vec(any::<u8>(), 0..80),
            vec(any::<u8>(), 0..80)
        )
            .prop_map(|(h, c, s)| format!("{}.{}.{}", b64(&h), b64(&c), b64(&s))),
        (header, claims, vec(any::<u8>(), 0..72)).prop_map(|(h, c, s)| {
            format!(
                "{}.{}.{}",
                b64(h.to_string().as_bytes()),
                b64(c.to_string().as_bytes()),
                b64(&s)
            )
        }),
    ]
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn subject() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(Value::from)
    ]
}

proptest! {
    #[test]
    fn admin_verify_refuses_unsigned_and_random_tokens(token in token_like()) {
        for verifier in verifiers() {
            prop_assert!(verifier.verify(&token).is_err(), "{:?}", token);
        }
    }

    #[test]
    fn admin_verify_accepts_tokens_signed_with_the_secret(
        sub in subject(),
        lifetime in 60i64..1_000_000,
        scope in proptest::option::of(json_value()),
    ) {
        let exp = now() + lifetime;
        let mut claims = json!({"sub": sub, "exp": exp});
        if let Some(scope) = &scope {
            claims["scope"] = scope.clone();
        }
        let principal = HS256.verify(&hs256(&claims, SECRET.as_bytes())).unwrap();
        let expected_sub = match &sub {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        prop_assert_eq!(principal.subject, Some(expected_sub));
        prop_assert_eq!(principal.expires_at, exp);
        prop_assert_eq!(&*principal.grants, &Grants::from_claim(scope.as_ref()));
        // The pinned algorithm: the same claims are refused by the ES256 and RS256 gates.
        prop_assert!(ES256.verify(&hs256(&claims, SECRET.as_bytes())).is_err());
        prop_assert!(RS256.verify(&hs256(&claims, SECRET.as_bytes())).is_err());
    }

    #[test]
    fn admin_verify_refuses_other_secrets_and_tampering(
        secret in vec(any::<u8>(), 0..64),
        at in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_=.-]",
    ) {
        let claims = json!({"sub": "7", "exp": now() + 600});
        if secret != SECRET.as_bytes() {
            prop_assert!(HS256.verify(&hs256(&claims, &secret)).is_err());
        }
        let good = hs256(&claims, SECRET.as_bytes());
        let i = at.index(good.len());
        let mut tampered = good.clone();
        tampered.replace_range(i..=i, &replacement);
        // Base64url's last character can carry unused bits; only a changed decoding counts.
        prop_assume!(tampered != good);
        if let Ok(p) = HS256.verify(&tampered) {
            // A change that decodes to the same bytes is not a forgery.
            let same = |a: &str, b: &str| {
                a.split('.')
                    .zip(b.split('.'))
                    .all(|(x, y)| URL_SAFE_NO_PAD.decode(x).ok() == URL_SAFE_NO_PAD.decode(y).ok())
            };
            prop_assert!(same(&tampered, &good), "forged {:?} accepted: {:?}", tampered, p);
        }
    }

    #[test]
    fn admin_verify_refuses_expired_tokens(age in 1i64..1_000_000) {
        let claims = json!({"sub": "7", "exp": now() - age});
        prop_assert!(HS256.verify(&hs256(&claims, SECRET.as_bytes())).is_err());
    }

    #[test]
    fn grants_from_any_claim_never_panic(claim in proptest::option::of(json_value())) {
        let grants = Grants::from_claim(claim.as_ref());
        let _ = plan(&json!({"domains": ["orders"], "channels": ["ops_feed"]}), &grants, true);
    }
}

static PLURALS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let plurals: Vec<String> = events::catalog::known_domains()
        .into_iter()
        .map(|d| plural(d).into_owned())
        .filter(|p| singular(p).is_some())
        .collect();
    assert!(!plurals.is_empty());
    plurals
});

fn known_plural() -> impl Strategy<Value = String> {
    prop::sample::select(PLURALS.clone())
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,40}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
}

/// A payload that names only valid, known targets.
fn valid_payload() -> impl Strategy<Value = Value> {
    (
        btree_map(known_plural(), vec(id(), 0..4), 0..4),
        vec(prop_oneof![known_plural(), Just("event_log".to_owned())], 0..4),
        vec("[A-Za-z0-9_-]{1,30}", 0..4),
    )
        .prop_map(|(entities, domains, channels)| {
            json!({"entities": entities, "domains": domains, "channels": channels})
        })
}

/// Payload-shaped values whose members are anything at all.
fn payload_like() -> impl Strategy<Value = Value> {
    let names = prop_oneof![known_plural().prop_map(Value::String), json_value()];
    prop_oneof![
        json_value(),
        (
            btree_map(
                prop_oneof![known_plural(), any::<String>()],
                prop_oneof![vec(json_value(), 0..4).prop_map(Value::Array), json_value()],
                0..4
            ),
            vec(names.clone(), 0..4),
            vec(names, 0..4),
        )
            .prop_map(|(e, d, c)| json!({"entities": e, "domains": d, "channels": c})),
    ]
}

/// A room name the gateway may join: a known prefix, then only literal token characters.
fn is_safe_room(room: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if let Some(rest) = room.strip_prefix("entity:") {
        return rest
            .split_once(':')
            .is_some_and(|(p, id)| singular(p).is_some() && token(id));
    }
    if let Some(d) = room.strip_prefix("domain:") {
        return singular(d).is_some() || d == "event_log";
    }
    room.strip_prefix("channel:").is_some_and(token)
}

proptest! {
    #[test]
    fn plan_never_panics_and_only_joins_safe_rooms(
        payload in payload_like(),
        claim in proptest::option::of(json_value()),
        check in any::<bool>(),
    ) {
        let grants = Grants::from_claim(claim.as_ref());
        for grants in [&grants, &Grants::all(), &Grants::default()] {
            let reply = plan(&payload, grants, check);
            let unique: HashSet<&String> = reply.subscribed.iter().collect();
            prop_assert_eq!(unique.len(), reply.subscribed.len(), "duplicates");
            for room in &reply.subscribed {
                prop_assert!(is_safe_room(room), "unsafe room {:?} from {}", room, payload);
            }
        }
        // Nothing granted: nothing joined.
        prop_assert!(plan(&payload, &Grants::default(), true).subscribed.is_empty());
    }

    #[test]
    fn plan_never_panics_on_payloads_read_from_any_text(text in hostile_text()) {
        if let Ok(payload) = serde_json::from_str::<Value>(&text) {
            let _ = plan(&payload, &Grants::all(), true);
        }
    }

    #[test]
    fn plan_accepts_every_valid_payload(payload in valid_payload()) {
        let reply = plan(&payload, &Grants::all(), true);
        prop_assert!(reply.refused.is_empty(), "{:?}", reply.refused);
        let mut expected = HashSet::new();
        for (plural, ids) in payload["entities"].as_object().unwrap() {
            for id in ids.as_array().unwrap() {
                let id = id.as_str().map_or_else(|| id.to_string(), str::to_owned);
                expected.insert(format!("entity:{plural}:{id}"));
            }
        }
        for d in payload["domains"].as_array().unwrap() {
            expected.insert(format!("domain:{}", d.as_str().unwrap()));
        }
        for c in payload["channels"].as_array().unwrap() {
            expected.insert(format!("channel:{}", c.as_str().unwrap()));
        }
        let got: HashSet<String> = reply.subscribed.iter().cloned().collect();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(plan(&payload, &Grants::all(), false), reply);
    }

    #[test]
    fn plan_follows_the_grant_claim(
        payload in valid_payload(),
        granted in vec(known_plural(), 0..4),
        channels in vec("[A-Za-z0-9_-]{1,30}", 0..3),
        as_array in any::<bool>(),
    ) {
        let items: Vec<String> = granted
            .iter()
            .cloned()
            .chain(channels.iter().map(|c| format!("channel:{c}")))
            .collect();
        let claim = if as_array { json!(items) } else { json!(items.join(" ")) };
        let grants = Grants::from_claim(Some(&claim));
        let reply = plan(&payload, &grants, true);
        for room in &reply.subscribed {
            let allowed = match room.split_once(':') {
                Some(("entity", rest)) => granted.iter().any(|p| rest.starts_with(&format!("{p}:"))),
                Some(("domain", d)) => granted.iter().any(|p| p == d),
                Some(("channel", c)) => channels.iter().any(|g| g == c),
                _ => false,
            };
            prop_assert!(allowed, "{} joined with grants {}", room, claim);
        }
        // Unsubscribing ignores grants: everything valid is left.
        prop_assert!(plan(&payload, &grants, false).refused.is_empty());
    }

    #[test]
    fn widget_key_check_follows_its_contract(key in hostile_text()) {
        let valid = (4..=128).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        prop_assert_eq!(is_key(&key), valid);
    }

    #[test]
    fn widget_keys_as_generated_are_accepted(body in "[A-Za-z0-9]{32}") {
        let key = format!("wk_{body}");
        prop_assert!(is_key(&key));
    }
}

/// A provider verifier whose JWKS endpoint refuses connections, so any token that gets past
/// the header checks ends in a refusal too.
fn provider() -> ProviderVerifier {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    ProviderVerifier::new(&ProviderConfig {
        issuer: format!("http://127.0.0.1:{port}/oidc"),
        jwks_timeout_secs: 1,
        ..ProviderConfig::default()
    })
    .unwrap()
    .expect("an issuer is configured")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn provider_verify_refuses_random_tokens(token in token_like()) {
        static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        });
        static VERIFIER: LazyLock<ProviderVerifier> = LazyLock::new(provider);
        let verdict = RUNTIME.block_on(VERIFIER.verify(&token));
        prop_assert!(verdict.is_err(), "{:?}", token);
    }
}
