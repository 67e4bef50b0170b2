//! Network identity of a client: IP networks, the client address behind trusted proxies, and
//! connection caps counted per client.
//!
//! Both gateways and the webhook dispatcher use these, so there is one copy of each rule:
//! - [`Cidr`] parses `10.0.0.0/8`, `2001:db8::/32` or a bare address once, at the edge.
//! - [`ClientIpPolicy`] takes the right-most `X-Forwarded-For` hop that is not a trusted proxy,
//!   never the left-most, which the client writes itself.
//! - [`limit_key`] counts IPv6 clients per /64 (one subscriber line usually holds a whole /64),
//!   and IPv4-mapped IPv6 as the IPv4 address it carries.
//! - [`ConnectionLimiter`] caps connections in total and per [`limit_key`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Why a string is not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("{0:?} is not an IP network")]
    Address(String),
    /// The prefix length is not a number or is longer than the address.
    #[error("{0:?} has an invalid prefix length")]
    Prefix(String),
}

/// An IP network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(raw: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(short(raw)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix(short(raw)))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// A network from its parts; `prefix` is clamped to the address length.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            addr,
            prefix: prefix.min(max),
        }
    }

    /// Whether `ip` is inside the network. IPv4-mapped IPv6 addresses are judged as the IPv4
    /// address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

/// At most 64 characters of client input go into an error message.
fn short(raw: &str) -> String {
    raw.chars().take(64).collect()
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client is counted under for per-client limits: IPv4 as is, IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
        v4 => v4,
    }
}

/// Most `X-Forwarded-For` hops walked; a longer chain is judged by its last hops only.
const MAX_FORWARDED_HOPS: usize = 32;

/// How the client address is found when the service may sit behind proxies.
///
/// Config shape (in a service's section): `trust_forwarded_for = true` and
/// `trusted_proxies = ["10.0.0.0/8"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientIpPolicy {
    /// Read `X-Forwarded-For` at all. Off: the peer address is the client.
    pub trust_forwarded_for: bool,
    /// Proxies whose `X-Forwarded-For` entries are believed. Empty with
    /// `trust_forwarded_for`: the peer is the one trusted proxy, so the right-most entry is the
    /// client.
    pub trusted_proxies: Vec<Cidr>,
}

impl ClientIpPolicy {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    ///
    /// Walks the chain `X-Forwarded-For…, peer` from the right and returns the first address
    /// that is not a trusted proxy. A peer that is not a trusted proxy is the client, whatever
    /// the header says. An entry that does not parse ends the walk at the last trusted hop.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trust_forwarded_for {
            return peer;
        }
        if !self.trusted_proxies.is_empty() && !self.trusted(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let skip = hops.len().saturating_sub(MAX_FORWARDED_HOPS);
        hops.drain(..skip);
        let mut last = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return last;
            };
            if !self.trusted(ip) {
                return ip;
            }
            last = ip;
        }
        last
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// Which cap a new connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// The instance is full: try again later, perhaps elsewhere.
    Total,
    /// Too many connections from this client ([`limit_key`]).
    PerIp,
}

/// Counts open connections, in total and per [`limit_key`]. Touched on connect and disconnect
/// only, so a mutex is cheap enough.
#[derive(Debug)]
pub struct ConnectionLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_total: usize,
    max_per_ip: usize,
    gauge: &'static str,
}

/// Holds one connection's place; releases it when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    /// A limiter with the given caps; `gauge` names the metric of open connections.
    pub fn new(max_total: usize, max_per_ip: usize, gauge: &'static str) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max_total,
            max_per_ip,
            gauge,
        })
    }

    /// Takes a place for a connection from `ip`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, Breach> {
        let key = limit_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(Breach::Total);
        }
        let count = per_ip.entry(key).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Breach::PerIp);
        }
        *count += 1;
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(self.gauge).set(total as f64);
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            key,
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.key);
            }
        }
        let total = self.limiter.total.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(self.limiter.gauge).set(total as f64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidr_parses_and_matches() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.1")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert!(matches!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(Cidr::parse("nope/8"), Err(CidrError::Address(_))));
        let long = "x".repeat(10_000);
        let CidrError::Address(echo) = Cidr::parse(&long).unwrap_err() else {
            panic!("wrong variant")
        };
        assert_eq!(echo.len(), 64);
    }

    #[test]
    fn forwarded_for_is_ignored_unless_trusted() {
        let off = ClientIpPolicy::default();
        assert_eq!(
            off.client_ip(ip("9.9.9.9"), &xff(&["1.1.1.1"])),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let policy = ClientIpPolicy {
            trust_forwarded_for: true,
            trusted_proxies: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        };
        // The client wrote "6.6.6.6" itself; the edge proxy appended the real peer 7.7.7.7.
        let h = xff(&["6.6.6.6, 7.7.7.7", "10.0.0.5"]);
        assert_eq!(policy.client_ip(ip("10.0.0.9"), &h), ip("7.7.7.7"));
        // A peer outside the trusted list is the client, whatever it claims.
        assert_eq!(policy.client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        // All hops trusted: the left-most trusted one.
        assert_eq!(
            policy.client_ip(ip("10.0.0.9"), &xff(&["10.0.0.1"])),
            ip("10.0.0.1")
        );
        // Garbage ends the walk at the last trusted hop, never at the garbage.
        assert_eq!(
            policy.client_ip(ip("10.0.0.9"), &xff(&["1.1.1.1, junk, 10.0.0.2"])),
            ip("10.0.0.2")
        );
        // Ports and brackets are accepted.
        assert_eq!(
            policy.client_ip(ip("10.0.0.9"), &xff(&["[2001:db8::7]:443"])),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn empty_trusted_list_trusts_only_the_peer() {
        let policy = ClientIpPolicy {
            trust_forwarded_for: true,
            trusted_proxies: vec![],
        };
        let h = xff(&["6.6.6.6, 7.7.7.7"]);
        assert_eq!(policy.client_ip(ip("10.0.0.9"), &h), ip("7.7.7.7"));
        assert_eq!(
            policy.client_ip(ip("10.0.0.9"), &HeaderMap::new()),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        let limiter = ConnectionLimiter::new(10, 2, "test_connections");
        let _a = limiter.try_acquire(ip("2001:db8::1")).unwrap();
        let _b = limiter.try_acquire(ip("2001:db8::2")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("2001:db8::ffff:3")).unwrap_err(),
            Breach::PerIp
        );
        limiter.try_acquire(ip("2001:db8:0:1::1")).unwrap();
    }

    #[test]
    fn caps_total_and_per_ip_and_releases_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2, "test_connections");
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let g1 = limiter.try_acquire(a).unwrap();
        let _g2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).unwrap_err(), Breach::PerIp);
        let _g3 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).unwrap_err(), Breach::Total);
        drop(g1);
        assert_eq!(limiter.open(), 2);
        limiter.try_acquire(a).unwrap();
    }
}
