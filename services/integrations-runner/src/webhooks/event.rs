//! What a verified delivery is: its event name (`<provider>.<type>`) and the provider's
//! delivery id, which makes a replay a JetStream duplicate.

use axum::http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use webhook_signatures::{github, standard};

use super::target::{EventSource, Verifier, WebhookTarget};

/// Longest provider event type (`invoice.paid`, `issues.opened`) accepted.
pub(crate) const MAX_TYPE_LEN: usize = 128;
/// Longest delivery id used as is; a longer one is replaced by its SHA-256.
const MAX_DELIVERY_ID_LEN: usize = 128;

/// Why a verified delivery has no usable event name (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    /// The body or header that names the event is absent, or not a string.
    #[error("the delivery does not name its event type")]
    MissingType,
    /// The type is empty, too long, or has characters outside `[A-Za-z0-9._:/-]`.
    #[error("the event type is empty, longer than {MAX_TYPE_LEN} bytes or not [A-Za-z0-9._:/-]")]
    InvalidType,
}

/// The body as JSON when it is JSON, else as (lossy) text: what `data` carries.
pub(crate) fn body_data(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `<provider>.<type>`, the type read where the scheme keeps it.
pub(crate) fn event_name(
    target: &WebhookTarget,
    headers: &HeaderMap,
    data: &Value,
) -> Result<String, EventError> {
    let kind = match &target.verifier {
        Verifier::Stripe { .. } | Verifier::Standard { .. } => field(data, "type")?.to_owned(),
        Verifier::Github { .. } => {
            let event = header(headers, &github::EVENT_HEADER)?;
            check(event)?;
            match data.get("action").and_then(Value::as_str) {
                Some(action) => format!("{event}.{action}"),
                None => event.to_owned(),
            }
        }
        Verifier::Hmac { event, .. } => match event {
            EventSource::Field(path) => field(data, path)?.to_owned(),
            EventSource::Header(name) => header(headers, name)?.to_owned(),
        },
    };
    check(&kind)?;
    Ok(format!("{}.{kind}", target.provider))
}

/// The provider's id of this delivery, the same on each of its retries: Stripe's event `id`,
/// `X-GitHub-Delivery`, `webhook-id`; else (or when absent) the SHA-256 of the body. An id too
/// long or not plain text is replaced by its own SHA-256, so it always fits a header.
pub(crate) fn delivery_id(
    target: &WebhookTarget,
    headers: &HeaderMap,
    data: &Value,
    body: &[u8],
) -> String {
    let provided = match &target.verifier {
        Verifier::Stripe { .. } => data.get("id").and_then(Value::as_str),
        Verifier::Github { .. } => header(headers, &github::DELIVERY_HEADER).ok(),
        Verifier::Standard { .. } => header(headers, &standard::ID_HEADER).ok(),
        Verifier::Hmac { .. } => None,
    };
    match provided {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_DELIVERY_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        Some(id) => sha256_hex(id.as_bytes()),
        None => sha256_hex(body),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A string at a dotted path of the body.
fn field<'a>(data: &'a Value, path: &str) -> Result<&'a str, EventError> {
    path.split('.')
        .try_fold(data, |value, key| value.get(key))
        .and_then(Value::as_str)
        .ok_or(EventError::MissingType)
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &axum::http::HeaderName,
) -> Result<&'a str, EventError> {
    headers
        .get(name)
        .ok_or(EventError::MissingType)?
        .to_str()
        .map_err(|_| EventError::InvalidType)
}

fn check(kind: &str) -> Result<(), EventError> {
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/');
    if kind.is_empty() || kind.len() > MAX_TYPE_LEN || !kind.bytes().all(allowed) {
        return Err(EventError::InvalidType);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::http::{HeaderName, HeaderValue};
    use serde_json::json;
    use webhook_signatures::Tolerance;
    use webhook_signatures::hmac_header::{Encoding, HmacHeader};

    use super::super::target::SecretBytes;
    use super::*;

    fn target(provider: &str, verifier: Verifier) -> WebhookTarget {
        WebhookTarget {
            integration_id: "i1".into(),
            project_id: "p1".into(),
            provider: provider.into(),
            verifier,
        }
    }

    fn stripe() -> WebhookTarget {
        let secret = SecretBytes(b"s".to_vec());
        let tolerance = Tolerance::DEFAULT;
        target("stripe", Verifier::Stripe { secret, tolerance })
    }

    fn github() -> WebhookTarget {
        let secret = SecretBytes(b"s".to_vec());
        target("github", Verifier::Github { secret })
    }

    fn hmac(event: EventSource) -> WebhookTarget {
        let scheme = HmacHeader {
            header: HeaderName::from_static("x-sig"),
            prefix: None,
            encoding: Encoding::Hex,
        };
        let secret = SecretBytes(b"s".to_vec());
        target(
            "acme",
            Verifier::Hmac {
                scheme,
                secret,
                event,
            },
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn stripe_names_the_event_by_its_type_and_dedupes_by_its_id() {
        let body = json!({"id": "evt_1", "type": "invoice.paid"});
        let none = HeaderMap::new();
        assert_eq!(
            event_name(&stripe(), &none, &body).unwrap(),
            "stripe.invoice.paid"
        );
        assert_eq!(delivery_id(&stripe(), &none, &body, b"x"), "evt_1");
        assert_eq!(
            event_name(&stripe(), &none, &json!({"id": "evt_1"})),
            Err(EventError::MissingType)
        );
        assert_eq!(
            event_name(&stripe(), &none, &json!({"type": "a b"})),
            Err(EventError::InvalidType)
        );
        let long = "a".repeat(MAX_TYPE_LEN + 1);
        assert_eq!(
            event_name(&stripe(), &none, &json!({"type": long})),
            Err(EventError::InvalidType)
        );
    }

    #[test]
    fn github_adds_the_action_when_there_is_one() {
        let h = headers(&[("x-github-event", "issues"), ("x-github-delivery", "d-1")]);
        let body = json!({"action": "opened"});
        assert_eq!(
            event_name(&github(), &h, &body).unwrap(),
            "github.issues.opened"
        );
        assert_eq!(
            event_name(&github(), &h, &json!({})).unwrap(),
            "github.issues"
        );
        assert_eq!(delivery_id(&github(), &h, &body, b"x"), "d-1");
        assert_eq!(
            event_name(&github(), &HeaderMap::new(), &body),
            Err(EventError::MissingType)
        );
        let bad_action = json!({"action": "opened now"});
        assert_eq!(
            event_name(&github(), &h, &bad_action),
            Err(EventError::InvalidType)
        );
    }

    #[test]
    fn configured_hmac_reads_a_field_path_or_a_header_and_dedupes_by_body() {
        let body = json!({"event": {"type": "order.created"}});
        let by_field = hmac(EventSource::Field("event.type".into()));
        assert_eq!(
            event_name(&by_field, &HeaderMap::new(), &body).unwrap(),
            "acme.order.created"
        );
        let by_header = hmac(EventSource::Header(HeaderName::from_static("x-event")));
        let h = headers(&[("x-event", "ping")]);
        assert_eq!(event_name(&by_header, &h, &body).unwrap(), "acme.ping");
        let a = delivery_id(&by_header, &h, &body, b"one");
        assert_eq!(a.len(), 64);
        assert_eq!(a, delivery_id(&by_header, &h, &body, b"one"));
        assert_ne!(a, delivery_id(&by_header, &h, &body, b"two"));
    }

    #[test]
    fn odd_delivery_ids_are_hashed_not_used() {
        let long = "x".repeat(200);
        let id = delivery_id(&stripe(), &HeaderMap::new(), &json!({"id": long}), b"");
        assert_eq!(id.len(), 64);
        let spaced = delivery_id(&stripe(), &HeaderMap::new(), &json!({"id": "a b"}), b"");
        assert_ne!(spaced, "a b");
        let missing = delivery_id(&stripe(), &HeaderMap::new(), &json!({}), b"body");
        assert_eq!(missing, sha256_hex(b"body"));
    }

    #[test]
    fn data_is_the_json_body_or_its_text() {
        assert_eq!(body_data(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(body_data(b"a=1&b=2"), json!("a=1&b=2"));
    }
}
