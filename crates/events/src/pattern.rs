//! Subscription patterns: an exact type (`deal.status_changed`), a domain wildcard (`deal.*`)
//! or everything (`*`).
//!
//! The one matching implementation of the platform: webhook subscriptions
//! (webhook-dispatcher) and counter definitions (stat-aggregator) both use it, so `deal.*`
//! means the same everywhere. Patterns are parsed once, where they enter (an API body, a
//! configuration file, a stored row); events are matched against parsed patterns only.
//!
//! With the `sqlx` feature a [`Pattern`] is also a PostgreSQL `TEXT` value (`TEXT[]` for a
//! list): a stored value that does not parse is a decode error, never a pattern that silently
//! matches nothing.

use crate::token::{TokenError, validate_token};

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`.
    All,
    /// `domain.*`.
    Domain(String),
    /// `domain.event_type`.
    Exact(String),
}

/// Why a string is not a pattern; each says why it could never match a well-formed type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Neither `*` nor `domain.<something>`.
    #[error("{raw:?} is not domain.event_type, domain.* or *")]
    Shape {
        /// The refused input.
        raw: String,
    },
    /// The domain is not a token.
    #[error("{raw:?}: {source}")]
    Domain {
        /// The refused input.
        raw: String,
        /// What is wrong with the domain.
        source: TokenError,
    },
    /// The event type name is neither a token nor `*`.
    #[error("{raw:?}: {source} (wildcards are only domain.* or *)")]
    Name {
        /// The refused input.
        raw: String,
        /// What is wrong with the name.
        source: TokenError,
    },
}

impl Pattern {
    /// Parses a pattern; only its canonical spelling (see [`Pattern`]'s `Display`) is accepted.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw == "*" {
            return Ok(Self::All);
        }
        let Some((domain, name)) = raw.split_once('.') else {
            return Err(PatternError::Shape {
                raw: raw.to_owned(),
            });
        };
        validate_token("domain", domain).map_err(|source| PatternError::Domain {
            raw: raw.to_owned(),
            source,
        })?;
        if name == "*" {
            return Ok(Self::Domain(domain.to_owned()));
        }
        validate_token("event type name", name).map_err(|source| PatternError::Name {
            raw: raw.to_owned(),
            source,
        })?;
        Ok(Self::Exact(raw.to_owned()))
    }

    /// Whether an event type matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Exact(t) => t == event_type,
            Self::Domain(d) => event_type
                .split_once('.')
                .is_some_and(|(domain, _)| domain == d),
        }
    }
}

/// The canonical spelling, which [`Pattern::parse`] reads back to the same pattern.
impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Domain(d) => write!(f, "{d}.*"),
            Self::Exact(t) => f.write_str(t),
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads the canonical spelling; anything else is an error naming what is wrong.
impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Whether any of `patterns` matches `event_type`.
pub fn any_matches(patterns: &[Pattern], event_type: &str) -> bool {
    patterns.iter().any(|p| p.matches(event_type))
}

#[cfg(feature = "sqlx")]
mod postgres {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    use super::Pattern;

    /// Stored as `TEXT` (`event_types TEXT[]`); a stored value that does not parse is a decode
    /// error, never a pattern that silently matches nothing.
    impl Type<Postgres> for Pattern {
        fn type_info() -> PgTypeInfo {
            <&str as Type<Postgres>>::type_info()
        }

        fn compatible(ty: &PgTypeInfo) -> bool {
            <&str as Type<Postgres>>::compatible(ty)
        }
    }

    impl PgHasArrayType for Pattern {
        fn array_type_info() -> PgTypeInfo {
            <&str as PgHasArrayType>::array_type_info()
        }

        fn array_compatible(ty: &PgTypeInfo) -> bool {
            <&str as PgHasArrayType>::array_compatible(ty)
        }
    }

    impl<'r> Decode<'r, Postgres> for Pattern {
        fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
            let raw = <&str as Decode<Postgres>>::decode(value)?;
            Ok(Self::parse(raw)?)
        }
    }

    impl Encode<'_, Postgres> for Pattern {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <String as Encode<Postgres>>::encode(self.to_string(), buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_their_domain_only() {
        let deal = Pattern::parse("deal.*").unwrap();
        assert!(deal.matches("deal.created"));
        assert!(deal.matches("deal.status_changed"));
        assert!(!deal.matches("order.created"));
        assert!(!deal.matches("dealer.created"));
        assert!(Pattern::parse("*").unwrap().matches("order.created"));
        let exact = Pattern::parse("deal.status_changed").unwrap();
        assert!(exact.matches("deal.status_changed") && !exact.matches("deal.created"));
    }

    #[test]
    fn patterns_that_can_never_match_are_rejected() {
        for bad in [
            "",
            "deal",
            "deal.",
            ".created",
            "*.created",
            "deal.status*",
            "deal.a.b",
            "de al.*",
            "**",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_are_typed_and_keep_their_messages() {
        assert!(matches!(
            Pattern::parse("deal"),
            Err(PatternError::Shape { .. })
        ));
        assert!(matches!(
            Pattern::parse("*.created"),
            Err(PatternError::Domain { .. })
        ));
        let err = Pattern::parse("deal.status*").unwrap_err();
        assert!(matches!(err, PatternError::Name { .. }));
        assert!(
            err.to_string()
                .ends_with("(wildcards are only domain.* or *)"),
            "{err}"
        );
    }

    #[test]
    fn display_is_the_canonical_spelling() {
        for raw in ["*", "deal.*", "deal.status_changed"] {
            let p = Pattern::parse(raw).unwrap();
            assert_eq!(p.to_string(), raw);
            assert_eq!(serde_json::to_value(&p).unwrap(), raw);
            assert_eq!(serde_json::from_value::<Pattern>(raw.into()).unwrap(), p);
        }
        assert!(serde_json::from_value::<Pattern>("deal.status*".into()).is_err());
    }
}
