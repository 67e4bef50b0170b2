//! A minimal Engine.IO v4 / Socket.IO v5 client protocol for the fleet.
//!
//! Only what the load needs: the `websocket` transport from the start (no long-polling, no
//! upgrade), one namespace, text packets only, `2` (ping) answered with `3` (pong), events
//! with and without ack ids.

use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;

use crate::fleet::{Incoming, Protocol, Ws, next_text, send_text, shorten};

/// Ack id of the subscribe request.
const SUBSCRIBE_ACK_ID: u32 = 1;

/// What every client of a Socket.IO fleet says.
#[derive(Debug, Clone)]
pub struct SioProtocol {
    /// The WebSocket request (`ws://host:port/socket.io/?EIO=4&transport=websocket`).
    pub request: ClientRequestBuilder,
    /// Namespace, e.g. `/admin`.
    pub namespace: String,
    /// The `auth` object of the namespace connect, as JSON.
    pub auth: String,
    /// Join the namespace after the Engine.IO handshake (false: stay an Engine.IO session only,
    /// to separate its memory from the namespace's).
    pub join: bool,
    /// The `subscribe` payload, as JSON.
    pub subscribe: String,
    /// Event names counted as deliveries.
    pub counted: Vec<String>,
}

impl SioProtocol {
    /// The Engine.IO WebSocket request of a server at `ws://host:port`.
    pub fn request(base: &str) -> anyhow::Result<ClientRequestBuilder> {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            base.trim_end_matches('/')
        );
        Ok(ClientRequestBuilder::new(url.parse()?))
    }

    fn subscribe_packet(&self) -> String {
        format!(
            "42{},{SUBSCRIBE_ACK_ID}[\"subscribe\",{}]",
            self.namespace, self.subscribe
        )
    }

    /// [`Protocol::handshake`] with `auth` (JSON) as the namespace connect's `auth` instead of
    /// [`Self::auth`]: one token per client.
    pub async fn handshake_as(
        &self,
        ws: &mut Ws,
        subscribe: bool,
        auth: &str,
    ) -> Result<(), String> {
        let open = next_text(ws).await?;
        if !open.starts_with("0{") {
            return Err(format!("expected the Engine.IO open packet, got {open}"));
        }
        if !self.join {
            return Ok(());
        }
        let join = format!("40{},{auth}", self.namespace);
        send_text(ws, "namespace connect", join).await?;
        self.until(ws, "the namespace connect", |p| match p {
            Packet::Connected => Some(Ok(())),
            Packet::ConnectError(data) => Some(Err(format!("connect_error {data}"))),
            _ => None,
        })
        .await?;
        if subscribe {
            send_text(ws, "subscribe", self.subscribe_packet()).await?;
            self.until(ws, "the subscribe ack", |p| match p {
                Packet::Ack(SUBSCRIBE_ACK_ID, data) => Some(check_subscribe_ack(data)),
                _ => None,
            })
            .await?;
        }
        Ok(())
    }

    /// Reads packets until `done` says which one ends the step, answering pings and skipping
    /// events (e.g. `socket_metrics_updated` right after the join).
    async fn until(
        &self,
        ws: &mut Ws,
        expected: &str,
        done: impl Fn(&Packet<'_>) -> Option<Result<(), String>>,
    ) -> Result<(), String> {
        loop {
            let text = next_text(ws).await?;
            let packet = parse(&text, &self.namespace);
            if let Some(result) = done(&packet) {
                return result;
            }
            match packet {
                Packet::Ping => send_text(ws, "pong", "3".to_owned()).await?,
                Packet::Event(_) => {}
                _ => return Err(format!("expected {expected}, got {text}")),
            }
        }
    }
}

impl Protocol for SioProtocol {
    fn request(&self) -> ClientRequestBuilder {
        self.request.clone()
    }

    /// Reads the Engine.IO open packet, joins the namespace, and subscribes when asked to.
    async fn handshake(&self, ws: &mut Ws, subscribe: bool) -> Result<(), String> {
        self.handshake_as(ws, subscribe, &self.auth).await
    }

    fn subscribe_message(&self) -> String {
        self.subscribe_packet()
    }

    fn classify(&self, text: &str, _awaiting_ack: bool) -> Incoming {
        match parse(text, &self.namespace) {
            Packet::Event(name) => match self.counted.iter().position(|c| c == name) {
                Some(i) => Incoming::Counted(i),
                None => Incoming::Uncounted,
            },
            Packet::Ping => Incoming::Reply("3"),
            Packet::Ack(SUBSCRIBE_ACK_ID, data) => {
                Incoming::Subscribed(check_subscribe_ack(data).err())
            }
            Packet::EngineClose | Packet::Disconnected => Incoming::Ended(shorten(text)),
            _ => Incoming::Unexpected(shorten(text)),
        }
    }

    fn counted_kinds(&self) -> usize {
        self.counted.len()
    }
}

/// A Socket.IO packet of the fleet's namespace, as this tool reads it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Packet<'a> {
    /// Engine.IO `2`: answer `3`.
    Ping,
    /// Engine.IO `1`.
    EngineClose,
    /// Socket.IO `0` (connect ok).
    Connected,
    /// Socket.IO `4` (connect_error) with its data.
    ConnectError(&'a str),
    /// Socket.IO `1` (namespace disconnect).
    Disconnected,
    /// Socket.IO `2` (event): its name.
    Event(&'a str),
    /// Socket.IO `3` (ack): its id and data.
    Ack(u32, &'a str),
    /// Anything else.
    Other,
}

/// What `text` is, read as a packet of `namespace`.
pub(super) fn parse<'a>(text: &'a str, namespace: &str) -> Packet<'a> {
    match text.as_bytes().first() {
        Some(b'2') => return Packet::Ping,
        Some(b'1') => return Packet::EngineClose,
        Some(b'4') => {}
        _ => return Packet::Other,
    }
    let rest = &text[1..];
    let Some(kind) = rest.as_bytes().first().copied() else {
        return Packet::Other;
    };
    let mut body = &rest[1..];
    if namespace != "/" {
        let Some(after) = body
            .strip_prefix(namespace)
            .and_then(|b| b.strip_prefix(','))
        else {
            return Packet::Other;
        };
        body = after;
    }
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let (id, data) = body.split_at(digits);
    match kind {
        b'0' => Packet::Connected,
        b'1' => Packet::Disconnected,
        b'4' => Packet::ConnectError(data),
        b'2' => {
            let name = data
                .strip_prefix("[\"")
                .and_then(|d| d.split_once('"'))
                .map_or("", |(name, _)| name);
            Packet::Event(name)
        }
        b'3' => Packet::Ack(id.parse().unwrap_or(0), data),
        _ => Packet::Other,
    }
}

/// The arguments of an event packet of `namespace` (`42/admin,["presence:update",{...}]` gives
/// the whole array, the event name first), or `None` for any other packet or unreadable JSON.
pub(crate) fn event_args(text: &str, namespace: &str) -> Option<serde_json::Value> {
    let mut body = text.strip_prefix("42")?;
    if namespace != "/" {
        body = body.strip_prefix(namespace)?.strip_prefix(',')?;
    }
    let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_array)
}

/// The ack data is `[{"subscribed": [...], "refused": [...]}]`; nothing may be refused.
fn check_subscribe_ack(data: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("subscribe ack not JSON: {e}"))?;
    let reply = &value[0];
    let joined = reply["subscribed"].as_array().map_or(0, Vec::len);
    let refused = reply["refused"].as_array().map_or(1, Vec::len);
    if joined == 0 || refused > 0 {
        return Err(format!(
            "subscribe ack {}",
            data.chars().take(120).collect::<String>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets() {
        let ns = "/admin";
        assert_eq!(parse("2", ns), Packet::Ping);
        assert_eq!(parse("1", ns), Packet::EngineClose);
        assert_eq!(parse("40/admin,{\"sid\":\"x\"}", ns), Packet::Connected);
        assert_eq!(
            parse("44/admin,{\"message\":\"invalid token: expired\"}", ns),
            Packet::ConnectError("{\"message\":\"invalid token: expired\"}")
        );
        assert_eq!(
            parse("42/admin,[\"orders_updated\",{\"id\":1}]", ns),
            Packet::Event("orders_updated")
        );
        assert_eq!(
            parse("43/admin,1[{\"subscribed\":[]}]", ns),
            Packet::Ack(1, "[{\"subscribed\":[]}]")
        );
        assert_eq!(parse("41/admin,", ns), Packet::Disconnected);
        assert_eq!(parse("42/other,[\"x\"]", ns), Packet::Other);
        assert_eq!(parse("0{\"sid\":\"x\"}", ns), Packet::Other);
    }

    #[test]
    fn reads_event_arguments() {
        let ns = "/admin";
        let args = event_args(
            r#"42/admin,["presence:update",{"kind":"user","id":"u-1","status":"away"}]"#,
            ns,
        )
        .unwrap();
        assert_eq!(args[0], "presence:update");
        assert_eq!(args[1]["status"], "away");
        assert_eq!(event_args(r#"42/admin,7["x",1]"#, ns).unwrap()[1], 1);
        assert_eq!(event_args(r#"43/admin,1[{}]"#, ns), None);
        assert_eq!(event_args(r#"42/other,["x"]"#, ns), None);
        assert_eq!(event_args(r#"42/admin,["x""#, ns), None);
    }

    #[test]
    fn checks_subscribe_acks() {
        assert!(
            check_subscribe_ack(r#"[{"subscribed":["entity:orders:101"],"refused":[]}]"#).is_ok()
        );
        assert!(
            check_subscribe_ack(
                r#"[{"subscribed":[],"refused":[{"target":"payload","reason":"x"}]}]"#
            )
            .is_err()
        );
    }

    #[test]
    fn classifies_frames() {
        let protocol = SioProtocol {
            request: SioProtocol::request("ws://127.0.0.1:1").unwrap(),
            namespace: "/admin".to_owned(),
            auth: "{}".to_owned(),
            join: true,
            subscribe: "{}".to_owned(),
            counted: vec!["orders_updated".to_owned()],
        };
        assert_eq!(
            protocol.classify("42/admin,[\"orders_updated\",{}]", false),
            Incoming::Counted(0)
        );
        assert_eq!(
            protocol.classify("42/admin,[\"socket_metrics_updated\",{}]", false),
            Incoming::Uncounted
        );
        assert_eq!(protocol.classify("2", false), Incoming::Reply("3"));
        assert_eq!(
            protocol.classify("43/admin,1[{\"subscribed\":[\"x\"],\"refused\":[]}]", true),
            Incoming::Subscribed(None)
        );
        assert!(matches!(protocol.classify("1", false), Incoming::Ended(_)));
    }
}
