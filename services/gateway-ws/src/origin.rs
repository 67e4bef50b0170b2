//! Which web pages may open `/ws` (cross-site WebSocket hijacking).
//!
//! `/ws` authenticates by cookie, and browsers attach cookies to a WebSocket handshake whatever
//! page opens it. The `Origin` header, which browsers always set and pages cannot forge, is
//! therefore the only thing that tells the gateway's own pages from any other site's:
//!
//! - `security.allowed_origins` empty (the default): only pages of the same origin as the
//!   request's `Host` are allowed, comparing host and port and ignoring the scheme (TLS may end
//!   at a proxy in front of the gateway, so the gateway cannot know the page's scheme).
//! - otherwise: exactly the listed origins (scheme, host, port), and nothing else; same-origin
//!   is then allowed only when listed.
//! - a request without `Origin` is not from a browser, which is where the cookie would be
//!   stolen from, so it is allowed and authenticated as usual.
//!
//! There is no wildcard: with cookie authentication `*` would reopen the hole this closes.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use serde::{Deserialize, Serialize};

/// At most this many characters of an input go into an error message.
const ECHO: usize = 64;

fn short(raw: &str) -> String {
    raw.chars().take(ECHO).collect()
}

/// Why a string is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// `*`: refused on purpose, see the module docs.
    #[error("\"*\" is not supported: list each origin allowed to use the session cookie")]
    Wildcard,
    /// The scheme is not `http` or `https` (includes the opaque origin `null`).
    #[error("{0:?} is not an http:// or https:// origin")]
    Scheme(String),
    /// Something other than `scheme://host[:port]` (a path, query, user info, bad host).
    #[error("{0:?} is not scheme://host[:port] (no path, no trailing slash)")]
    Shape(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0:?} has an invalid port")]
    Port(String),
}

/// The scheme of a web origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A host and an optional port, as in `Host` or the authority of an origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Authority {
    /// Lower-cased; an IPv6 literal keeps its brackets.
    host: String,
    port: Option<u16>,
}

/// Parses `host[:port]`; `raw` is what error messages quote.
fn parse_authority(text: &str, raw: &str) -> Result<Authority, OriginError> {
    let shape = || OriginError::Shape(short(raw));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(shape)?;
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| shape())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(shape)?),
        };
        (&text[..inner.len() + 2], port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let valid_host = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !valid_host {
        return Err(shape());
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| OriginError::Port(short(raw)))?,
        ),
    };
    Ok(Authority {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A web origin, `scheme://host[:port]`, normalised: lower-case host, explicit port (the
/// scheme's default when the text has none), so `https://A.example:443` equals
/// `https://a.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an origin as browsers send it (`https://crm.example.com`, `http://[::1]:8080`).
    pub fn parse(raw: &str) -> Result<Self, OriginError> {
        let text = raw.trim();
        if text == "*" {
            return Err(OriginError::Wildcard);
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| OriginError::Scheme(short(raw)))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(OriginError::Scheme(short(raw)));
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(OriginError::Shape(short(raw)));
        }
        let Authority { host, port } = parse_authority(rest, raw)?;
        Ok(Self {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }

    /// Whether a page of this origin is the same site as a request for `host`: same host and
    /// port, whatever the scheme. A `Host` without a port means this origin's default port.
    fn same_authority(&self, host: &Authority) -> bool {
        self.host == host.host && self.port == host.port.unwrap_or(self.scheme.default_port())
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Origin {
    type Error = OriginError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> Self {
        o.to_string()
    }
}

/// Why a handshake's `Origin` was refused; only logged and counted, the client is told
/// `origin not allowed` whatever the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    /// More than one `Origin` header, or one that is not text.
    Malformed,
    /// Not an http(s) origin (e.g. `null` from a sandboxed page or a file).
    Unparsable,
    /// Same-origin mode, and the page is another site (or the request has no usable `Host`).
    CrossSite,
    /// Not in `security.allowed_origins`.
    NotListed,
}

impl OriginRefusal {
    /// A short label for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unparsable => "unparsable",
            Self::CrossSite => "cross_site",
            Self::NotListed => "not_listed",
        }
    }
}

/// The origin rule of `security.allowed_origins`, built once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Only pages of the origin the request was sent to (`Host`).
    SameOrigin,
    /// Only these origins.
    Listed(Vec<Origin>),
}

impl OriginPolicy {
    /// The policy for a configured list; empty means same-origin.
    pub fn new(allowed: &[Origin]) -> Self {
        if allowed.is_empty() {
            Self::SameOrigin
        } else {
            Self::Listed(allowed.to_vec())
        }
    }

    /// Decides on a handshake's headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefusal> {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(OriginRefusal::Malformed);
        }
        let text = value.to_str().map_err(|_| OriginRefusal::Malformed)?;
        let origin = Origin::parse(text).map_err(|_| OriginRefusal::Unparsable)?;
        match self {
            Self::Listed(allowed) if allowed.contains(&origin) => Ok(()),
            Self::Listed(_) => Err(OriginRefusal::NotListed),
            Self::SameOrigin => {
                let host = headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| parse_authority(h.trim(), h).ok())
                    .ok_or(OriginRefusal::CrossSite)?;
                if origin.same_authority(&host) {
                    Ok(())
                } else {
                    Err(OriginRefusal::CrossSite)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn origins_parse_into_a_normal_form() {
        let o = Origin::parse("HTTPS://CRM.Example.com:443").unwrap();
        assert_eq!(o, Origin::parse("https://crm.example.com").unwrap());
        assert_eq!(o.to_string(), "https://crm.example.com");
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
        assert_ne!(
            Origin::parse("http://a.example").unwrap(),
            Origin::parse("https://a.example").unwrap()
        );
    }

    #[test]
    fn non_origins_are_refused_with_a_short_echo() {
        assert_eq!(Origin::parse("*"), Err(OriginError::Wildcard));
        for raw in ["null", "ws://a.example", "a.example", "file:///etc"] {
            assert!(
                matches!(Origin::parse(raw), Err(OriginError::Scheme(_))),
                "{raw}"
            );
        }
        for raw in [
            "https://a.example/",
            "https://a.example/app",
            "https://u@a.example",
            "https://",
            "https://a example",
            "https://[zz]:1",
        ] {
            assert!(
                matches!(Origin::parse(raw), Err(OriginError::Shape(_))),
                "{raw}"
            );
        }
        for raw in [
            "https://a.example:0",
            "https://a.example:99999",
            "http://a:",
        ] {
            assert!(
                matches!(Origin::parse(raw), Err(OriginError::Port(_))),
                "{raw}"
            );
        }
        let long = format!("https://{}/", "a".repeat(10_000));
        let OriginError::Shape(echo) = Origin::parse(&long).unwrap_err() else {
            panic!("wrong variant")
        };
        assert_eq!(echo.len(), ECHO);
    }

    #[test]
    fn same_origin_compares_host_and_port_but_not_scheme() {
        let policy = OriginPolicy::new(&[]);
        let ok = |origin: &str, host: &str| {
            policy.check(&headers(&[("origin", origin), ("host", host)]))
        };
        assert_eq!(ok("https://app.example", "app.example"), Ok(()));
        assert_eq!(ok("http://app.example", "APP.example:80"), Ok(()));
        assert_eq!(ok("https://app.example:8443", "app.example:8443"), Ok(()));
        assert_eq!(ok("http://[::1]:8080", "[::1]:8080"), Ok(()));
        assert_eq!(
            ok("https://evil.example", "app.example"),
            Err(OriginRefusal::CrossSite)
        );
        assert_eq!(
            ok("https://app.example", "app.example:8080"),
            Err(OriginRefusal::CrossSite)
        );
        assert_eq!(
            policy.check(&headers(&[("origin", "https://app.example")])),
            Err(OriginRefusal::CrossSite),
            "no Host: nothing to be the same as"
        );
        assert_eq!(policy.check(&headers(&[("host", "app.example")])), Ok(()));
        assert_eq!(
            policy.check(&headers(&[
                ("origin", "https://app.example"),
                ("origin", "https://app.example"),
                ("host", "app.example")
            ])),
            Err(OriginRefusal::Malformed)
        );
    }

    #[test]
    fn a_list_allows_exactly_its_origins() {
        let policy = OriginPolicy::new(&[Origin::parse("https://crm.example.com").unwrap()]);
        let check = |origin: &str| {
            policy.check(&headers(&[("origin", origin), ("host", "gw.example.com")]))
        };
        assert_eq!(check("https://crm.example.com"), Ok(()));
        assert_eq!(
            check("http://crm.example.com"),
            Err(OriginRefusal::NotListed)
        );
        assert_eq!(
            check("https://gw.example.com"),
            Err(OriginRefusal::NotListed)
        );
        assert_eq!(check("null"), Err(OriginRefusal::Unparsable));
    }
}
