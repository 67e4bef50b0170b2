//! Keys and values of the presence bucket. Every key token is `[A-Za-z0-9_-]`: instance ids
//! are UUIDs, channel ids are validated tokens, and participant ids (arbitrary strings) are
//! base64url without padding.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `i.<instance>.live` | `{"at"}` | the instance, every `presence.heartbeat_ms` |
//! | `i.<instance>.p.<kind>.<b64id>` | `{"status": "online" \| "away"}` | the instance, while the participant has sockets there (and for the grace after) |
//! | `i.<instance>.v.<channel>.<kind>.<b64id>` | `{}` | the instance, while a socket of the participant there views the channel |
//! | `seen.<kind>.<b64id>` | `{"at"}` | the instance whose removal took the participant offline (the reaper for a dead or departed instance) |

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Activity;
use crate::collab::channel::ChannelId;
use crate::collab::identity::{Kind, Participant};

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key<'a> {
    /// An instance's heartbeat.
    Live { instance: &'a str },
    /// A participant with sockets on an instance.
    Presence { instance: &'a str, who: Participant },
    /// A participant viewing a channel on an instance.
    Viewing {
        instance: &'a str,
        channel: ChannelId,
        who: Participant,
    },
    /// When a participant was last seen.
    Seen { who: Participant },
}

impl<'a> Key<'a> {
    /// `None` for keys this version does not write (or that do not decode).
    pub(super) fn parse(key: &'a str) -> Option<Self> {
        let mut parts = key.split('.');
        match parts.next()? {
            "i" => {
                let instance = parts.next().filter(|i| !i.is_empty())?;
                let key = match parts.next()? {
                    "live" => Self::Live { instance },
                    "p" => Self::Presence {
                        instance,
                        who: participant(parts.next()?, parts.next()?)?,
                    },
                    "v" => Self::Viewing {
                        instance,
                        channel: ChannelId::parse(parts.next()?)?,
                        who: participant(parts.next()?, parts.next()?)?,
                    },
                    _ => return None,
                };
                parts.next().is_none().then_some(key)
            }
            "seen" => {
                let who = participant(parts.next()?, parts.next()?)?;
                parts.next().is_none().then_some(Self::Seen { who })
            }
            _ => None,
        }
    }
}

fn participant(kind: &str, id: &str) -> Option<Participant> {
    let kind = match kind {
        "user" => Kind::User,
        "profile" => Kind::Profile,
        _ => return None,
    };
    let raw = URL_SAFE_NO_PAD.decode(id).ok()?;
    Participant::new(kind, std::str::from_utf8(&raw).ok()?)
}

fn encoded(who: &Participant) -> String {
    format!(
        "{}.{}",
        who.kind.as_str(),
        URL_SAFE_NO_PAD.encode(who.id.as_bytes())
    )
}

/// `i.<instance>.live`.
pub(super) fn live(instance: &str) -> String {
    format!("i.{instance}.live")
}

/// `i.<instance>.p.<kind>.<b64id>`.
pub(super) fn presence(instance: &str, who: &Participant) -> String {
    format!("i.{instance}.p.{}", encoded(who))
}

/// `i.<instance>.v.<channel>.<kind>.<b64id>`.
pub(super) fn viewing(instance: &str, channel: &ChannelId, who: &Participant) -> String {
    format!("i.{instance}.v.{channel}.{}", encoded(who))
}

/// `seen.<kind>.<b64id>`.
pub(super) fn seen(who: &Participant) -> String {
    format!("seen.{}", encoded(who))
}

/// The stream subject filter of every key of `instance`, for a purge (`prefix` is the
/// bucket's subject prefix, `$KV.<bucket>.`).
pub(super) fn instance_filter(prefix: &str, instance: &str) -> String {
    format!("{prefix}i.{instance}.>")
}

/// The value of a presence key.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PresenceValue {
    pub(super) status: Activity,
}

/// The value of a live or seen key.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AtValue {
    #[serde(with = "events::envelope::timestamp")]
    pub(super) at: OffsetDateTime,
}

/// A time as the registry keeps it: Unix milliseconds (the precision every surface shows).
pub(super) type Millis = i64;

/// `at` in [`Millis`].
pub(super) fn millis(at: OffsetDateTime) -> Millis {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// [`Millis`] as a time (the epoch when out of range).
pub(super) fn time_of(ms: Millis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `{"at": <ms as RFC 3339>}`, serialised.
pub(super) fn at_value(ms: Millis) -> Vec<u8> {
    serde_json::to_vec(&AtValue { at: time_of(ms) }).unwrap_or_default()
}

/// An instance id as the replica keeps it.
pub(super) fn instance_id(raw: &str) -> Arc<str> {
    Arc::from(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Participant {
        Participant::new(Kind::User, id).unwrap()
    }

    #[test]
    fn keys_round_trip_with_any_participant_id() {
        let odd = user("a.b *>/é");
        let k = presence("inst-1", &odd);
        assert!(
            k.split('.').all(|t| t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')),
            "{k}"
        );
        assert_eq!(
            Key::parse(&k),
            Some(Key::Presence {
                instance: "inst-1",
                who: odd.clone()
            })
        );
        let c = ChannelId::parse("deal-555").unwrap();
        assert_eq!(
            Key::parse(&viewing("x", &c, &odd)),
            Some(Key::Viewing {
                instance: "x",
                channel: c,
                who: odd.clone()
            })
        );
        assert_eq!(Key::parse(&seen(&odd)), Some(Key::Seen { who: odd }));
        assert_eq!(Key::parse(&live("x")), Some(Key::Live { instance: "x" }));
        let profile = Participant::new(Kind::Profile, "p-9").unwrap();
        assert_eq!(
            Key::parse(&seen(&profile)),
            Some(Key::Seen { who: profile })
        );
    }

    #[test]
    fn foreign_keys_are_ignored() {
        for bad in [
            "",
            "i",
            "i..live",
            "i.x.live.extra",
            "i.x.p.user",
            "i.x.p.robot.YQ",
            "i.x.p.user.***",
            "i.x.v.bad*chan.user.YQ",
            "seen.user",
            "other.key",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_are_milliseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let ms = millis(at);
        assert_eq!(ms, 1_700_000_000_123);
        let value: AtValue = serde_json::from_slice(&at_value(ms)).unwrap();
        assert_eq!(millis(value.at), ms);
    }
}
