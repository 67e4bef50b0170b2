//! Property tests for what gateway-ws parses from clients: the express-session cookie
//! (`Cookie` header lookup and signature check) and `/ws` text frames.
//!
//! Nothing here may panic on arbitrary input; invalid input is an error; what `sign` and the
//! protocol's own messages produce is accepted and gives back the original.

use events::surface::WsChannel;
use gateway_ws::cookie::{find_cookie, sign, unsign};
use gateway_ws::protocol::{self, ClientMessage};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Text that stresses parsers: any unicode, text made of the characters these parsers split
/// on or decode (`;`, `=`, `%`, `"`, `.`, `:`), and long runs of them.
fn hostile_text() -> impl Strategy<Value = String> {
    let alphabet = prop_oneof![
        Just(';'),
        Just('='),
        Just('%'),
        Just('"'),
        Just('.'),
        Just(':'),
        Just('s'),
        Just('A'),
        Just('f'),
        Just('0'),
        Just(' '),
        Just('\0'),
        Just('\t'),
        Just('é'),
        Just('{'),
        Just('}'),
        any::<char>(),
    ];
    prop_oneof![
        4 => any::<String>(),
        4 => vec(alphabet, 0..300).prop_map(|cs| cs.into_iter().collect()),
        1 => ("[%;=.:s\"a-f0-9\\x00 ]{1,8}", 500usize..8_000).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

/// A cookie name as browsers send it (an RFC 6265 token).
fn cookie_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$&'*+^_`|~.-]{1,24}"
}

/// Percent-encodes every byte outside the unreserved set, as `encodeURIComponent` would.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn secret() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..80)
}

proptest! {
    #[test]
    fn find_cookie_never_panics(header in hostile_text(), name in hostile_text()) {
        let _ = find_cookie(&header, &name);
        let _ = find_cookie(&header, "connect.sid");
    }

    #[test]
    fn find_cookie_returns_the_percent_decoded_value(
        name in cookie_name(),
        value in any::<String>(),
        before in vec((cookie_name(), "[A-Za-z0-9%]{0,12}"), 0..4),
        after in vec((cookie_name(), "[A-Za-z0-9%]{0,12}"), 0..4),
        quoted in any::<bool>(),
    ) {
        prop_assume!(before.iter().all(|(k, _)| *k != name));
        let encoded = percent_encode(&value);
        let ours = if quoted {
            format!("{name}=\"{encoded}\"")
        } else {
            format!("{name}={encoded}")
        };
        let pairs: Vec<String> = before
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(std::iter::once(ours))
            .chain(after.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let header = pairs.join("; ");
        prop_assert_eq!(find_cookie(&header, &name), Some(value));
    }

    #[test]
    fn find_cookie_finds_nothing_when_the_name_is_absent(
        name in cookie_name(),
        others in vec((cookie_name(), hostile_text()), 0..5),
    ) {
        let header = others
            .iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| format!("{k}={}", v.replace([';', '='], "")))
            .collect::<Vec<_>>()
            .join("; ");
        prop_assert_eq!(find_cookie(&header, &name), None);
    }

    #[test]
    fn sign_then_unsign_gives_back_the_sid(
        sid in any::<String>().prop_filter("express-session sids are not empty", |s| !s.is_empty()),
        secret in secret(),
        older in vec(secret(), 0..3),
    ) {
        let value = sign(&sid, &secret);
        prop_assert_eq!(unsign(&value, std::slice::from_ref(&secret)).unwrap(), sid.clone());
        // Rotation: any configured secret verifies.
        let mut secrets = older.clone();
        secrets.push(secret.clone());
        prop_assert_eq!(unsign(&value, &secrets).unwrap(), sid.clone());
        // Through a Cookie header, the way a browser sends what express-session set.
        let header = format!("theme=dark; connect.sid={}; x=1", percent_encode(&value));
        let found = find_cookie(&header, "connect.sid").unwrap();
        prop_assert_eq!(unsign(&found, &secrets).unwrap(), sid);
    }

    #[test]
    fn unsign_refuses_other_secrets(
        sid in "[A-Za-z0-9_-]{1,40}",
        secret in secret(),
        wrong in vec(secret(), 0..3),
    ) {
        prop_assume!(wrong.iter().all(|w| *w != secret));
        let value = sign(&sid, &secret);
        prop_assert!(unsign(&value, &wrong).is_err());
    }

    #[test]
    fn unsign_refuses_a_tampered_cookie(
        sid in "[A-Za-z0-9_-]{1,40}",
        secret in secret(),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let value = sign(&sid, &secret);
        let chars: Vec<char> = value.chars().collect();
        let i = at.index(chars.len());
        prop_assume!(chars[i] != replacement);
        let mut tampered = chars;
        tampered[i] = replacement;
        let tampered: String = tampered.into_iter().collect();
        // Padding is tolerated after the signature; anything else that changes must fail.
        prop_assume!(tampered.trim_end_matches('=') != value);
        prop_assert!(unsign(&tampered, &[&secret]).is_err(), "{:?}", tampered);
    }

    #[test]
    fn unsign_never_panics_and_accepts_only_real_signatures(
        value in prop_oneof![
            hostile_text(),
            hostile_text().prop_map(|s| format!("s:{s}")),
            ("[^.]{0,20}", "[A-Za-z0-9+/=]{0,60}").prop_map(|(s, g)| format!("s:{s}.{g}")),
        ],
        secrets in vec(secret(), 0..3),
    ) {
        prop_assert!(unsign(&value, &[] as &[&[u8]]).is_err());
        if let Ok(sid) = unsign(&value, &secrets) {
            let canonical = value.trim_end_matches('=');
            prop_assert!(secrets.iter().any(|s| sign(&sid, s) == canonical), "{:?}", value);
        }
    }
}

fn channel() -> impl Strategy<Value = WsChannel> {
    prop::sample::select(WsChannel::ALL.to_vec())
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        channel().prop_map(ClientMessage::Subscribe),
        channel().prop_map(ClientMessage::Unsubscribe),
        Just(ClientMessage::Ping),
    ]
}

/// JSON values of any shape (no floats: they play no part in the protocol, and serde_json does
/// not promise to read back the exact float it wrote).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        Just(json!("subscribe")),
        Just(json!("unsubscribe")),
        Just(json!("ping")),
        channel().prop_map(|c| json!(c.as_str())),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("channel".to_owned()),
                    any::<String>()
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What the protocol says a frame means, written independently of `protocol::parse`.
fn expected(value: &Value) -> Option<ClientMessage> {
    let fields = value.as_object()?;
    let channel = || WsChannel::parse(fields.get("channel")?.as_str()?);
    match fields.get("type")?.as_str()? {
        "subscribe" => channel().map(ClientMessage::Subscribe),
        "unsubscribe" => channel().map(ClientMessage::Unsubscribe),
        "ping" => Some(ClientMessage::Ping),
        _ => None,
    }
}

fn encode(message: ClientMessage) -> Map<String, Value> {
    let mut fields = Map::new();
    let (kind, channel) = match message {
        ClientMessage::Subscribe(c) => ("subscribe", Some(c)),
        ClientMessage::Unsubscribe(c) => ("unsubscribe", Some(c)),
        ClientMessage::Ping => ("ping", None),
    };
    fields.insert("type".into(), json!(kind));
    if let Some(c) = channel {
        fields.insert("channel".into(), json!(c.as_str()));
    }
    fields
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_text(text in hostile_text()) {
        let _ = protocol::parse(&text);
    }

    #[test]
    fn parse_accepts_every_valid_message(
        message in client_message(),
        extra in btree_map("[a-z]{1,8}", json_value(), 0..4),
        pretty in any::<bool>(),
    ) {
        let mut fields: Map<String, Value> =
            extra.into_iter().filter(|(k, _)| k != "type" && k != "channel").collect();
        fields.extend(encode(message));
        let value = Value::Object(fields);
        let text = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            value.to_string()
        };
        prop_assert_eq!(protocol::parse(&text), Ok(message));
    }

    #[test]
    fn parse_agrees_with_the_protocol_on_any_json(value in json_value()) {
        let parsed = protocol::parse(&value.to_string());
        match expected(&value) {
            Some(message) => prop_assert_eq!(parsed, Ok(message)),
            None => prop_assert!(parsed.is_err(), "{} parsed as {:?}", value, parsed),
        }
    }

    #[test]
    fn parse_refuses_unknown_channels(
        kind in prop_oneof![Just("subscribe"), Just("unsubscribe")],
        name in any::<String>(),
    ) {
        prop_assume!(WsChannel::parse(&name).is_none());
        let text = json!({"type": kind, "channel": name}).to_string();
        prop_assert!(protocol::parse(&text).is_err());
    }

    #[test]
    fn server_messages_are_valid_json_carrying_their_text(
        message in hostile_text(),
        channel in channel(),
        user in json_value(),
    ) {
        let error: Value = serde_json::from_str(&protocol::error(&message)).unwrap();
        prop_assert_eq!(&error["type"], "error");
        prop_assert_eq!(error["message"].as_str(), Some(message.as_str()));
        let connected: Value = serde_json::from_str(&protocol::connected(&user)).unwrap();
        prop_assert_eq!(&connected["userId"], &user);
        let ack: Value = serde_json::from_str(&protocol::ack("subscribed", channel)).unwrap();
        prop_assert_eq!(ack["channel"].as_str(), Some(channel.as_str()));
    }
}

#[test]
fn parse_survives_deep_nesting() {
    for depth in [200, 10_000, 100_000] {
        let text = format!(
            r#"{{"type":"ping","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(protocol::parse(&text).is_err(), "depth {depth}");
    }
}
