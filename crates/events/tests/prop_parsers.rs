//! Property tests for every parser in `events` that reads outside input: subject tokens,
//! event types, NATS subjects, `traceparent` and the envelope.
//!
//! Each parser must never panic on arbitrary text or bytes (huge, unicode, control characters,
//! NUL), must return an error for invalid input, must accept every generated valid input, and
//! must give back what its serialiser wrote.
#![allow(clippy::unwrap_used)]

use events::subject::{self, Subject};
use events::token::{MAX_TOKEN_LEN, Token, validate_token};
use events::trace_context::{format_traceparent, parse_traceparent};
use events::{Actor, Audience, EntityRef, Envelope, EnvelopeError, EventType};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

/// A valid subject token.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,128}"
}

/// A short valid token, for composite names.
fn short_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}"
}

/// Characters that a token must never hold: separators, wildcards, whitespace, controls, NUL
/// and non-ASCII.
fn forbidden_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('.'),
        Just('*'),
        Just('>'),
        Just(' '),
        Just('\t'),
        Just('\n'),
        Just('\0'),
        Just('\u{7f}'),
        Just('é'),
        Just('\u{202e}'),
        Just('😀'),
        any::<char>().prop_filter("not a token char", |c| {
            !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        }),
    ]
}

/// Text that stresses parsers: any unicode, text built from the characters parsers split on,
/// and long runs of them.
fn hostile_text() -> impl Strategy<Value = String> {
    let alphabet = prop_oneof![
        Just('.'),
        Just('*'),
        Just('>'),
        Just('-'),
        Just('_'),
        Just('0'),
        Just('a'),
        Just('Z'),
        Just('\0'),
        Just('\u{1b}'),
        Just(' '),
        Just('é'),
        Just('\u{fffd}'),
        any::<char>(),
    ];
    prop_oneof![
        4 => any::<String>(),
        4 => vec(alphabet, 0..300).prop_map(|cs| cs.into_iter().collect()),
        1 => ("[a-z.*>\\x00-]{1,8}", 500usize..8_000).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

proptest! {
    #[test]
    fn validate_token_accepts_every_generated_token(value in token()) {
        prop_assert!(validate_token("t", &value).is_ok());
        let token = Token::new("t", value.clone()).unwrap();
        prop_assert_eq!(token.as_str(), value.as_str());
        prop_assert_eq!(token.to_string(), value);
    }

    #[test]
    fn validate_token_never_panics_and_follows_its_contract(value in hostile_text()) {
        let valid = (1..=MAX_TOKEN_LEN).contains(&value.len()) && value.chars().all(allowed);
        prop_assert_eq!(validate_token("t", &value).is_ok(), valid, "{:?}", value);
        prop_assert_eq!(Token::new("t", value).is_ok(), valid);
    }

    #[test]
    fn validate_token_rejects_any_forbidden_char(
        head in "[A-Za-z0-9_-]{0,20}",
        bad in forbidden_char(),
        tail in "[A-Za-z0-9_-]{0,20}",
    ) {
        let value = format!("{head}{bad}{tail}");
        prop_assert!(validate_token("t", &value).is_err(), "{:?}", value);
    }

    #[test]
    fn validate_token_rejects_overlong_tokens(value in "[a-z]{129,400}") {
        prop_assert!(validate_token("t", &value).is_err());
    }

    #[test]
    fn event_type_round_trips(domain in short_token(), name in short_token()) {
        let built = EventType::new(&domain, &name).unwrap();
        let text = format!("{domain}.{name}");
        let parsed = EventType::parse(&text).unwrap();
        prop_assert_eq!(&parsed, &built);
        prop_assert_eq!(parsed.domain(), domain.as_str());
        prop_assert_eq!(parsed.name(), name.as_str());
        prop_assert_eq!(parsed.as_str(), text.as_str());
        prop_assert_eq!(parsed.to_string().parse::<EventType>().unwrap(), built.clone());
        let json = serde_json::to_string(&built).unwrap();
        prop_assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), built);
    }

    #[test]
    fn event_type_parse_never_panics(text in hostile_text()) {
        if let Ok(parsed) = EventType::parse(&text) {
            // Only `domain.name` with two valid tokens is accepted, and nothing is rewritten.
            prop_assert_eq!(parsed.as_str(), text.as_str());
            prop_assert_eq!(text.matches('.').count(), 1);
            prop_assert!(validate_token("d", parsed.domain()).is_ok());
            prop_assert!(validate_token("n", parsed.name()).is_ok());
        }
        // The serde path must agree with `parse` and not panic either.
        let via_serde = serde_json::from_value::<EventType>(Value::String(text.clone()));
        prop_assert_eq!(via_serde.is_ok(), EventType::parse(&text).is_ok());
    }

    #[test]
    fn event_type_rejects_wildcards_and_extra_levels(
        domain in short_token(),
        name in short_token(),
        bad in forbidden_char(),
        in_domain in any::<bool>(),
    ) {
        let text = if in_domain {
            format!("{domain}{bad}.{name}")
        } else {
            format!("{domain}.{name}{bad}")
        };
        prop_assert!(EventType::parse(&text).is_err(), "{:?}", text);
    }

    #[test]
    fn subject_parse_never_panics_and_round_trips_what_it_accepts(text in hostile_text()) {
        if let Ok(parsed) = Subject::parse(&text) {
            prop_assert_eq!(parsed.to_subject_string(), text);
        }
    }

    #[test]
    fn subject_parse_never_panics_on_subject_like_text(
        root in prop_oneof![
            Just("events".to_owned()),
            Just("rt".to_owned()),
            Just("cmd".to_owned()),
            "[a-z]{0,4}"],
        parts in vec(prop_oneof![short_token(), Just(String::new()), Just("*".to_owned()),
                                 Just(">".to_owned()), hostile_text()], 0..6),
    ) {
        let text = std::iter::once(root).chain(parts).collect::<Vec<_>>().join(".");
        if let Ok(parsed) = Subject::parse(&text) {
            prop_assert_eq!(parsed.to_subject_string(), text.clone());
            prop_assert!(!text.contains(['*', '>', ' ', '\0']), "{:?}", text);
        }
    }

    #[test]
    fn built_subjects_parse_back(
        domain in short_token(),
        name in short_token(),
        tokens in vec(short_token(), 2..6),
    ) {
        let event_type = EventType::new(&domain, &name).unwrap();
        let event = subject::event_subject(&event_type);
        prop_assert_eq!(Subject::parse(&event).unwrap(), Subject::Event(event_type));

        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let realtime = subject::realtime_subject(&refs).unwrap();
        prop_assert_eq!(Subject::parse(&realtime).unwrap(), Subject::Realtime(tokens.clone()));
        let command = subject::command_subject(&refs).unwrap();
        prop_assert_eq!(Subject::parse(&command).unwrap(), Subject::Command(tokens.clone()));

        prop_assert_eq!(
            subject::domain_filter(&domain).unwrap(),
            format!("events.{domain}.*")
        );
    }

    #[test]
    fn subject_builders_reject_every_invalid_token(
        good in short_token(),
        bad in hostile_text().prop_filter("not a token", |s| validate_token("t", s).is_err()),
    ) {
        prop_assert!(subject::domain_filter(&bad).is_err());
        prop_assert!(subject::realtime_subject(&[good.as_str(), bad.as_str()]).is_err());
        prop_assert!(subject::command_subject(&[bad.as_str(), good.as_str()]).is_err());
        prop_assert!(EventType::new(&good, &bad).is_err());
        prop_assert!(EventType::new(&bad, &good).is_err());
    }

    #[test]
    fn traceparent_round_trips(
        trace in 1u128..,
        span in 1u64..,
        flags in any::<u8>(),
    ) {
        let cx = SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        let header = format_traceparent(&cx);
        let parsed = parse_traceparent(&header).unwrap();
        prop_assert_eq!(parsed.trace_id(), cx.trace_id());
        prop_assert_eq!(parsed.span_id(), cx.span_id());
        prop_assert_eq!(parsed.trace_flags(), cx.trace_flags());
        prop_assert!(parsed.is_remote());
        prop_assert_eq!(format_traceparent(&parsed), header);
    }

    #[test]
    fn traceparent_never_panics_and_rejects_wrong_shapes(
        text in prop_oneof![
            hostile_text(),
            "[0-9a-f+-]{0,3}-[0-9a-fA-F+-]{0,34}-[0-9a-fA-F+-]{0,18}-[0-9a-fA-F+-]{0,3}",
        ],
    ) {
        if let Some(cx) = parse_traceparent(&text) {
            prop_assert!(cx.is_valid());
            prop_assert!(text.trim().starts_with("00-"), "{:?}", text);
            prop_assert_eq!(text.trim().len(), 55);
        }
    }
}

/// JSON without floats (serde_json's default float parsing is not guaranteed to be exact, which
/// would make a round-trip failure be about serde_json rather than the envelope).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A time with millisecond precision (what the wire carries), within years 0000–9999 (what
/// RFC 3339's four-digit year can say).
fn occurred_at() -> impl Strategy<Value = OffsetDateTime> {
    // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z in Unix milliseconds.
    (-62_167_219_200_000i64..=253_402_300_799_999).prop_map(|ms| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let actor = (any::<String>(), proptest::option::of(any::<String>()))
        .prop_map(|(kind, id)| Actor { kind, id });
    let audience = (
        vec(any::<String>(), 0..4),
        vec(any::<String>(), 0..4),
        proptest::option::of(token()),
    )
        .prop_map(|(user_ids, profile_ids, channel)| Audience {
            user_ids,
            profile_ids,
            channel: channel.map(|c| Token::new("channel", c).unwrap()),
        });
    (
        any::<u128>(),
        (short_token(), short_token(), token()),
        occurred_at(),
        json_value(),
        proptest::option::of(btree_map(any::<String>(), json_value(), 0..4)),
        proptest::option::of(actor),
        proptest::option::of(audience),
    )
        .prop_map(
            |(id, (domain, name, entity_id), occurred_at, data, changed, actor, audience)| {
                Envelope {
                    id: Uuid::from_u128(id),
                    event_type: EventType::new(&domain, &name).unwrap(),
                    occurred_at,
                    entity: EntityRef {
                        domain: Token::new("domain", domain).unwrap(),
                        id: Token::new("entity id", entity_id).unwrap(),
                    },
                    data,
                    changed_fields: changed.map(|m| m.into_iter().collect::<Map<_, _>>()),
                    actor,
                    audience,
                }
            },
        )
}

/// A valid envelope as JSON, to mutate one member at a time.
fn base_envelope_json() -> Value {
    json!({
        "id": "0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a",
        "type": "deal.created",
        "occurred_at": "2026-01-25T10:30:00.000Z",
        "entity": {"domain": "deal", "id": "555"},
        "data": {}
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn envelope_round_trips_through_encode_and_decode(env in envelope()) {
        let bytes = env.encode();
        let back = Envelope::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(events::publisher::decode_message(&bytes).unwrap(), env);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn envelope_decode_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..2048),
            hostile_text().prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(env) = Envelope::decode(&bytes) {
            prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }
    }

    #[test]
    fn envelope_decode_never_panics_when_one_member_is_replaced(
        member in prop_oneof![
            Just("id"), Just("type"), Just("occurred_at"), Just("entity"), Just("data"),
            Just("changed_fields"), Just("actor"), Just("audience"),
        ],
        value in prop_oneof![
            json_value(),
            hostile_text().prop_map(Value::String),
            (json_value(), json_value())
                .prop_map(|(domain, id)| json!({"domain": domain, "id": id})),
            (json_value(), json_value())
                .prop_map(|(kind, id)| json!({"type": kind, "id": id})),
            (json_value(), json_value(), json_value()).prop_map(|(u, p, c)| {
                json!({"user_ids": u, "profile_ids": p, "channel": c})
            }),
        ],
    ) {
        let mut raw = base_envelope_json();
        raw[member] = value;
        if let Ok(env) = Envelope::decode(raw.to_string().as_bytes()) {
            prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env.clone());
            prop_assert_eq!(env.entity.domain.as_str(), env.event_type.domain());
        }
    }

    #[test]
    fn envelope_rejects_a_domain_that_disagrees_with_the_type(
        domain in short_token(),
        other in short_token(),
        name in short_token(),
    ) {
        prop_assume!(domain != other);
        let mut raw = base_envelope_json();
        raw["type"] = json!(format!("{domain}.{name}"));
        raw["entity"] = json!({"domain": other, "id": "1"});
        let decoded = Envelope::decode(raw.to_string().as_bytes());
        prop_assert!(
            matches!(decoded, Err(EnvelopeError::DomainMismatch { .. })),
            "{:?}",
            decoded
        );
    }

    #[test]
    fn envelope_rejects_entity_ids_that_are_not_tokens(
        id in hostile_text().prop_filter("not a token", |s| validate_token("t", s).is_err()),
    ) {
        let mut raw = base_envelope_json();
        raw["entity"] = json!({"domain": "deal", "id": id});
        prop_assert!(Envelope::decode(raw.to_string().as_bytes()).is_err());
    }

    #[test]
    fn envelope_accepts_integer_entity_ids(id in any::<i64>()) {
        let mut raw = base_envelope_json();
        raw["entity"] = json!({"domain": "deal", "id": id});
        let env = Envelope::decode(raw.to_string().as_bytes()).unwrap();
        prop_assert_eq!(env.entity.id.as_str(), id.to_string());
    }
}

#[test]
fn envelope_decode_survives_deep_nesting() {
    for depth in [64, 200, 10_000, 100_000] {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let text = format!(
            r#"{{"id":"0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a","type":"deal.created","occurred_at":"2026-01-25T10:30:00Z","entity":{{"domain":"deal","id":"5"}},"data":{data}}}"#
        );
        // serde_json's recursion limit turns deep nesting into an error, not a stack overflow.
        let decoded = Envelope::decode(text.as_bytes());
        assert_eq!(decoded.is_ok(), depth <= 64, "depth {depth}");
    }
}
