//! What a `/ws` client of the fleet says: read `connected`, subscribe to `order_changes`, then
//! count event frames.

use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;

use crate::fleet::{Incoming, Protocol, Ws, next_text, send_text, shorten};

/// The subscribe request every client sends.
const SUBSCRIBE: &str = r#"{"type":"subscribe","channel":"order_changes"}"#;
/// How every event frame starts (`events::surface::ws_message` of an `order.updated` event).
const EVENT_PREFIX: &str = r#"{"event":"order:updated""#;
/// What the subscribe acknowledgement holds.
const SUBSCRIBED: &str = r#""type":"subscribed""#;

/// A `/ws` client (of the gateway, or of the baseline, which speaks the same frames).
#[derive(Debug, Clone)]
pub struct WsProtocol {
    /// The WebSocket request: `ws://host:port/path`, with the session cookie if any.
    pub request: ClientRequestBuilder,
}

impl WsProtocol {
    /// A client of `url`, sending `cookie` as its `Cookie` header.
    pub fn new(url: &str, cookie: Option<&str>) -> anyhow::Result<Self> {
        let mut request = ClientRequestBuilder::new(url.parse()?);
        if let Some(cookie) = cookie {
            request = request.with_header("Cookie", cookie);
        }
        Ok(Self { request })
    }
}

/// Reads one text frame and checks that it holds `marker`.
async fn expect_text(ws: &mut Ws, marker: &str) -> Result<(), String> {
    let text = next_text(ws)
        .await
        .map_err(|why| format!("waiting for {marker}: {why}"))?;
    if text.contains(marker) {
        Ok(())
    } else {
        Err(format!("expected {marker}, got {}", shorten(&text)))
    }
}

impl Protocol for WsProtocol {
    fn request(&self) -> ClientRequestBuilder {
        self.request.clone()
    }

    /// Reads `connected`, and subscribes when asked to.
    async fn handshake(&self, ws: &mut Ws, subscribe: bool) -> Result<(), String> {
        expect_text(ws, r#""type":"connected""#).await?;
        if subscribe {
            send_text(ws, "subscribe", SUBSCRIBE.to_owned()).await?;
            expect_text(ws, SUBSCRIBED).await?;
        }
        Ok(())
    }

    fn subscribe_message(&self) -> String {
        SUBSCRIBE.to_owned()
    }

    /// Every frame is an event, but the acknowledgement of a subscribe in flight.
    fn classify(&self, text: &str, awaiting_ack: bool) -> Incoming {
        if awaiting_ack && text.contains(SUBSCRIBED) {
            Incoming::Subscribed(None)
        } else if text.starts_with(EVENT_PREFIX) {
            Incoming::Counted(0)
        } else {
            Incoming::CountedOdd(0, shorten(text))
        }
    }

    fn counted_kinds(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        let protocol = WsProtocol::new("ws://127.0.0.1:1/ws", Some("connect.sid=x")).unwrap();
        let event = r#"{"event":"order:updated","data":{}}"#;
        assert_eq!(protocol.classify(event, false), Incoming::Counted(0));
        assert_eq!(protocol.classify(event, true), Incoming::Counted(0));
        assert_eq!(
            protocol.classify(r#"{"type":"subscribed","channel":"order_changes"}"#, true),
            Incoming::Subscribed(None)
        );
        assert!(matches!(
            protocol.classify(r#"{"type":"error"}"#, false),
            Incoming::CountedOdd(0, _)
        ));
    }
}
