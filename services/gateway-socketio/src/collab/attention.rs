//! The backend's attention-item changes, `rt.attention.<kind>` `{"to", "data", "legacy"?}`,
//! relayed by every instance as `attention:<kind>` to the `/admin` sockets of `to.user_ids`
//! (the operators; profiles have no attention items).
//!
//! Older panels listen for `attention:reraised` only: `"legacy": "alongside"` emits it with the
//! same `data` right after the modern event, `"instead"` emits it alone; absent, only the
//! modern event. `rt.attention.reraised` is `attention:reraised` alone, whatever `legacy` says.
//! Any other `legacy`, an unknown kind or a push out of bounds is skipped and counted
//! ([`super::push`]).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use super::identity::Kind;
use super::push::{Addressed, Bounds, Emitter, Family, invalid};
use super::recipients::Recipients;
use crate::bus::{next, subscribe};
use crate::gateway::Gateway;
use crate::namespace::Namespace;

/// The `<kind>` of `rt.attention.<kind>`, parsed once per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionKind {
    ItemAdded,
    ItemRemoved,
    ItemResolved,
    ItemSnoozed,
    ItemRestored,
    ItemMoved,
    /// A bulk change.
    ItemsChanged,
    /// The legacy event itself.
    Reraised,
}

const RERAISED: &str = "attention:reraised";

impl AttentionKind {
    fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "item_added" => Self::ItemAdded,
            "item_removed" => Self::ItemRemoved,
            "item_resolved" => Self::ItemResolved,
            "item_snoozed" => Self::ItemSnoozed,
            "item_restored" => Self::ItemRestored,
            "item_moved" => Self::ItemMoved,
            "items_changed" => Self::ItemsChanged,
            "reraised" => Self::Reraised,
            _ => return None,
        })
    }

    const fn event(self) -> &'static str {
        match self {
            Self::ItemAdded => "attention:item_added",
            Self::ItemRemoved => "attention:item_removed",
            Self::ItemResolved => "attention:item_resolved",
            Self::ItemSnoozed => "attention:item_snoozed",
            Self::ItemRestored => "attention:item_restored",
            Self::ItemMoved => "attention:item_moved",
            Self::ItemsChanged => "attention:items_changed",
            Self::Reraised => RERAISED,
        }
    }

    /// The events one push of this kind is emitted as, in order.
    fn events(self, legacy: Option<Legacy>) -> impl Iterator<Item = &'static str> {
        let events = match (self, legacy) {
            (Self::Reraised, _) | (_, Some(Legacy::Instead)) => [Some(RERAISED), None],
            (modern, None) => [Some(modern.event()), None],
            (modern, Some(Legacy::Alongside)) => [Some(modern.event()), Some(RERAISED)],
        };
        events.into_iter().flatten()
    }
}

/// What an attention push says about `attention:reraised` for older panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Legacy {
    /// The modern event, then `attention:reraised`.
    Alongside,
    /// `attention:reraised` only.
    Instead,
}

/// `rt.attention.<kind>`.
#[derive(Debug, Deserialize)]
struct AttentionPush<'a> {
    to: Recipients,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    legacy: Option<Legacy>,
}

impl Addressed for AttentionPush<'_> {
    fn recipients(&self) -> &Recipients {
        &self.to
    }
}

/// Relays the backend's attention-item changes until `shutdown`.
pub(crate) async fn relay(io: SocketIo, g: Arc<Gateway>, shutdown: CancellationToken) {
    let Some(mut sub) = subscribe(&g.nats, events::subject::ATTENTION_PUSHES, &shutdown).await
    else {
        return;
    };
    let bounds = Bounds::new(&g.config.collab);
    while let Some(message) = next(&mut sub, &shutdown).await {
        relay_push(&io, bounds, &message.subject, &message.payload).await;
    }
}

async fn relay_push(io: &SocketIo, bounds: Bounds, subject: &str, payload: &[u8]) {
    let Some(kind) = events::subject::push_kind(events::subject::ATTENTION_PUSHES, subject)
        .and_then(AttentionKind::parse)
    else {
        invalid(Family::Attention, subject, "unknown attention push kind");
        return;
    };
    let Some(push) = bounds.parse::<AttentionPush<'_>>(Family::Attention, subject, payload) else {
        return;
    };
    let out = Emitter::new(io, Family::Attention);
    for event in kind.events(push.legacy) {
        out.emit(
            Namespace::Admin,
            push.to.rooms(Kind::User),
            event,
            push.data,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_decides_the_events() {
        let events = |kind: AttentionKind, legacy| kind.events(legacy).collect::<Vec<_>>();
        let added = AttentionKind::parse("item_added").unwrap();
        assert_eq!(events(added, None), ["attention:item_added"]);
        assert_eq!(
            events(added, Some(Legacy::Alongside)),
            ["attention:item_added", "attention:reraised"]
        );
        assert_eq!(events(added, Some(Legacy::Instead)), ["attention:reraised"]);
        let reraised = AttentionKind::parse("reraised").unwrap();
        for legacy in [None, Some(Legacy::Alongside), Some(Legacy::Instead)] {
            assert_eq!(events(reraised, legacy), ["attention:reraised"]);
        }
        for kind in [
            "item_added",
            "item_removed",
            "item_resolved",
            "item_snoozed",
            "item_restored",
            "item_moved",
            "items_changed",
        ] {
            let parsed = AttentionKind::parse(kind).unwrap();
            assert_eq!(parsed.event(), format!("attention:{kind}"));
            assert_eq!(events(parsed, None), [parsed.event()]);
            assert_eq!(
                events(parsed, Some(Legacy::Alongside)),
                [parsed.event(), RERAISED]
            );
        }
        assert_eq!(AttentionKind::parse("item_deleted"), None);
    }

    #[test]
    fn an_unknown_legacy_is_refused() {
        let bounds = Bounds::new(&crate::config::CollabConfig::default());
        let parse = |raw: &'static [u8]| {
            bounds
                .parse::<AttentionPush<'_>>(Family::Attention, "rt.attention.item_added", raw)
                .map(|p| p.legacy)
        };
        assert_eq!(parse(br#"{"to": {}, "data": 1}"#), Some(None));
        assert_eq!(
            parse(br#"{"to": {}, "data": 1, "legacy": "instead"}"#),
            Some(Some(Legacy::Instead))
        );
        assert_eq!(parse(br#"{"to": {}, "data": 1, "legacy": "both"}"#), None);
        assert_eq!(parse(br#"{"to": {}, "data": 1, "legacy": true}"#), None);
    }
}
