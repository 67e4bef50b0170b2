//! Subscription patterns: an exact type (`deal.status_changed`), a domain wildcard (`deal.*`)
//! or everything (`*`).

use events::token::validate_token;

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

impl Pattern {
    /// Parses a pattern; the error says why it can never match a well-formed type.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "*" {
            return Ok(Self::All);
        }
        let Some((domain, name)) = raw.split_once('.') else {
            return Err(format!("{raw:?} is not domain.event_type, domain.* or *"));
        };
        validate_token("domain", domain).map_err(|e| format!("{raw:?}: {e}"))?;
        if name == "*" {
            return Ok(Self::Domain(domain.to_owned()));
        }
        validate_token("event type name", name)
            .map_err(|e| format!("{raw:?}: {e} (wildcards are only domain.* or *)"))?;
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

/// Whether any of `patterns` matches `event_type`. Unparsable stored patterns match nothing.
pub fn any_matches(patterns: &[String], event_type: &str) -> bool {
    patterns
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .any(|p| p.matches(event_type))
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
}
