//! The HTTP client deliveries use, and how its answers and errors are read.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::DeliveryConfig;
use crate::ssrf::{AddressPolicy, PolicyResolver, Refusal};

/// Why the delivery HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// `delivery.proxy` was refused by the client.
    #[error("proxy: {0}")]
    Proxy(#[source] reqwest::Error),
    /// The client itself (TLS backend, resolver) could not be built.
    #[error("http client: {0}")]
    Build(#[source] reqwest::Error),
}

impl HttpClientError {
    /// The configuration key the failure is about.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Proxy(_) => "delivery.proxy",
            Self::Build(_) => "delivery",
        }
    }
}

/// Builds the HTTP client deliveries use: no redirects, bounded timeouts, destination policy
/// enforced in the resolver.
///
/// Proxies: `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are ignored. Through a proxy the resolver
/// would only ever see the proxy's address and the destination check would be void. Only an
/// explicit `delivery.proxy` is used; that proxy then resolves destinations and must enforce
/// the policy itself (IP-literal URLs are still checked here).
pub fn http_client(
    config: &DeliveryConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, HttpClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        .timeout(Duration::from_secs(config.timeout_secs))
        .pool_max_idle_per_host(32)
        .dns_resolver(Arc::new(PolicyResolver::new(policy)))
        .user_agent(concat!("realtime-webhooks/", env!("CARGO_PKG_VERSION")));
    let builder = match &config.proxy {
        Some(proxy) => {
            builder.proxy(reqwest::Proxy::all(proxy.url().clone()).map_err(HttpClientError::Proxy)?)
        }
        None => builder.no_proxy(),
    };
    builder.build().map_err(HttpClientError::Build)
}

/// The address of a URL whose host is an IP literal.
pub fn literal_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// What came back from the endpoint.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
    /// The body's first bytes, exactly as received.
    pub(super) body: Vec<u8>,
}

/// Why an attempt got no response.
pub(super) enum AttemptError {
    /// The destination is not allowed: retrying cannot help.
    Refused(String),
    /// Connection, TLS or timeout failure.
    Transport(String),
}

/// Sorts a client error by its type: a [`Refusal`] from the resolver anywhere in the chain is
/// permanent, anything else transport.
pub(super) fn classify(err: &reqwest::Error) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return AttemptError::Refused(refusal.to_string());
        }
        source = e.source();
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AttemptError::Transport(format!(
        "{kind}: {}",
        std::error::Error::source(err).map_or_else(|| err.to_string(), |s| s.to_string())
    ))
}

/// `Retry-After` as seconds or an HTTP date (a date in the past is zero). `None` for anything
/// else; never panics, whatever the receiver sent.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn literal_hosts_are_addresses() {
        let ip = |u: &str| literal_ip(&reqwest::Url::parse(u).unwrap());
        assert_eq!(ip("http://10.0.0.1/x"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(ip("http://[::1]:80/x"), Some("::1".parse().unwrap()));
        assert_eq!(ip("http://example.com/x"), None);
    }
}
