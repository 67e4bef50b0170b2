//! Values and helpers shared by the scenario modules: issuers and audiences, an origin, reply
//! assertions and a gateway with its own backends.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Gateway, assert_schema, backends};

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "crm";

pub const PROVIDER_ISSUER: &str = "https://tenant.logto.test/oidc";
pub const PROVIDER_AUDIENCE: &str = "https://api.provider.test";

pub const ACME: &str = "https://acme.example";

pub fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

pub fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub fn json_of(envelope: &events::Envelope) -> Value {
    serde_json::to_value(envelope).unwrap()
}

/// Asserts a subscribe reply refused the whole payload.
pub fn assert_payload_refused(reply: &Value, what: &str) {
    assert_schema("socketio-admin-subscribe-ack.schema.json", reply);
    assert_eq!(reply["subscribed"], json!([]), "{what}: {reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{what}: {reply}");
    assert_eq!(refused[0]["target"], "payload", "{what}: {reply}");
    assert!(
        refused[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: a reason is given: {reply}"
    );
}

/// Asserts a reply subscribed nothing and refused exactly one target with `reason`.
pub fn assert_refused_one(reply: &Value, reason: &str, what: &str) {
    assert_eq!(reply["subscribed"], json!([]), "{what}: {reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{what}: {reply}");
    assert_eq!(refused[0]["reason"], reason, "{what}: {reply}");
}

pub async fn admin_gateway(
    extra: &[(&str, String)],
) -> (
    test_support::NatsServer,
    test_support::TestDatabase,
    Gateway,
) {
    let (nats, db) = backends().await;
    let gw = Gateway::start(&nats, &db, extra).await;
    (nats, db, gw)
}
