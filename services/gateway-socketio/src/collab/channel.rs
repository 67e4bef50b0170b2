//! Chat channel ids and the rooms of a channel.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::CollabError;

/// A chat channel id: 1 to 128 characters of `[A-Za-z0-9_-]` (a UUID, `deal-555`...).
/// Validated once where it enters (client event, backend push), so room names and
/// key-value keys built from it need no escaping.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChannelId(Arc<str>);

impl ChannelId {
    /// `None` when `raw` is not a valid id.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        events::token::validate_token("channel_id", raw)
            .ok()
            .map(|()| Self(Arc::from(raw)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Sockets viewing the channel (`channel:viewing`), on `/admin`.
    pub(crate) fn view_room(&self) -> String {
        format!("view:{}", self.0)
    }

    /// Sockets whose token names the channel (`collab.membership = "claim"`).
    pub(crate) fn member_room(&self) -> String {
        format!("member:{}", self.0)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ChannelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&raw).ok_or_else(|| {
            serde::de::Error::custom("channel_id: 1 to 128 characters of [A-Za-z0-9_-]")
        })
    }
}

/// The payload of `typing:start`, `typing:stop`, `channel:viewing` and `channel:left`
/// (`proto/schemas/socketio-channel-ref.schema.json`): `{"channel_id"}`, read once into a
/// [`ChannelId`]. `None` (no payload, or not JSON) and anything else are refused alike.
pub(crate) fn channel_ref(payload: Option<serde_json::Value>) -> Result<ChannelId, CollabError> {
    #[derive(Deserialize)]
    struct ChannelRef {
        channel_id: ChannelId,
    }
    payload
        .and_then(|v| serde_json::from_value::<ChannelRef>(v).ok())
        .map(|c| c.channel_id)
        .ok_or(CollabError::Malformed(CHANNEL_REF))
}

/// What [`channel_ref`] expects, as the refusal says it.
const CHANNEL_REF: &str = r#"expected {"channel_id": "<1 to 128 of [A-Za-z0-9_-]>"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_tokens() {
        assert!(ChannelId::parse("deal-555").is_some());
        assert!(ChannelId::parse("0192f0c2-8a6e-7b1c-9f00-3c1d2e4f5a6b").is_some());
        for bad in ["", "a.b", "a b", "a*", "view:x", &"x".repeat(129)] {
            assert!(ChannelId::parse(bad).is_none(), "{bad:?}");
        }
        let id: ChannelId = serde_json::from_str("\"c1\"").unwrap();
        assert_eq!(id.view_room(), "view:c1");
        assert!(serde_json::from_str::<ChannelId>("\"c.1\"").is_err());
    }
}
