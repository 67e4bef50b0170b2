//! Validated subject tokens.
//!
//! Every piece of data that ends up inside a NATS subject (a domain, an event type name, an
//! entity id, a widget key) must be a single, literal token: otherwise a publisher could inject
//! a wildcard (`*`, `>`) or an extra level (`.`) and reach subscribers it was never meant to.

use std::fmt;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 128;

/// Why a string is not a valid subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("{what} is empty")]
    Empty {
        /// What the token names (`domain`, `event type`, `entity id`...).
        what: &'static str,
    },
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("{what} is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong {
        /// What the token names.
        what: &'static str,
    },
    /// The token holds a character outside `[A-Za-z0-9_-]`.
    #[error("{what} {value:?} contains {found:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    InvalidChar {
        /// What the token names.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The first character that is not allowed.
        found: char,
    },
}

/// Checks that `value` is one literal subject token: 1 to [`MAX_TOKEN_LEN`] bytes of
/// `[A-Za-z0-9_-]`. `what` names the token in the error.
pub fn validate_token(what: &'static str, value: &str) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::Empty { what });
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong { what });
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(found) => Err(TokenError::InvalidChar {
            what,
            value: value.to_owned(),
            found,
        }),
        None => Ok(()),
    }
}

/// A string known to be a valid subject token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// Validates `value` as a token; `what` names it in the error.
    pub fn new(what: &'static str, value: impl Into<String>) -> Result<Self, TokenError> {
        let value = value.into();
        validate_token(what, &value)?;
        Ok(Self(value))
    }

    /// The token as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Token {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_tokens() {
        for ok in [
            "order",
            "status_changed",
            "101",
            "64b2c3d4e5f6789012345678",
            "a-b",
        ] {
            assert_eq!(validate_token("t", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_dots_wildcards_whitespace_and_empty() {
        for (bad, found) in [
            ("a.b", '.'),
            ("*", '*'),
            (">", '>'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("ü", 'ü'),
        ] {
            match validate_token("domain", bad) {
                Err(TokenError::InvalidChar { found: f, .. }) => assert_eq!(f, found, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert_eq!(
            validate_token("entity id", ""),
            Err(TokenError::Empty { what: "entity id" })
        );
        assert_eq!(
            validate_token("entity id", &"x".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong { what: "entity id" })
        );
    }

    #[test]
    fn error_names_the_token() {
        let err = Token::new("domain", "or.der").unwrap_err();
        assert_eq!(
            err.to_string(),
            "domain \"or.der\" contains '.'; only A-Z, a-z, 0-9, '_' and '-' are allowed"
        );
    }
}
