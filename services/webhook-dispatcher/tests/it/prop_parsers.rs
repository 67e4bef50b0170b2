//! Property tests for what webhook-dispatcher parses from API callers and receivers:
//! subscription patterns, signing secrets, the `X-Webhook-Signature` header, bearer
//! credentials and destination URLs.
//!
//! Nothing here may panic on arbitrary input; invalid input is an error; a valid pattern's
//! canonical form parses back to the same pattern; what `sign` writes verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use events::EventType;
use events::pattern::{Pattern, any_matches};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;
use webhook_dispatcher::api::auth::Authenticator;
use webhook_dispatcher::config::ApiConfig;
use webhook_dispatcher::signing::{SigningKey, generate_secret, sign, verify_seed_header};
use webhook_dispatcher::worker::{literal_ip, parse_retry_after};

/// Text that stresses parsers: any unicode, text made of the characters these parsers split
/// on (`.`, `*`, `,`, `=`), and long runs of them.
fn hostile_text() -> impl Strategy<Value = String> {
    let alphabet = prop_oneof![
        Just('.'),
        Just('*'),
        Just('>'),
        Just(','),
        Just('='),
        Just('t'),
        Just('v'),
        Just('1'),
        Just('a'),
        Just('_'),
        Just('-'),
        Just(' '),
        Just('\0'),
        Just('é'),
        any::<char>(),
    ];
    prop_oneof![
        4 => any::<String>(),
        4 => vec(alphabet, 0..300).prop_map(|cs| cs.into_iter().collect()),
        1 => ("[a-z.*,=0-9\\x00-]{1,8}", 500usize..8_000).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,24}"
}

/// The one spelling of a pattern that `Pattern::parse` accepts for it.
fn canonical(pattern: &Pattern) -> String {
    match pattern {
        Pattern::All => "*".to_owned(),
        Pattern::Domain(d) => format!("{d}.*"),
        Pattern::Exact(t) => t.clone(),
    }
}

fn valid_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        token().prop_map(|d| format!("{d}.*")),
        (token(), token()).prop_map(|(d, n)| format!("{d}.{n}")),
    ]
}

proptest! {
    #[test]
    fn pattern_parse_never_panics_and_canonical_forms_reparse(raw in hostile_text()) {
        if let Ok(pattern) = Pattern::parse(&raw) {
            let text = canonical(&pattern);
            prop_assert_eq!(&text, &raw, "only canonical spellings are accepted");
            prop_assert_eq!(Pattern::parse(&text).unwrap(), pattern);
        }
    }

    #[test]
    fn pattern_parse_accepts_every_valid_pattern(raw in valid_pattern()) {
        let pattern = Pattern::parse(&raw).unwrap();
        prop_assert_eq!(canonical(&pattern), raw.clone());
        match &pattern {
            Pattern::All => prop_assert_eq!(raw.as_str(), "*"),
            Pattern::Domain(d) => prop_assert_eq!(format!("{d}.*"), raw.clone()),
            // An exact pattern is exactly an event type.
            Pattern::Exact(t) => {
                let event_type = EventType::parse(&raw).unwrap();
                prop_assert_eq!(event_type.as_str(), t.as_str());
            }
        }
    }

    #[test]
    fn pattern_parse_rejects_patterns_that_cannot_match(
        domain in token(),
        name in token(),
        bad in prop_oneof![Just('.'), Just('*'), Just('>'), Just(' '), Just('\0'), Just('é'),
                           Just('\n'), Just('/')],
        where_ in 0..4u8,
    ) {
        let raw = match where_ {
            0 => format!("{domain}{bad}.{name}"),
            1 => format!("{domain}.{name}{bad}"),
            2 => format!("{bad}{domain}.*"),
            _ => format!("*.{name}{bad}"),
        };
        prop_assert!(Pattern::parse(&raw).is_err(), "{:?}", raw);
    }

    #[test]
    fn patterns_match_exactly_their_event_types(
        domain in token(),
        name in token(),
        other_domain in token(),
        other_name in token(),
    ) {
        let event = format!("{domain}.{name}");
        let elsewhere = format!("{other_domain}.{other_name}");
        let all = Pattern::parse("*").unwrap();
        let by_domain = Pattern::parse(&format!("{domain}.*")).unwrap();
        let exact = Pattern::parse(&event).unwrap();
        prop_assert!(all.matches(&event) && all.matches(&elsewhere));
        prop_assert!(by_domain.matches(&event) && exact.matches(&event));
        prop_assert_eq!(by_domain.matches(&elsewhere), other_domain == domain);
        prop_assert_eq!(exact.matches(&elsewhere), elsewhere == event);
    }

    #[test]
    fn any_matches_never_panics_and_agrees_with_parse(
        patterns in vec(prop_oneof![valid_pattern(), hostile_text()], 0..6),
        event_type in prop_oneof![
            (token(), token()).prop_map(|(d, n)| format!("{d}.{n}")),
            hostile_text(),
        ],
    ) {
        let expected = patterns
            .iter()
            .any(|p| Pattern::parse(p).is_ok_and(|p| p.matches(&event_type)));
        let parsed: Vec<Pattern> = patterns.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        prop_assert_eq!(any_matches(&parsed, &event_type), expected);
    }

    #[test]
    fn signing_key_parse_never_panics(secret in prop_oneof![
        hostile_text(),
        hostile_text().prop_map(|s| format!("whsec_{s}")),
        "whsec_[A-Za-z0-9+/=]{0,120}",
    ]) {
        let _ = SigningKey::parse(&secret);
    }

    #[test]
    fn signing_key_parse_accepts_24_to_64_byte_keys_only(key in vec(any::<u8>(), 0..100)) {
        let secret = format!("whsec_{}", STANDARD.encode(&key));
        prop_assert_eq!(SigningKey::parse(&secret).is_ok(), (24..=64).contains(&key.len()));
        prop_assert!(SigningKey::parse(&STANDARD.encode(&key)).is_err(), "prefix required");
    }

    #[test]
    fn generated_secrets_parse(_n in 0..16u8) {
        prop_assert!(SigningKey::parse(&generate_secret()).is_ok());
    }

    #[test]
    fn signed_deliveries_verify_and_tampered_ones_do_not(
        keys in vec(vec(any::<u8>(), 24..=64), 1..4),
        id in "[A-Za-z0-9_-]{1,40}",
        timestamp in 0i64..4_102_444_800,
        body in vec(any::<u8>(), 0..512),
        skew in -300i64..=300,
        flip in any::<prop::sample::Index>(),
    ) {
        let keys: Vec<SigningKey> = keys
            .iter()
            .map(|k| SigningKey::parse(&format!("whsec_{}", STANDARD.encode(k))).unwrap())
            .collect();
        let headers = sign(&keys, &id, timestamp, &body);
        for key in &keys {
            prop_assert!(verify_seed_header(&headers.x_webhook_signature, key, &body, timestamp + skew, 300));
            prop_assert!(!verify_seed_header(&headers.x_webhook_signature, key, &body, timestamp + 301, 300));
            let mut tampered = body.clone();
            if tampered.is_empty() {
                tampered.push(0);
            } else {
                let i = flip.index(tampered.len());
                tampered[i] ^= 0x01;
            }
            prop_assert!(!verify_seed_header(&headers.x_webhook_signature, key, &tampered, timestamp, 300));
        }
        prop_assert_eq!(headers.webhook_signature.split(' ').count(), keys.len());
    }

    #[test]
    fn seed_header_verification_never_panics_on_arbitrary_headers(
        header in prop_oneof![
            hostile_text(),
            ("-?[0-9]{1,12}", vec("[0-9a-fA-F]{0,66}", 0..3)).prop_map(|(t, sigs)| {
                let mut h = format!("t={t}");
                for s in sigs {
                    h.push_str(&format!(",v1={s}"));
                }
                h
            }),
        ],
        body in vec(any::<u8>(), 0..64),
        now in 0i64..4_102_444_800,
    ) {
        let key = SigningKey::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        // A random header carries a valid HMAC only with negligible probability.
        prop_assert!(!verify_seed_header(&header, &key, &body, now, 300));
    }

    #[test]
    fn seed_header_verification_never_panics_on_extreme_timestamps(
        t in prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()],
        now in prop_oneof![Just(i64::MIN), Just(0i64), Just(i64::MAX), any::<i64>()],
        tolerance in prop_oneof![Just(0i64), Just(300i64), Just(i64::MAX), any::<i64>()],
    ) {
        let key = SigningKey::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        let header = format!("t={t},v1=00");
        let body: &[u8] = b"[]";
        prop_assert!(!verify_seed_header(&header, &key, body, now, tolerance));
    }
}

const JWT_SECRET: &str = "an-admin-jwt-secret-of-32-bytes-or-more";

fn authenticator(keys: Vec<String>) -> Authenticator {
    Authenticator::new(&ApiConfig {
        keys,
        jwt_hs256_secret: JWT_SECRET.to_owned(),
        jwt_issuer: String::new(),
        jwt_audience: String::new(),
    })
}

proptest! {
    #[test]
    fn bearer_check_refuses_random_credentials(
        credential in prop_oneof![
            hostile_text(),
            vec("[A-Za-z0-9_=-]{0,60}", 3..=3).prop_map(|p| p.join(".")),
        ],
        keys in vec("[A-Za-z0-9]{16,40}", 0..3),
    ) {
        let auth = authenticator(keys.clone());
        prop_assert_eq!(auth.accepts(&credential), keys.contains(&credential));
    }

    #[test]
    fn bearer_check_accepts_configured_keys_and_signed_tokens(
        keys in vec("[A-Za-z0-9]{16,40}", 1..4),
        pick in any::<prop::sample::Index>(),
        lifetime in 60i64..1_000_000,
    ) {
        let auth = authenticator(keys.clone());
        prop_assert!(auth.accepts(&keys[pick.index(keys.len())]));
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + lifetime;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": exp}),
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap();
        prop_assert!(auth.accepts(&token));
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": exp}),
            &EncodingKey::from_secret(b"some other secret of enough length"),
        )
        .unwrap();
        prop_assert!(!auth.accepts(&forged));
    }

    #[test]
    fn literal_ip_never_panics_and_reads_ip_hosts(
        url in prop_oneof![
            hostile_text(),
            hostile_text().prop_map(|s| format!("http://{s}/")),
            "https?://\\[?[0-9a-f:.]{1,40}\\]?(:[0-9]{1,5})?/[a-z]{0,8}",
        ],
        v4 in any::<[u8; 4]>(),
        v6 in any::<u128>(),
    ) {
        if let Ok(parsed) = reqwest::Url::parse(&url) {
            let _ = literal_ip(&parsed);
        }
        let ip4 = std::net::Ipv4Addr::from(v4);
        let u4 = reqwest::Url::parse(&format!("http://{ip4}:8080/hook")).unwrap();
        prop_assert_eq!(literal_ip(&u4), Some(std::net::IpAddr::V4(ip4)));
        let ip6 = std::net::Ipv6Addr::from(v6);
        let u6 = reqwest::Url::parse(&format!("https://[{ip6}]/hook")).unwrap();
        // The URL parser may rewrite an IPv4-mapped form; the address it names is the same.
        prop_assert_eq!(literal_ip(&u6), Some(std::net::IpAddr::V6(ip6)));
    }
}

proptest! {
    /// A receiver's `Retry-After` is outside input: any text is either understood or `None`.
    #[test]
    fn retry_after_never_panics(value in prop_oneof![
        any::<String>(),
        "[0-9]{1,40}",
        "[ -~]{0,64}",
        "(Mon|Tue|Wed), [0-9]{1,2} (Jan|Oct|Dec) [0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|UT|[+-][0-9]{4})",
    ]) {
        let _ = parse_retry_after(&value);
    }

    #[test]
    fn retry_after_seconds_are_taken_as_given(secs in any::<u64>(), pad in " {0,3}") {
        prop_assert_eq!(
            parse_retry_after(&format!("{pad}{secs}{pad}")),
            Some(std::time::Duration::from_secs(secs))
        );
    }

    #[test]
    fn retry_after_dates_in_the_past_mean_now(
        day in 1u8..=28, year in 1990u16..2020, hour in 0u8..24,
    ) {
        let value = format!("Mon, {day:02} Oct {year} {hour:02}:00:00 GMT");
        // The weekday may not match the date; both readings are fine, neither panics.
        let parsed = parse_retry_after(&value);
        prop_assert!(parsed.is_none() || parsed == Some(std::time::Duration::ZERO), "{value}: {parsed:?}");
    }
}
