//! Outbound HTTP to URLs that users configure (webhook endpoints, integration base URLs).
//!
//! - [`AddressPolicy`]: which addresses may be reached. By default nothing non-public
//!   (loopback, private, link-local and cloud metadata, transition ranges that embed them, …);
//!   an allow-list of CIDRs opens specific networks.
//! - [`client`]: the one way to build a client for such requests. The policy runs inside its
//!   resolver, on the addresses the connection will really use, so DNS rebinding cannot slip
//!   past it; redirects are never followed; environment proxies are ignored.
//! - [`literal_ip`] for IP-literal URLs (which never reach the resolver), [`refusal`] to tell a
//!   policy refusal from a transport failure by type, [`parse_retry_after`].
#![warn(missing_docs)]

mod policy;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

pub use policy::{AddressPolicy, PolicyResolver, Refusal};

/// How [`client`] builds a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on a whole request, when the caller does not set one per request.
    pub timeout: Option<Duration>,
    /// An explicit HTTP(S) proxy. The proxy then resolves destinations and must enforce the
    /// policy itself (IP-literal URLs are still checked by [`literal_ip`] callers).
    pub proxy: Option<reqwest::Url>,
    /// The `User-Agent` header.
    pub user_agent: &'static str,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The proxy URL was refused by the client.
    #[error("proxy: {0}")]
    Proxy(#[source] reqwest::Error),
    /// The client itself (TLS backend, resolver) could not be built.
    #[error("http client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Builds a client whose every connection obeys `policy`: no redirects, bounded timeouts, and
/// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` ignored (through a proxy the resolver would only ever
/// see the proxy's address and the destination check would be void).
pub fn client(
    options: &ClientOptions,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .dns_resolver(Arc::new(PolicyResolver::new(policy)))
        .user_agent(options.user_agent);
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    let builder = match &options.proxy {
        Some(proxy) => {
            builder.proxy(reqwest::Proxy::all(proxy.clone()).map_err(ClientError::Proxy)?)
        }
        None => builder.no_proxy(),
    };
    builder.build().map_err(ClientError::Build)
}

/// The address of a URL whose host is an IP literal. Such URLs never reach the resolver, so
/// callers check them against the policy before sending.
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The policy [`Refusal`] anywhere in a client error's chain: a refused destination is
/// permanent, unlike a transport failure.
pub fn refusal(err: &reqwest::Error) -> Option<&Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
}

/// `Retry-After` as seconds or an HTTP date (a date in the past is zero). `None` for anything
/// else; never panics, whatever the server sent.
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
