//! The `/ws` message protocol of seed 001.
//!
//! Client → server: `{"type":"subscribe","channel":"order_changes"}`, `unsubscribe`, `ping`.
//! Server → client: `connected`, `subscribed`/`unsubscribed` acknowledgements, `pong`,
//! `error` (the connection stays open), and `{event, data, timestamp}` events.

use events::surface::WsChannel;
use serde_json::{Value, json};

/// A valid client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage {
    /// Start receiving a channel's events.
    Subscribe(WsChannel),
    /// Stop receiving a channel's events.
    Unsubscribe(WsChannel),
    /// Keepalive; answered with `pong`.
    Ping,
}

/// Parses a text frame. The error is the message to send back in `{"type":"error"}`.
pub fn parse(text: &str) -> Result<ClientMessage, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(fields) = value.as_object() else {
        return Err("message must be a JSON object".to_owned());
    };
    let kind = match fields.get("type") {
        None | Some(Value::Null) => return Err("missing field \"type\"".to_owned()),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("field \"type\" must be a string".to_owned()),
    };
    let channel = || -> Result<WsChannel, String> {
        let name = match fields.get("channel") {
            None | Some(Value::Null) => {
                return Err(format!("missing field \"channel\" for {kind}"));
            }
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err("field \"channel\" must be a string".to_owned()),
        };
        WsChannel::parse(name).ok_or_else(|| {
            format!(
                "unknown channel \"{name}\"; expected one of {}",
                WsChannel::ALL.map(WsChannel::as_str).join(", ")
            )
        })
    };
    match kind {
        "subscribe" => channel().map(ClientMessage::Subscribe),
        "unsubscribe" => channel().map(ClientMessage::Unsubscribe),
        "ping" => Ok(ClientMessage::Ping),
        other => Err(format!(
            "unknown message type \"{other}\"; expected subscribe, unsubscribe or ping"
        )),
    }
}

/// `{"type":"connected","message":"WebSocket connection established","userId":...}`.
pub fn connected(user_id: &Value) -> String {
    json!({"type": "connected", "message": "WebSocket connection established", "userId": user_id})
        .to_string()
}

/// `{"type":"error","message":...}`.
pub fn error(message: &str) -> String {
    json!({"type": "error", "message": message}).to_string()
}

/// `{"type":"pong"}`.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// `{"type":"subscribed"|"unsubscribed","channel":...}`.
pub fn ack(kind: &'static str, channel: WsChannel) -> String {
    json!({"type": kind, "channel": channel.as_str()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_messages() {
        assert_eq!(
            parse(r#"{"type":"subscribe","channel":"order_changes"}"#),
            Ok(ClientMessage::Subscribe(WsChannel::OrderChanges))
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","channel":"transaction_changes"}"#),
            Ok(ClientMessage::Unsubscribe(WsChannel::TransactionChanges))
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("{nope", "invalid JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"channel":"order_changes"}"#, "missing field \"type\""),
            (r#"{"type":5}"#, "\"type\" must be a string"),
            (r#"{"type":"dance"}"#, "unknown message type \"dance\""),
            (
                r#"{"type":"subscribe"}"#,
                "missing field \"channel\" for subscribe",
            ),
            (
                r#"{"type":"subscribe","channel":"deal_changes"}"#,
                "unknown channel \"deal_changes\"",
            ),
            (
                r#"{"type":"subscribe","channel":7}"#,
                "\"channel\" must be a string",
            ),
        ];
        for (input, expected) in cases {
            let err = parse(input).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
