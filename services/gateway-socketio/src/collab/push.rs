//! What every relay of the backend's collaboration pushes (`rt.chat.*`, `rt.attention.*`) and
//! of typing between instances (`rt.gateway.typing`) does with a message before it reaches a
//! socket: its size checked before it is parsed, its shape parsed once (the `data` kept as raw
//! JSON, forwarded unchanged and serialised once for all sockets), its recipients bounded. A
//! message that fails any of these is skipped, logged and counted in
//! `socketio_pushes_invalid_total{family}`; it never reaches a socket.
//!
//! And the one way they emit to rooms, [`Emitter`], which never turns an empty room list into a
//! broadcast to the whole namespace.

use serde::Deserialize;
use serde::Serialize;
use socketioxide::SocketIo;

use super::recipients::Recipients;
use crate::bus::count_broadcast_error;
use crate::config::CollabConfig;
use crate::namespace::Namespace;

/// The subject family a message came on: the `family` label of
/// `socketio_pushes_invalid_total` and the `event_kind` label of
/// `socketio_events_relayed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `rt.chat.*`.
    Chat,
    /// `rt.attention.*`.
    Attention,
    /// `rt.gateway.typing`.
    Typing,
}

impl Family {
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Attention => "attention",
            Self::Typing => "typing",
        }
    }
}

/// A push that names its recipients, so they can be bounded.
pub(crate) trait Addressed {
    /// Everyone the push names.
    fn recipients(&self) -> &Recipients;
}

/// The bounds of one message, from `collab.max_push_bytes` and `collab.max_recipients`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    max_bytes: usize,
    max_recipients: usize,
}

impl Bounds {
    pub(crate) const fn new(config: &CollabConfig) -> Self {
        Self {
            max_bytes: config.max_push_bytes,
            max_recipients: config.max_recipients,
        }
    }

    /// `payload` as a `T` (borrowing from it), when it is at most `max_push_bytes` (checked
    /// first, so an oversized message is never parsed), is UTF-8 JSON of that shape and names
    /// at most `max_recipients` participants. Otherwise `None`, the message counted as
    /// invalid and logged.
    pub(crate) fn parse<'a, T: Deserialize<'a> + Addressed>(
        self,
        family: Family,
        subject: &str,
        payload: &'a [u8],
    ) -> Option<T> {
        if payload.len() > self.max_bytes {
            invalid(family, subject, "over collab.max_push_bytes");
            return None;
        }
        let Ok(text) = std::str::from_utf8(payload) else {
            invalid(family, subject, "not UTF-8");
            return None;
        };
        let push: T = match serde_json::from_str(text) {
            Ok(push) => push,
            Err(e) => {
                tracing::warn!(
                    family = family.label(),
                    subject,
                    error = %e,
                    "push is not the JSON its subject takes; skipped"
                );
                count_invalid(family);
                return None;
            }
        };
        if push.recipients().len() > self.max_recipients {
            invalid(family, subject, "names more than collab.max_recipients");
            return None;
        }
        Some(push)
    }
}

/// Counts and logs a message that is skipped (`why` says what is wrong with it).
pub(crate) fn invalid(family: Family, subject: &str, why: &'static str) {
    tracing::warn!(
        family = family.label(),
        subject,
        why,
        "invalid push skipped"
    );
    count_invalid(family);
}

fn count_invalid(family: Family) {
    metrics::counter!("socketio_pushes_invalid_total", "family" => family.label()).increment(1);
}

/// Emits what one relay forwards, counted in `socketio_events_relayed_total` under its
/// family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Emitter<'a> {
    io: &'a SocketIo,
    family: Family,
}

impl<'a> Emitter<'a> {
    pub(crate) const fn new(io: &'a SocketIo, family: Family) -> Self {
        Self { io, family }
    }

    /// Emits `event` with `data` to the sockets of `ns` in any of `rooms` (a socket in several
    /// rooms receives it once). Nothing when `rooms` is empty: Socket.IO would take no rooms
    /// for the whole namespace.
    pub(crate) async fn emit<T: ?Sized + Serialize>(
        self,
        ns: Namespace,
        rooms: Vec<String>,
        event: &str,
        data: &T,
    ) {
        self.emit_except(ns, rooms, None, event, data).await;
    }

    /// [`Self::emit`], but not to the sockets in room `except`.
    pub(crate) async fn emit_except<T: ?Sized + Serialize>(
        self,
        ns: Namespace,
        rooms: Vec<String>,
        except: Option<String>,
        event: &str,
        data: &T,
    ) {
        if rooms.is_empty() {
            return;
        }
        let Some(operators) = self.io.of(ns.path()) else {
            return;
        };
        let operators = match except {
            Some(room) => operators.to(rooms).except(room),
            None => operators.to(rooms),
        };
        if let Err(e) = operators.emit(event, data).await {
            count_broadcast_error(&e);
        }
        metrics::counter!("socketio_events_relayed_total", "event_kind" => self.family.label())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Push<'a> {
        to: Recipients,
        #[serde(borrow)]
        data: &'a RawValue,
    }

    impl Addressed for Push<'_> {
        fn recipients(&self) -> &Recipients {
            &self.to
        }
    }

    fn bounds(max_bytes: usize, max_recipients: usize) -> Bounds {
        Bounds::new(&CollabConfig {
            max_push_bytes: max_bytes,
            max_recipients,
            ..CollabConfig::default()
        })
    }

    #[test]
    fn pushes_are_bounded_before_and_after_parsing() {
        let ok = br#"{"to": {"user_ids": ["1", "2"]}, "data": {"a": "\u00e9"}}"#;
        let push: Push<'_> = bounds(1024, 2)
            .parse(Family::Chat, "rt.chat.x", ok)
            .unwrap();
        assert_eq!(push.to.user_ids, ["1", "2"]);
        assert_eq!(
            push.data.get(),
            r#"{"a": "\u00e9"}"#,
            "data is kept as sent"
        );

        let b = bounds(ok.len() - 1, 2);
        assert!(
            b.parse::<Push<'_>>(Family::Chat, "s", ok).is_none(),
            "too large"
        );
        let b = bounds(1024, 1);
        assert!(
            b.parse::<Push<'_>>(Family::Chat, "s", ok).is_none(),
            "too many"
        );
        let b = bounds(1024, 10);
        for bad in [
            &b"not json"[..],
            b"\xff\xfe",
            br#"{"to": {}}"#,
            br#"{"to": {"user_ids": [true]}, "data": 1}"#,
            br#"[1]"#,
        ] {
            assert!(b.parse::<Push<'_>>(Family::Chat, "s", bad).is_none());
        }
    }
}
