//! The event envelope: one shape for every domain event on every surface.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::EventType;
use crate::token::{Token, TokenError};

/// A domain event as published on `events.<domain>.<event_type>`.
///
/// Unknown fields are ignored on input, so publishers may add fields before consumers know them.
/// Decode with [`Envelope::decode`], which also checks that `entity.domain` agrees with `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7; the idempotency key everywhere (JetStream `Nats-Msg-Id`, webhook `webhook-id`).
    pub id: Uuid,
    /// `domain.event_type`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened, UTC. Serialised as RFC 3339 with milliseconds.
    #[serde(with = "timestamp")]
    pub occurred_at: OffsetDateTime,
    /// The entity the event concerns.
    pub entity: EntityRef,
    /// The entity's state or the event's payload.
    pub data: Value,
    /// Fields that changed, with their new values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_fields: Option<Map<String, Value>>,
    /// Who caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Whom the event targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
}

/// The entity an event concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRef {
    /// The entity's domain; equal to the event type's domain.
    #[serde(deserialize_with = "domain_token")]
    pub domain: Token,
    /// The entity's id. Integers are accepted on input and carried as strings.
    #[serde(deserialize_with = "entity_id")]
    pub id: Token,
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `user`, `profile`, `provider`, `system`, `service`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The actor's id, when it has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_id"
    )]
    pub id: Option<String>,
}

/// Whom an event targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audience {
    /// Users the event is for.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub user_ids: Vec<String>,
    /// Profiles the event is for.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub profile_ids: Vec<String>,
    /// The feed channel the event belongs to.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "channel_token"
    )]
    pub channel: Option<Token>,
}

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not the envelope's shape.
    #[error("invalid event envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// `entity.domain` disagrees with the domain of `type`.
    #[error("entity.domain {entity:?} does not match the domain of type {event_type:?}")]
    DomainMismatch {
        /// `entity.domain`.
        entity: String,
        /// `type`.
        event_type: String,
    },
}

impl Envelope {
    /// A new event with a fresh UUIDv7 and `occurred_at` = now (millisecond precision).
    pub fn new(event_type: EventType, entity_id: &str, data: Value) -> Result<Self, TokenError> {
        let domain = Token::new("domain", event_type.domain())?;
        Ok(Self {
            id: Uuid::now_v7(),
            entity: EntityRef {
                domain,
                id: Token::new("entity id", entity_id)?,
            },
            event_type,
            occurred_at: now_millis(),
            data,
            changed_fields: None,
            actor: None,
            audience: None,
        })
    }

    /// Sets `changed_fields`.
    pub fn with_changed_fields(mut self, fields: Map<String, Value>) -> Self {
        self.changed_fields = Some(fields);
        self
    }

    /// Sets `actor`.
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets `audience`.
    pub fn with_audience(mut self, audience: Audience) -> Self {
        self.audience = Some(audience);
        self
    }

    /// Parses and checks an envelope from JSON bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.entity.domain.as_str() != envelope.event_type.domain() {
            return Err(EnvelopeError::DomainMismatch {
                entity: envelope.entity.domain.to_string(),
                event_type: envelope.event_type.to_string(),
            });
        }
        Ok(envelope)
    }

    /// Serialises to JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising this type cannot fail: every map key is a string.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The current time truncated to milliseconds, the precision every surface shows.
pub fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap_or(now)
}

/// RFC 3339 in UTC with exactly three fractional digits: `2026-01-25T10:30:00.000Z`.
pub mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    use time::{OffsetDateTime, UtcOffset};

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

    /// Formats a time as RFC 3339 UTC with milliseconds.
    pub fn format(at: OffsetDateTime) -> String {
        at.to_offset(UtcOffset::UTC)
            .format(FORMAT)
            .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
    }

    /// Serde serialiser.
    pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*at))
    }

    /// Serde deserialiser: any RFC 3339 date-time, truncated to milliseconds (the precision
    /// every surface shows), so that decoding what was encoded gives back the same value.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let at = OffsetDateTime::parse(&raw, &Rfc3339).map_err(serde::de::Error::custom)?;
        Ok(at.replace_millisecond(at.millisecond()).unwrap_or(at))
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an integer id")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor).map(Id)
    }
}

fn entity_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Token, D::Error> {
    let Id(raw) = Id::deserialize(deserializer)?;
    Token::new("entity id", raw).map_err(de::Error::custom)
}

fn optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Id>::deserialize(deserializer)?.map(|Id(id)| id))
}

fn id_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Id>::deserialize(deserializer)?
        .into_iter()
        .map(|Id(id)| id)
        .collect())
}

fn domain_token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Token, D::Error> {
    Token::new("domain", String::deserialize(deserializer)?).map_err(de::Error::custom)
}

fn channel_token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Token>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|raw| Token::new("audience channel", raw).map_err(de::Error::custom))
        .transpose()
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Envelope {
        let mut changed = Map::new();
        changed.insert("status".into(), json!("processing"));
        Envelope::new(
            EventType::parse("order.status_changed").unwrap(),
            "101",
            json!({"id": 101, "status": "processing"}),
        )
        .unwrap()
        .with_changed_fields(changed)
        .with_actor(Actor {
            kind: "user".into(),
            id: Some("42".into()),
        })
        .with_audience(Audience {
            user_ids: vec!["7".into()],
            profile_ids: vec![],
            channel: Some(Token::new("channel", "ops_feed").unwrap()),
        })
    }

    #[test]
    fn round_trips_through_json() {
        let env = sample();
        let back = Envelope::decode(&env.encode()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.id.get_version_num(), 7);
    }

    #[test]
    fn tolerates_unknown_fields_and_integer_ids() {
        let raw = json!({
            "id": "0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a",
            "type": "deal.created",
            "occurred_at": "2026-01-25T10:30:00Z",
            "entity": {"domain": "deal", "id": 555},
            "data": {},
            "actor": {"type": "user", "id": 42},
            "audience": {"user_ids": [1, "2"]},
            "schema_version": 3,
            "something_new": {"x": 1}
        });
        let env = Envelope::decode(raw.to_string().as_bytes()).unwrap();
        assert_eq!(env.entity.id.as_str(), "555");
        assert_eq!(env.actor.unwrap().id.as_deref(), Some("42"));
        assert_eq!(env.audience.unwrap().user_ids, ["1", "2"]);
        let out: Value = serde_json::from_slice(&sample().encode()).unwrap();
        assert!(out["occurred_at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn rejects_bad_envelopes_with_clear_errors() {
        let base = json!({
            "id": "0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a",
            "type": "deal.created",
            "occurred_at": "2026-01-25T10:30:00Z",
            "entity": {"domain": "deal", "id": "555"},
            "data": {}
        });
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            Envelope::decode(b.to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(with("type", json!("deal.*")).contains("'*'"));
        assert!(with("id", json!("nope")).contains("invalid"));
        assert!(with("occurred_at", json!("yesterday")).contains("invalid"));
        assert!(with("entity", json!({"domain": "deal", "id": "5.5"})).contains("entity id"));
        assert!(with("entity", json!({"domain": "order", "id": "1"})).contains("does not match"));
        assert!(Envelope::decode(b"{not json").is_err());
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let at = OffsetDateTime::parse(
            "2026-01-25T12:30:00.5+02:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(timestamp::format(at), "2026-01-25T10:30:00.500Z");
    }

    /// Found by fuzz/fuzz_targets/envelope.rs: sub-millisecond digits used to be kept on
    /// decode and dropped on encode, so an envelope did not survive decode → encode → decode.
    #[test]
    fn sub_millisecond_timestamps_are_truncated_on_decode() {
        let raw = br#"{"id":"0193a4c2-7b1e-7cc0-9a52-1f2e3d4c5b6a","type":"order.status_changed","occurred_at":"2026-01-25T10:30:00.0019Z","entity":{"domain":"order","id":"101"},"data":{}}"#;
        let envelope = Envelope::decode(raw).unwrap();
        assert_eq!(envelope.occurred_at.nanosecond(), 1_000_000);
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    }
}
