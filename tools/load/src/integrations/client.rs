//! One Socket.IO client of the integration events: the fleet's Engine.IO 4 / Socket.IO 5
//! handshake ([`SioProtocol::handshake_as`]), then events sent with or without an ack id and
//! the server's events and acks read back as JSON. Pings are answered while reading.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::Ws;
use crate::sio::protocol::{SioProtocol, event_args};

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An event: its name and its first argument.
    Event(String, Value),
    /// The ack of our event `id`: its first argument.
    Ack(u32, Value),
}

/// A connected client of one namespace.
pub struct Client {
    ws: Ws,
    namespace: String,
    next_ack: u32,
    /// Frames [`Client::wait_for`] read but did not want, for the next waits.
    skipped: VecDeque<Frame>,
}

/// Skipped frames kept, at most (the oldest are dropped).
const MAX_SKIPPED: usize = 1024;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and joins the namespace of `protocol` with `auth` (JSON).
    pub async fn connect(protocol: &SioProtocol, auth: &str) -> anyhow::Result<Self> {
        let (mut ws, _) = tokio_tungstenite::connect_async(protocol.request.clone())
            .await
            .context("connecting to the gateway")?;
        protocol
            .handshake_as(&mut ws, false, auth)
            .await
            .map_err(|e| anyhow!("socket.io handshake: {e}"))?;
        Ok(Self {
            ws,
            namespace: protocol.namespace.clone(),
            next_ack: 0,
            skipped: VecDeque::new(),
        })
    }

    /// Sends `event` with `payload`; with `ack`, under a new ack id, which is returned.
    pub async fn emit(
        &mut self,
        event: &str,
        payload: &Value,
        ack: bool,
    ) -> anyhow::Result<Option<u32>> {
        let id = ack.then(|| {
            self.next_ack = self.next_ack.wrapping_add(1);
            self.next_ack
        });
        let args = serde_json::to_string(&(event, payload))?;
        self.ws
            .send(Message::text(packet(&self.namespace, id, &args)))
            .await
            .with_context(|| format!("sending {event}"))?;
        Ok(id)
    }

    /// The next event or ack off the wire (not the skipped ones), answering pings; an error
    /// when the connection ends.
    pub async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => bail!("the gateway closed the connection"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("reading from the gateway"),
            };
            if text.as_str() == "2" {
                self.ws.send(Message::text("3")).await?;
                continue;
            }
            if let Some(frame) = parse(text.as_str(), &self.namespace) {
                return Ok(frame);
            }
        }
    }

    /// The first frame `wanted` accepts, within `limit`: among the frames earlier waits
    /// skipped, then the next ones. Frames it does not accept are kept for later waits.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut wanted: impl FnMut(&Frame) -> Option<T>,
    ) -> anyhow::Result<T> {
        if let Some((i, found)) = self
            .skipped
            .iter()
            .enumerate()
            .find_map(|(i, frame)| wanted(frame).map(|found| (i, found)))
        {
            self.skipped.remove(i);
            return Ok(found);
        }
        tokio::time::timeout(limit, async {
            loop {
                let frame = self.next().await?;
                if let Some(found) = wanted(&frame) {
                    return Ok(found);
                }
                if self.skipped.len() == MAX_SKIPPED {
                    self.skipped.pop_front();
                }
                self.skipped.push_back(frame);
            }
        })
        .await
        .map_err(|_| anyhow!("no {what} within {} ms", limit.as_millis()))?
    }

    /// The ack of `id`, within `limit`.
    pub async fn ack(&mut self, id: u32, limit: Duration) -> anyhow::Result<Value> {
        self.wait_for(&format!("ack {id}"), limit, |f| match f {
            Frame::Ack(got, body) if *got == id => Some(body.clone()),
            _ => None,
        })
        .await
    }

    /// The next event named `name`, within `limit`.
    pub async fn event(&mut self, name: &str, limit: Duration) -> anyhow::Result<Value> {
        self.wait_for(name, limit, |f| match f {
            Frame::Event(got, body) if got == name => Some(body.clone()),
            _ => None,
        })
        .await
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// `42<ns>,<id>[...]`: an event packet (the namespace part is left out for `/`).
fn packet(namespace: &str, ack: Option<u32>, args: &str) -> String {
    let ns = if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    };
    let id = ack.map(|id| id.to_string()).unwrap_or_default();
    format!("42{ns}{id}{args}")
}

/// An event or ack packet of `namespace`, with its first argument.
fn parse(text: &str, namespace: &str) -> Option<Frame> {
    if let Some(args) = event_args(text, namespace) {
        let name = args.get(0)?.as_str()?.to_owned();
        return Some(Frame::Event(
            name,
            args.get(1).cloned().unwrap_or(Value::Null),
        ));
    }
    let mut body = text.strip_prefix("43")?;
    if namespace != "/" {
        body = body.strip_prefix(namespace)?.strip_prefix(',')?;
    }
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let (id, data) = body.split_at(digits);
    let args: Value = serde_json::from_str(data).ok()?;
    Some(Frame::Ack(
        id.parse().ok()?,
        args.get(0).cloned().unwrap_or(Value::Null),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_and_reads_packets() {
        assert_eq!(
            packet("/admin", Some(7), r#"["integration:join",{}]"#),
            r#"42/admin,7["integration:join",{}]"#
        );
        assert_eq!(packet("/", None, r#"["x",1]"#), r#"42["x",1]"#);
        assert_eq!(
            parse(r#"43/admin,7[{"ok":true}]"#, "/admin"),
            Some(Frame::Ack(7, json!({"ok": true})))
        );
        assert_eq!(
            parse(r#"42/admin,["integration:joined",{"room":"r"}]"#, "/admin"),
            Some(Frame::Event(
                "integration:joined".to_owned(),
                json!({"room": "r"})
            ))
        );
        assert_eq!(parse(r#"43/other,1[{}]"#, "/admin"), None);
        assert_eq!(parse("40/admin,{}", "/admin"), None);
    }
}
