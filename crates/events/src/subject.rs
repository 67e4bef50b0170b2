//! The NATS subject map.
//!
//! | family | subject | transport |
//! |---|---|---|
//! | domain events | `events.<domain>.<event_type>` | JetStream stream [`EVENTS_STREAM`] over `events.>` |
//! | realtime | `rt.<area>.<...>` | core NATS, ephemeral |
//! | commands | `cmd.<service>.<command>` | core NATS request/reply |
//!
//! Builders take validated pieces, so a subject built here never holds a wildcard or a stray
//! level; [`Subject::parse`] does the reverse for subjects that arrive from the wire.

use crate::EventType;
use crate::token::{TokenError, validate_token};

/// Name of the JetStream stream holding every domain event.
pub const EVENTS_STREAM: &str = "EVENTS";
/// Root token of durable domain events.
pub const EVENTS_ROOT: &str = "events";
/// Root token of ephemeral realtime traffic.
pub const REALTIME_ROOT: &str = "rt";
/// Root token of request/reply commands.
pub const COMMAND_ROOT: &str = "cmd";
/// Filter matching every domain event.
pub const ALL_EVENTS: &str = "events.>";

/// Widget pushes from the backend: `rt.widget.<widget_key>.<update|intercom_notify>`.
pub const WIDGET_PUSHES: &str = "rt.widget.*.*";
/// A deactivated widget key (payload: the key), so every gateway instance drops its sockets.
pub const WIDGET_KEY_DEACTIVATED: &str = "rt.widget_keys.deactivated";
/// Each gateway-socketio instance's socket counts, every `metrics.interval_secs`.
pub const SOCKET_METRICS: &str = "rt.metrics.sockets";
/// Discord boost requests from widgets (request/reply to the backend).
pub const DISCORD_REQUEST_SEND: &str = "cmd.discord.request_send";

/// Chat pushes from the backend, `rt.chat.<kind>`: `message`, `notification`, `channel_read`,
/// `message_read`, `alert`, `assignment_changed`, `followed_chats`.
pub const CHAT_PUSHES: &str = "rt.chat.*";
/// Attention-item changes from the backend, `rt.attention.<kind>`: `item_added`,
/// `item_removed`, `item_resolved`, `item_snoozed`, `item_restored`, `item_moved`,
/// `items_changed`, `reraised`.
pub const ATTENTION_PUSHES: &str = "rt.attention.*";
/// Typing indicators between gateway instances (not for backends).
pub const GATEWAY_TYPING: &str = "rt.gateway.typing";
/// Who may use a chat channel, asked of the backend (request/reply).
pub const CHANNEL_MEMBERS: &str = "cmd.chat.channel_members";
/// A principal's followed chats, asked of the backend (request/reply).
pub const FOLLOWED_CHATS: &str = "cmd.chat.followed_chats";
/// The JetStream key-value bucket where gateway-socketio instances keep presence and viewing.
pub const PRESENCE_BUCKET: &str = "gateway_presence";

/// Coalesced counter increments from stat-aggregator (payload [`crate::stat::StatUpdate`]).
pub const STAT_UPDATES: &str = "rt.stat.update";
/// Recompute every counter from the stream (request/reply to stat-aggregator; reply
/// [`crate::stat::RebuildReply`]).
pub const STAT_REBUILD: &str = "cmd.stat.rebuild";
/// The JetStream key-value bucket holding the public counters snapshot, read by every
/// gateway-socketio instance.
pub const STAT_SNAPSHOT_BUCKET: &str = "stat_snapshot";
/// The key of the current snapshot (payload [`crate::stat::StatSnapshot`]) in
/// [`STAT_SNAPSHOT_BUCKET`].
pub const STAT_SNAPSHOT_KEY: &str = "current";

/// Execute (or health-check) an integration endpoint (request/reply to integrations-runner,
/// queue group [`INTEGRATIONS_QUEUE`]; docs/integrations.md "NATS contract").
pub const INTEGRATION_EXECUTE: &str = "cmd.integration.execute";
/// An integration's status, usage and rate limit (request/reply to integrations-runner, queue
/// group [`INTEGRATIONS_QUEUE`]); also how a gateway learns that an integration is in a project.
pub const INTEGRATION_STATUS: &str = "cmd.integration.status";
/// The queue group every integrations-runner replica answers commands in.
pub const INTEGRATIONS_QUEUE: &str = "integrations-runner";
/// Whether a principal belongs to a project, asked of the backend (request/reply).
pub const PROJECT_ACCESS: &str = "cmd.project.access";
/// Integration room events between gateway instances (not for backends).
pub const INTEGRATION_ROOM: &str = "rt.integration.room";
/// Coalesced usage of an integration, from integrations-runner.
pub const INTEGRATION_USAGE: &str = "rt.integration.usage";
/// A verified inbound provider webhook, mirrored by integrations-runner to the gateways.
pub const INTEGRATION_WEBHOOK: &str = "rt.integration.webhook";
/// The JetStream stream where integrations-runner keeps verified inbound webhooks before it
/// acknowledges them to the provider.
pub const INTEGRATION_WEBHOOKS_STREAM: &str = "INTEGRATION_WEBHOOKS";
/// Filter of [`INTEGRATION_WEBHOOKS_STREAM`]: `integrations.webhooks.<integrationId>`.
pub const INTEGRATION_WEBHOOKS: &str = "integrations.webhooks.*";

/// `<root>.<area>.<kind>` for a push family such as [`CHAT_PUSHES`]: the `<kind>` of a
/// literal subject under `filter` (`rt.chat.*`), when it is one.
pub fn push_kind<'a>(filter: &str, subject: &'a str) -> Option<&'a str> {
    let prefix = filter.strip_suffix('*')?;
    let kind = subject.strip_prefix(prefix)?;
    (!kind.is_empty() && !kind.contains('.')).then_some(kind)
}

/// Why a subject could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// One token is not a valid literal token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The subject does not start with a known root.
    #[error("subject {0:?} is not under events., rt. or cmd.")]
    UnknownRoot(String),
    /// The subject has the wrong number of tokens for its family.
    #[error("subject {subject:?} must have {expected} tokens")]
    Arity {
        /// The subject.
        subject: String,
        /// The expected shape.
        expected: &'static str,
    },
}

/// A parsed, valid subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `events.<domain>.<event_type>`.
    Event(EventType),
    /// `rt.<area>.<...>`: the tokens after `rt`.
    Realtime(Vec<String>),
    /// `cmd.<service>.<command>`: the tokens after `cmd`.
    Command(Vec<String>),
}

impl Subject {
    /// Parses a literal subject (no wildcards) into its family.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let mut parts = subject.split('.');
        let root = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        for token in &rest {
            validate_token("subject token", token)?;
        }
        match root {
            EVENTS_ROOT => match rest.as_slice() {
                [domain, name] => Ok(Self::Event(EventType::new(domain, name)?)),
                _ => Err(SubjectError::Arity {
                    subject: subject.to_owned(),
                    expected: "3 (events.<domain>.<event_type>)",
                }),
            },
            REALTIME_ROOT if rest.len() >= 2 => Ok(Self::Realtime(
                rest.iter().map(|t| (*t).to_owned()).collect(),
            )),
            COMMAND_ROOT if rest.len() >= 2 => Ok(Self::Command(
                rest.iter().map(|t| (*t).to_owned()).collect(),
            )),
            REALTIME_ROOT | COMMAND_ROOT => Err(SubjectError::Arity {
                subject: subject.to_owned(),
                expected: "at least 3",
            }),
            _ => Err(SubjectError::UnknownRoot(subject.to_owned())),
        }
    }

    /// The subject as a string.
    pub fn to_subject_string(&self) -> String {
        match self {
            Self::Event(t) => event_subject(t),
            Self::Realtime(tokens) => format!("{REALTIME_ROOT}.{}", tokens.join(".")),
            Self::Command(tokens) => format!("{COMMAND_ROOT}.{}", tokens.join(".")),
        }
    }
}

/// `events.<domain>.<event_type>` for an event type.
pub fn event_subject(event_type: &EventType) -> String {
    format!(
        "{EVENTS_ROOT}.{}.{}",
        event_type.domain(),
        event_type.name()
    )
}

/// `events.<domain>.*`: every event of one domain.
pub fn domain_filter(domain: &str) -> Result<String, SubjectError> {
    validate_token("domain", domain)?;
    Ok(format!("{EVENTS_ROOT}.{domain}.*"))
}

/// `rt.<token>.<token>...`: an ephemeral realtime subject; every token is validated.
pub fn realtime_subject(tokens: &[&str]) -> Result<String, SubjectError> {
    family_subject(REALTIME_ROOT, tokens)
}

/// `cmd.<service>.<command>...`: a request/reply command subject; every token is validated.
pub fn command_subject(tokens: &[&str]) -> Result<String, SubjectError> {
    family_subject(COMMAND_ROOT, tokens)
}

fn family_subject(root: &'static str, tokens: &[&str]) -> Result<String, SubjectError> {
    if tokens.len() < 2 {
        return Err(SubjectError::Arity {
            subject: format!("{root}.{}", tokens.join(".")),
            expected: "at least 3",
        });
    }
    let mut subject = String::from(root);
    for token in tokens {
        validate_token("subject token", token)?;
        subject.push('.');
        subject.push_str(token);
    }
    Ok(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_event_subjects() {
        let t = EventType::parse("order.status_changed").unwrap();
        assert_eq!(event_subject(&t), "events.order.status_changed");
        assert_eq!(
            Subject::parse("events.order.status_changed").unwrap(),
            Subject::Event(t)
        );
        assert_eq!(domain_filter("deal").unwrap(), "events.deal.*");
    }

    #[test]
    fn builds_and_parses_realtime_and_command_subjects() {
        let s = realtime_subject(&["widget", "wk_1", "update"]).unwrap();
        assert_eq!(s, "rt.widget.wk_1.update");
        assert_eq!(
            Subject::parse(&s).unwrap(),
            Subject::Realtime(vec!["widget".into(), "wk_1".into(), "update".into()])
        );
        let c = command_subject(&["discord", "request_send"]).unwrap();
        assert_eq!(c, "cmd.discord.request_send");
        assert_eq!(Subject::parse(&c).unwrap().to_subject_string(), c);
    }

    #[test]
    fn push_kinds_are_the_last_token_of_their_family() {
        assert_eq!(push_kind(CHAT_PUSHES, "rt.chat.message"), Some("message"));
        assert_eq!(
            push_kind(ATTENTION_PUSHES, "rt.attention.reraised"),
            Some("reraised")
        );
        assert_eq!(push_kind(CHAT_PUSHES, "rt.chat.a.b"), None);
        assert_eq!(push_kind(CHAT_PUSHES, "rt.chat."), None);
        assert_eq!(push_kind(CHAT_PUSHES, "rt.attention.x"), None);
        for subject in [
            WIDGET_KEY_DEACTIVATED,
            SOCKET_METRICS,
            DISCORD_REQUEST_SEND,
            GATEWAY_TYPING,
            CHANNEL_MEMBERS,
            FOLLOWED_CHATS,
        ] {
            assert!(Subject::parse(subject).is_ok(), "{subject}");
        }
    }

    #[test]
    fn rejects_bad_tokens_and_shapes() {
        for bad in [
            "events.order.*",
            "events.order.>",
            "events.or der.created",
            "events..created",
            "events.order",
            "events.order.status.changed",
            "rt.widget",
            "cmd.x",
            "other.order.created",
            "",
        ] {
            assert!(Subject::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            realtime_subject(&["widget", "a.b", "update"]),
            Err(SubjectError::Token(TokenError::InvalidChar {
                found: '.',
                ..
            }))
        ));
        assert!(matches!(
            command_subject(&["discord", "*"]),
            Err(SubjectError::Token(TokenError::InvalidChar {
                found: '*',
                ..
            }))
        ));
        assert!(matches!(domain_filter("a>"), Err(SubjectError::Token(_))));
    }
}
