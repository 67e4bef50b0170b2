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

/// Why a client text frame is not a valid message. The `Display` text is what the client is
/// sent in `{"type":"error","message":...}`; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is not JSON; carries the JSON parser's description of where and why.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The frame is JSON but not an object.
    #[error("message must be a JSON object")]
    NotAnObject,
    /// No `type`, or `type: null`.
    #[error("missing field \"type\"")]
    MissingType,
    /// `type` is not a string.
    #[error("field \"type\" must be a string")]
    TypeNotString,
    /// `type` is a string naming no message.
    #[error("unknown message type \"{0}\"; expected subscribe, unsubscribe or ping")]
    UnknownType(String),
    /// A subscribe or unsubscribe (the `&'static str`) without `channel`, or with `null`.
    #[error("missing field \"channel\" for {0}")]
    MissingChannel(&'static str),
    /// `channel` is not a string.
    #[error("field \"channel\" must be a string")]
    ChannelNotString,
    /// `channel` is a string naming no channel.
    #[error("unknown channel \"{0}\"; expected one of {list}", list = channel_names())]
    UnknownChannel(String),
}

fn channel_names() -> String {
    WsChannel::ALL.map(WsChannel::as_str).join(", ")
}

/// Parses a text frame.
pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
    let Some(fields) = value.as_object() else {
        return Err(ProtocolError::NotAnObject);
    };
    let kind = match fields.get("type") {
        None | Some(Value::Null) => return Err(ProtocolError::MissingType),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ProtocolError::TypeNotString),
    };
    let channel = |kind: &'static str| -> Result<WsChannel, ProtocolError> {
        let name = match fields.get("channel") {
            None | Some(Value::Null) => return Err(ProtocolError::MissingChannel(kind)),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(ProtocolError::ChannelNotString),
        };
        WsChannel::parse(name).ok_or_else(|| ProtocolError::UnknownChannel(name.to_owned()))
    };
    match kind {
        "subscribe" => channel("subscribe").map(ClientMessage::Subscribe),
        "unsubscribe" => channel("unsubscribe").map(ClientMessage::Unsubscribe),
        "ping" => Ok(ClientMessage::Ping),
        other => Err(ProtocolError::UnknownType(other.to_owned())),
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
    fn client_visible_texts_are_the_seed_wording() {
        let cases = [
            (
                r#"{"type":"dance"}"#,
                ProtocolError::UnknownType("dance".into()),
                r#"unknown message type "dance"; expected subscribe, unsubscribe or ping"#,
            ),
            (
                r#"{"type":"unsubscribe"}"#,
                ProtocolError::MissingChannel("unsubscribe"),
                r#"missing field "channel" for unsubscribe"#,
            ),
            (
                r#"{"type":"subscribe","channel":"deal_changes"}"#,
                ProtocolError::UnknownChannel("deal_changes".into()),
                r#"unknown channel "deal_changes"; expected one of order_changes, product_changes, customer_changes, shipment_changes, transaction_changes"#,
            ),
        ];
        for (input, error, text) in cases {
            assert_eq!(parse(input), Err(error), "{input}");
            assert_eq!(parse(input).unwrap_err().to_string(), text);
        }
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
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
