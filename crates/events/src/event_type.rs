//! `domain.event_type` names.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::token::{TokenError, validate_token};

/// An event type such as `order.status_changed`: a domain and an event name, each a valid
/// subject token. Kept as one string so borrowing the whole name is free.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType {
    full: String,
    dot: usize,
}

impl EventType {
    /// Builds `domain.name` from its two parts.
    pub fn new(domain: &str, name: &str) -> Result<Self, TokenError> {
        validate_token("domain", domain)?;
        validate_token("event type name", name)?;
        Ok(Self {
            full: format!("{domain}.{name}"),
            dot: domain.len(),
        })
    }

    /// Parses `domain.name`. Exactly one dot; both sides valid tokens.
    pub fn parse(value: &str) -> Result<Self, TokenError> {
        match value.split_once('.') {
            Some((domain, name)) => Self::new(domain, name),
            None => {
                validate_token("domain", value)?;
                Err(TokenError::Empty {
                    what: "event type name (expected domain.event_type)",
                })
            }
        }
    }

    /// The domain, e.g. `order`.
    pub fn domain(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The event name within the domain, e.g. `status_changed`.
    pub fn name(&self) -> &str {
        &self.full[self.dot + 1..]
    }

    /// The whole type, e.g. `order.status_changed`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.full, f)
    }
}

impl std::str::FromStr for EventType {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_domain_and_name() {
        let t = EventType::parse("deal.provider_reassigned").unwrap();
        assert_eq!(t.domain(), "deal");
        assert_eq!(t.name(), "provider_reassigned");
        assert_eq!(t.as_str(), "deal.provider_reassigned");
    }

    #[test]
    fn rejects_malformed_types() {
        for bad in [
            "deal",
            "deal.",
            ".created",
            "deal.a.b",
            "deal.*",
            "de al.created",
            "",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
    }
}
