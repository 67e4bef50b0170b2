//! The Rust types against the published JSON Schemas in `proto/`: if either side changes
//! without the other, this fails.
#![allow(clippy::unwrap_used)]

use events::surface::{ws_message, ws_route};
use events::token::Token;
use events::{Actor, Audience, Envelope, EventType};
use serde_json::{Value, json};

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../../proto/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&raw).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{instance}\n{errors:#?}");
}

/// Envelopes covering every optional part and every catalogued type.
fn sample_envelopes() -> Vec<Envelope> {
    let mut all = Vec::new();
    for entry in events::catalog::CATALOG {
        let t = EventType::parse(entry.event_type).unwrap();
        all.push(Envelope::new(t, "101", json!({"id": 101})).unwrap());
    }
    let full = Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        "64b2c3d4e5f6789012345678",
        json!({"id": 123, "status": "processing", "total": 99.99}),
    )
    .unwrap()
    .with_changed_fields(json!({"status": "processing"}).as_object().unwrap().clone())
    .with_actor(Actor {
        kind: "user".into(),
        id: Some("42".into()),
    })
    .with_audience(Audience {
        user_ids: vec!["1".into(), "2".into()],
        profile_ids: vec!["p-9".into()],
        channel: Some(Token::new("channel", "ops_feed").unwrap()),
    });
    all.push(full);
    all.push(
        Envelope::new(
            EventType::parse("custom_domain.any_thing").unwrap(),
            "x",
            Value::Null,
        )
        .unwrap()
        .with_actor(Actor {
            kind: "system".into(),
            id: None,
        }),
    );
    all
}

#[test]
fn serialized_envelopes_conform_to_the_envelope_schema() {
    let validator = schema("envelope.schema.json");
    for envelope in sample_envelopes() {
        let value: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        assert_valid(&validator, &value);
    }
}

#[test]
fn the_schema_rejects_what_the_decoder_rejects() {
    let validator = schema("envelope.schema.json");
    let good: Value = serde_json::from_slice(&sample_envelopes()[0].encode()).unwrap();
    let broken = [
        ("type", json!("order.*")),
        ("type", json!("order")),
        ("id", json!("not-a-uuid")),
        ("occurred_at", json!("yesterday")),
        ("entity", json!({"domain": "order", "id": "1.2"})),
        ("entity", json!({"domain": "order"})),
    ];
    for (key, value) in broken {
        let mut bad = good.clone();
        bad[key] = value;
        assert!(
            !validator.is_valid(&bad),
            "schema accepted {key}={}",
            bad[key]
        );
        assert!(
            Envelope::decode(bad.to_string().as_bytes()).is_err(),
            "decoder accepted {key}"
        );
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("data");
    assert!(!validator.is_valid(&missing));
    assert!(Envelope::decode(missing.to_string().as_bytes()).is_err());
}

#[test]
fn ws_messages_conform_to_the_ws_server_schema() {
    let validator = schema("ws-server-message.schema.json");
    let mut routed = 0;
    for envelope in sample_envelopes() {
        if let Some(route) = ws_route(&envelope.event_type) {
            let value: Value = serde_json::from_str(&ws_message(&envelope, route)).unwrap();
            assert_valid(&validator, &value);
            routed += 1;
        }
    }
    assert!(routed >= 15, "{routed}");
    for fixed in [
        json!({"type": "connected", "message": "WebSocket connection established", "userId": 1}),
        json!({"type": "pong"}),
        json!({"type": "error", "message": "Unknown channel: foo"}),
    ] {
        assert_valid(&validator, &fixed);
    }
}

#[test]
fn the_ws_client_schema_accepts_the_seed_messages() {
    let validator = schema("ws-client-message.schema.json");
    for ok in [
        json!({"type": "subscribe", "channel": "order_changes"}),
        json!({"type": "unsubscribe", "channel": "transaction_changes"}),
        json!({"type": "ping"}),
    ] {
        assert_valid(&validator, &ok);
    }
    assert!(!validator.is_valid(&json!({"type": "subscribe", "channel": "deal_changes"})));
    let channels: Vec<&str> = events::surface::WsChannel::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    for c in channels {
        assert_valid(&validator, &json!({"type": "subscribe", "channel": c}));
    }
}

#[test]
fn published_headers_conform_to_the_header_schema() {
    let validator = schema("event-headers.schema.json");
    let envelope = &sample_envelopes()[0];
    let headers = events::publisher::publish_headers(envelope);
    let value: Value = headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v[0].as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_valid(&validator, &value);
}

#[test]
fn stat_payloads_match_their_schemas() {
    use events::stat::{CounterValues, RebuildReply, StatSnapshot, StatUpdate};
    let mut counters = CounterValues::new();
    counters
        .entry("deals_completed".into())
        .or_default()
        .extend([("total".to_owned(), 3), ("last_24h".to_owned(), 1)]);
    counters
        .entry("deals_open".into())
        .or_default()
        .insert("total".into(), -1);
    let snapshot = StatSnapshot {
        version: 7,
        at: "2026-11-21T10:30:00Z".into(),
        time_zone: "Europe/Berlin".into(),
        counters: counters.clone(),
    };
    assert_valid(
        &schema("stat-snapshot.schema.json"),
        &serde_json::to_value(&snapshot).unwrap(),
    );
    let update = StatUpdate {
        version: 8,
        at: "2026-11-21T10:30:00Z".into(),
        counters,
    };
    assert_valid(
        &schema("stat-update.schema.json"),
        &serde_json::to_value(&update).unwrap(),
    );
    let reply = RebuildReply {
        ok: false,
        replayed: 0,
        seq: 0,
        version: 0,
        error: Some("busy".into()),
    };
    assert_valid(
        &schema("stat-rebuild-reply.schema.json"),
        &serde_json::to_value(&reply).unwrap(),
    );
}
