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
