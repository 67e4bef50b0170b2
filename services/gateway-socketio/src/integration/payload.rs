//! Client payloads of the integration events, parsed once into types: ids of
//! `[A-Za-z0-9_-]{1,64}`, the whole payload at most `integrations.max_payload_bytes`.

use serde_json::{Map, Value};

use super::error::IntegrationError;

/// Longest id (project, integration, endpoint name).
const MAX_ID: usize = 64;

/// A project, integration or endpoint id: 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Id(String);

impl Id {
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_ID
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(value.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `{projectId, integrationId}`: which integration an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) project_id: Id,
    pub(crate) integration_id: Id,
}

impl Target {
    /// The room of the integration's events.
    pub(crate) fn room(&self) -> String {
        room(self.integration_id.as_str())
    }

    /// The room of its inbound webhooks.
    pub(crate) fn webhook_room(&self) -> String {
        webhook_room(self.integration_id.as_str())
    }
}

pub(crate) fn room(integration_id: &str) -> String {
    format!("integration:{integration_id}")
}

pub(crate) fn webhook_room(integration_id: &str) -> String {
    format!("integration:{integration_id}:webhooks")
}

/// `integration:execute` / `integration:test`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Execute {
    pub(crate) target: Target,
    pub(crate) endpoint: Id,
    pub(crate) params: Map<String, Value>,
    pub(crate) request_data: Value,
}

/// The payload's object, when it is one within `max_bytes` (its JSON length).
fn object(
    payload: Option<&Value>,
    max_bytes: usize,
) -> Result<&Map<String, Value>, IntegrationError> {
    let Some(Value::Object(map)) = payload else {
        return Err(IntegrationError::InvalidPayload("payload"));
    };
    // The transport bounds the packet (socketio.max_payload_bytes); this is the event's own,
    // smaller bound, counted without building the text.
    if json_len(payload.unwrap_or(&Value::Null), max_bytes).is_none() {
        return Err(IntegrationError::InvalidPayload("payload"));
    }
    Ok(map)
}

/// The JSON length of `value`, when it is at most `max`.
fn json_len(value: &Value, max: usize) -> Option<usize> {
    struct Counter {
        n: usize,
        max: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.max {
                return Err(std::io::Error::other("over the bound"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, max };
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.n)
}

fn id(map: &Map<String, Value>, field: &'static str) -> Result<Id, IntegrationError> {
    map.get(field)
        .and_then(Value::as_str)
        .and_then(Id::parse)
        .ok_or(IntegrationError::InvalidPayload(field))
}

/// The integration id of a payload, when it names a valid one (for the error event).
pub(crate) fn integration_id_of(payload: Option<&Value>) -> Option<String> {
    let id = payload?.get("integrationId")?.as_str()?;
    Id::parse(id).map(|id| id.0)
}

/// `{projectId, integrationId}`.
pub(crate) fn target(
    payload: Option<&Value>,
    max_bytes: usize,
) -> Result<Target, IntegrationError> {
    let map = object(payload, max_bytes)?;
    target_of(map)
}

fn target_of(map: &Map<String, Value>) -> Result<Target, IntegrationError> {
    Ok(Target {
        project_id: id(map, "projectId")?,
        integration_id: id(map, "integrationId")?,
    })
}

/// `{projectId, integrationId, endpoint, params?, requestData?}`; `params` an object (default
/// `{}`), `requestData` any JSON (default `{}`).
pub(crate) fn execute(
    payload: Option<&Value>,
    max_bytes: usize,
) -> Result<Execute, IntegrationError> {
    let map = object(payload, max_bytes)?;
    let target = target_of(map)?;
    let endpoint = id(map, "endpoint")?;
    let params = match map.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => return Err(IntegrationError::InvalidPayload("params")),
    };
    let request_data = match map.get("requestData") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(data) => data.clone(),
    };
    Ok(Execute {
        target,
        endpoint,
        params,
        request_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_bounded_tokens() {
        assert!(Id::parse("64b2c3d4e5f6789012345678").is_some());
        assert!(Id::parse("a_b-C9").is_some());
        assert!(Id::parse(&"a".repeat(64)).is_some());
        for bad in ["", "a b", "a:b", "ü", &"a".repeat(65)] {
            assert!(Id::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn targets_name_the_wrong_field() {
        let ok = json!({"projectId": "p1", "integrationId": "i1"});
        let t = target(Some(&ok), 1024).unwrap();
        assert_eq!(t.room(), "integration:i1");
        assert_eq!(t.webhook_room(), "integration:i1:webhooks");
        let cases = [
            (json!("p1"), "payload"),
            (json!({"integrationId": "i1"}), "projectId"),
            (
                json!({"projectId": "p1", "integrationId": "i:1"}),
                "integrationId",
            ),
            (json!({"projectId": 1, "integrationId": "i1"}), "projectId"),
        ];
        for (payload, field) in cases {
            assert_eq!(
                target(Some(&payload), 1024),
                Err(IntegrationError::InvalidPayload(field)),
                "{payload}"
            );
        }
        assert_eq!(
            target(None, 1024),
            Err(IntegrationError::InvalidPayload("payload"))
        );
    }

    #[test]
    fn payloads_over_the_bound_are_refused() {
        let big = json!({"projectId": "p1", "integrationId": "i1", "pad": "x".repeat(100)});
        assert!(target(Some(&big), 1000).is_ok());
        assert_eq!(
            target(Some(&big), 100),
            Err(IntegrationError::InvalidPayload("payload"))
        );
    }

    #[test]
    fn execute_defaults_and_checks_params() {
        let p = json!({"projectId": "p1", "integrationId": "i1", "endpoint": "getUserTweets",
            "params": {"userId": "123"}});
        let e = execute(Some(&p), 1024).unwrap();
        assert_eq!(e.endpoint.as_str(), "getUserTweets");
        assert_eq!(e.params["userId"], "123");
        assert_eq!(e.request_data, json!({}));
        let p = json!({"projectId": "p1", "integrationId": "i1", "endpoint": "x", "params": [1]});
        assert_eq!(
            execute(Some(&p), 1024),
            Err(IntegrationError::InvalidPayload("params"))
        );
        let p = json!({"projectId": "p1", "integrationId": "i1"});
        assert_eq!(
            execute(Some(&p), 1024),
            Err(IntegrationError::InvalidPayload("endpoint"))
        );
    }
}
