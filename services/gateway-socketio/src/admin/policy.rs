//! `/admin` subscriptions: what a payload asks for, which rooms that is, and what the principal
//! may join.

use std::collections::HashSet;

use events::surface::{rooms, singular};
use serde::Serialize;
use serde_json::Value;

/// What a principal may subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    all_domains: bool,
    all_channels: bool,
    domains: HashSet<String>,
    channels: HashSet<String>,
}

impl Grants {
    /// Everything (the default when no claim is configured).
    pub fn all() -> Self {
        Self {
            all_domains: true,
            all_channels: true,
            ..Self::default()
        }
    }

    /// From a claim: an array of strings or one space-separated string. `*` grants everything,
    /// `channel:*` every channel, `channel:<name>` one channel, anything else a plural domain.
    pub fn from_claim(claim: Option<&Value>) -> Self {
        let mut grants = Self::default();
        let items: Vec<&str> = match claim {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for item in items {
            match item {
                "*" => {
                    grants.all_domains = true;
                    grants.all_channels = true;
                }
                "channel:*" => grants.all_channels = true,
                _ => match item.strip_prefix("channel:") {
                    Some(name) => {
                        grants.channels.insert(name.to_owned());
                    }
                    None => {
                        grants.domains.insert(item.to_owned());
                    }
                },
            }
        }
        grants
    }

    fn domain(&self, plural: &str) -> bool {
        self.all_domains || self.domains.contains(plural)
    }

    fn channel(&self, name: &str) -> bool {
        self.all_channels || self.channels.contains(name)
    }
}

/// A target that was not subscribed (or unsubscribed), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The room it would have been, or the target as written when malformed.
    pub target: String,
    /// Why, for humans.
    pub reason: String,
}

/// The reply to `subscribe` / `unsubscribe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Rooms joined (or left).
    pub subscribed: Vec<String>,
    /// Targets refused, with reasons.
    pub refused: Vec<Refused>,
}

impl Reply {
    /// The whole payload refused.
    pub fn malformed(reason: impl Into<String>) -> Self {
        Self {
            subscribed: Vec::new(),
            refused: vec![Refused {
                target: "payload".to_owned(),
                reason: reason.into(),
            }],
        }
    }

    fn refuse(&mut self, target: impl Into<String>, reason: &str) {
        self.refused.push(Refused {
            target: target.into(),
            reason: reason.to_owned(),
        });
    }
}

/// Whether a string is a literal subject token (`[A-Za-z0-9_-]{1,128}`).
fn is_token(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_domain(plural: &str) -> bool {
    singular(plural).is_some()
}

/// Characters of client input a reply may repeat: enough to recognise a target, too few to
/// amplify anything.
pub const ECHO_CHARS: usize = 32;

/// At most [`ECHO_CHARS`] characters of `raw`, with `…` when cut.
fn echo(raw: &str) -> String {
    let mut chars = raw.chars();
    let mut out: String = chars.by_ref().take(ECHO_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// A JSON value as the client wrote it, cut like [`echo`]. Serialises at most what is shown
/// (long strings are cut before they are quoted; containers are not expanded).
fn echo_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", echo(s)),
        Value::Array(_) => "[…]".to_owned(),
        Value::Object(_) => "{…}".to_owned(),
        other => echo(&other.to_string()),
    }
}

/// The default of `admin.max_targets_per_request`.
pub const DEFAULT_MAX_TARGETS: usize = 1000;

/// [`plan_within`] with the default target cap, [`DEFAULT_MAX_TARGETS`].
pub fn plan(payload: &Value, grants: &Grants, check_grants: bool) -> Reply {
    plan_within(payload, grants, check_grants, DEFAULT_MAX_TARGETS)
}

/// Rooms a payload names, checked against the grants (`check_grants` is false for unsubscribe:
/// leaving is always allowed). Valid targets go to `subscribed` in payload order, without
/// duplicates (entities in key order); everything else is refused with its reason.
///
/// The reply stays small whatever the payload: a payload naming more than `max_targets` targets
/// is refused whole before any is looked at; an unknown entity domain is refused once, not once
/// per id; and no refusal repeats more than [`ECHO_CHARS`] characters of client input.
pub fn plan_within(
    payload: &Value,
    grants: &Grants,
    check_grants: bool,
    max_targets: usize,
) -> Reply {
    let Value::Object(map) = payload else {
        return Reply::malformed("expected an object with entities, domains and/or channels");
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "entities" | "domains" | "channels"))
    {
        return Reply::malformed(format!(
            "unknown member {:?} (expected entities, domains, channels)",
            echo(unknown)
        ));
    }
    let entities = match map.get("entities") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(e),
        Some(_) => return Reply::malformed("entities must be an object of id arrays"),
    };
    if let Some(entities) = entities
        && let Some((plural, _)) = entities.iter().find(|(_, ids)| !ids.is_array())
    {
        return Reply::malformed(format!("entities.{} must be an array of ids", echo(plural)));
    }
    let list = |name: &str| -> Result<Vec<&Value>, Reply> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.iter().collect()),
            Some(_) => Err(Reply::malformed(format!(
                "{name} must be an array of names"
            ))),
        }
    };
    let (domains, channels) = match (list("domains"), list("channels")) {
        (Ok(d), Ok(c)) => (d, c),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    let ids: usize = entities
        .into_iter()
        .flatten()
        .map(|(_, ids)| ids.as_array().map_or(0, Vec::len))
        .sum();
    if ids + domains.len() + channels.len() > max_targets {
        return Reply::malformed(format!(
            "too many targets (at most {max_targets} per request)"
        ));
    }

    let mut reply = Reply::default();
    let mut seen = HashSet::new();
    let mut accept = |reply: &mut Reply, room: String| {
        if seen.insert(room.clone()) {
            reply.subscribed.push(room);
        }
    };
    for (plural, ids) in entities.into_iter().flatten() {
        let ids = ids.as_array().map(Vec::as_slice).unwrap_or_default();
        // Known domains are short tokens, so past this check `plural` is safe to repeat.
        if !is_domain(plural) {
            if !ids.is_empty() {
                reply.refuse(format!("entities.{}", echo(plural)), "unknown domain");
            }
            continue;
        }
        for id in ids {
            let id = match id {
                Value::String(s) if is_token(s) => s.clone(),
                Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
                other => {
                    reply.refuse(
                        format!("entities.{plural}: {}", echo_value(other)),
                        "invalid id",
                    );
                    continue;
                }
            };
            let room = rooms::entity(plural, &id);
            if check_grants && !grants.domain(plural) {
                reply.refuse(room, "forbidden");
            } else {
                accept(&mut reply, room);
            }
        }
    }
    for domain in domains {
        let Some(name) = domain.as_str().filter(|s| is_token(s)) else {
            reply.refuse(format!("domains: {}", echo_value(domain)), "unknown domain");
            continue;
        };
        if !(is_domain(name) || name == rooms::EVENT_LOG_DOMAIN) {
            reply.refuse(rooms::domain(&echo(name)), "unknown domain");
            continue;
        }
        let room = rooms::domain(name);
        if check_grants && !grants.domain(name) {
            reply.refuse(room, "forbidden");
        } else {
            accept(&mut reply, room);
        }
    }
    for channel in channels {
        let Some(name) = channel.as_str().filter(|s| is_token(s)) else {
            reply.refuse(
                format!("channels: {}", echo_value(channel)),
                "invalid channel",
            );
            continue;
        };
        let room = rooms::channel(name);
        if check_grants && !grants.channel(name) {
            reply.refuse(room, "forbidden");
        } else {
            accept(&mut reply, room);
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = DEFAULT_MAX_TARGETS;

    #[test]
    fn the_seed_example_maps_to_entity_rooms() {
        let reply = plan_within(
            &json!({"entities": {"orders": [101], "deals": [555]}}),
            &Grants::all(),
            true,
            MAX,
        );
        // Entities come in key order (a JSON object's members are unordered).
        assert_eq!(reply.subscribed, ["entity:deals:555", "entity:orders:101"]);
        assert!(reply.refused.is_empty());
    }

    #[test]
    fn domains_channels_and_the_event_log() {
        let reply = plan_within(
            &json!({"domains": ["orders", "event_log", "orders"], "channels": ["ops_feed"]}),
            &Grants::all(),
            true,
            MAX,
        );
        assert_eq!(
            reply.subscribed,
            ["domain:orders", "domain:event_log", "channel:ops_feed"]
        );
    }

    #[test]
    fn unknown_invalid_and_forbidden_targets_are_refused_with_reasons() {
        let grants = Grants::from_claim(Some(&json!(["orders", "channel:ops_feed"])));
        let reply = plan_within(
            &json!({
                "entities": {"orders": [101, "a b", 1.5], "deals": [5], "gizmos": [1]},
                "domains": ["payouts", 3],
                "channels": ["ops_feed", "sales_feed", "bad channel"]
            }),
            &grants,
            true,
            MAX,
        );
        assert_eq!(reply.subscribed, ["entity:orders:101", "channel:ops_feed"]);
        let refused: Vec<(&str, &str)> = reply
            .refused
            .iter()
            .map(|r| (r.target.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            refused,
            [
                ("entity:deals:5", "forbidden"),
                ("entities.gizmos", "unknown domain"),
                ("entities.orders: \"a b\"", "invalid id"),
                ("entities.orders: 1.5", "invalid id"),
                ("domain:payouts", "forbidden"),
                ("domains: 3", "unknown domain"),
                ("channel:sales_feed", "forbidden"),
                ("channels: \"bad channel\"", "invalid channel"),
            ]
        );
    }

    #[test]
    fn unsubscribe_ignores_grants() {
        let reply = plan_within(
            &json!({"domains": ["deals"]}),
            &Grants::default(),
            false,
            MAX,
        );
        assert_eq!(reply.subscribed, ["domain:deals"]);
    }

    #[test]
    fn malformed_payloads_are_refused_whole() {
        for payload in [
            json!("orders"),
            json!({"entities": {"orders": "101"}}),
            json!({"entities": [101]}),
            json!({"domains": "orders"}),
            json!({"rooms": ["x"]}),
        ] {
            let reply = plan_within(&payload, &Grants::all(), true, MAX);
            assert!(reply.subscribed.is_empty(), "{payload}");
            assert_eq!(reply.refused.len(), 1, "{payload}");
            assert_eq!(reply.refused[0].target, "payload");
        }
    }

    #[test]
    fn claims_as_scope_strings() {
        let grants = Grants::from_claim(Some(&json!("orders channel:*")));
        assert!(grants.domain("orders") && !grants.domain("deals"));
        assert!(grants.channel("anything"));
        assert_eq!(Grants::from_claim(None), Grants::default());
    }

    #[test]
    fn a_long_unknown_key_with_many_ids_is_refused_once_and_briefly() {
        let key = "k".repeat(50_000);
        let ids: Vec<u64> = (0..900).collect();
        let reply = plan_within(
            &json!({"entities": {key.clone(): ids}}),
            &Grants::all(),
            true,
            MAX,
        );
        assert!(reply.subscribed.is_empty());
        assert_eq!(reply.refused.len(), 1, "one refusal for the key");
        assert_eq!(reply.refused[0].reason, "unknown domain");
        assert!(reply.refused[0].target.chars().count() <= "entities.".len() + ECHO_CHARS + 1);
        assert!(serde_json::to_string(&reply).unwrap().len() < 200);
    }

    #[test]
    fn too_many_targets_refuse_the_payload_whole() {
        let ids: Vec<u64> = (0..5).collect();
        let payload = json!({"entities": {"orders": ids}, "domains": ["deals"]});
        let reply = plan_within(&payload, &Grants::all(), true, 5);
        assert!(reply.subscribed.is_empty());
        assert_eq!(reply.refused.len(), 1);
        assert_eq!(reply.refused[0].target, "payload");
        assert!(reply.refused[0].reason.contains("too many targets"));
        assert_eq!(
            plan_within(&payload, &Grants::all(), true, 6)
                .subscribed
                .len(),
            6
        );
    }

    #[test]
    fn client_input_is_echoed_as_a_short_prefix_only() {
        let long = "x".repeat(10_000);
        for payload in [
            json!({long.clone(): 1}),
            json!({"entities": {long.clone(): "not a list"}}),
            json!({"entities": {"orders": [long.clone(), {"deep": long.clone()}]}}),
            json!({"domains": [long.clone()]}),
            json!({"channels": [long.clone(), [long.clone()]]}),
        ] {
            let reply = plan_within(&payload, &Grants::all(), true, MAX);
            for refused in &reply.refused {
                assert!(
                    refused.target.len() + refused.reason.len() < 120,
                    "{payload:.40}: {refused:?}"
                );
            }
            assert!(!reply.refused.is_empty());
        }
    }
}
