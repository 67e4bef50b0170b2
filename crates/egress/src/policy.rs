//! Which network addresses outbound requests may reach.
//!
//! By default a destination that resolves to a loopback, private, link-local (including the cloud
//! metadata address 169.254.169.254), shared, multicast, unspecified or otherwise
//! non-public address is refused. The allow-list (`delivery.allow_networks` in webhook-dispatcher, `execution.allow_networks` in integrations-runner) lists CIDRs that are allowed anyway
//! (a test receiver on 127.0.0.1, an internal partner network). The check runs inside the HTTP
//! client's resolver, on the addresses the connection will actually use, so DNS rebinding
//! cannot slip past it; IP-literal URLs are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use service_runtime::net::{Cidr, canonical};

/// Why a destination address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {ip} refused: {reason} address")]
pub struct Refusal {
    /// The address.
    pub ip: IpAddr,
    /// What kind of address it is, e.g. `loopback`.
    pub reason: &'static str,
}

/// The destination policy.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    /// Refuses non-public addresses except those in `allow`.
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// `Ok` when `ip` may be reached; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match non_public_reason(canonical(ip)) {
            None => Ok(()),
            Some(reason) => Err(Refusal { ip, reason }),
        }
    }
}

fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) || (a == 192 && b == 0) {
        Some("reserved")
    } else if a == 192 && b == 88 && c == 99 {
        Some("reserved (6to4 relay anycast)")
    } else {
        None
    }
}

/// The IPv4 address an IPv6 transition address reaches, for the ranges whose traffic is
/// relayed to it: NAT64 `64:ff9b::/96`, IPv4-compatible `::a.b.c.d`, 6to4 `2002::/16`, and the
/// Teredo server and (obfuscated) client of `2001::/32`.
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let s = ip.segments();
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        vec![low32]
    } else if bits >> 32 == 0 {
        // `::` and `::1` are judged on their own; the rest of ::/96 is IPv4-compatible.
        vec![low32]
    } else if s[0] == 0x2002 {
        vec![Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32)]
    } else if s[0] == 0x2001 && s[1] == 0 {
        vec![
            Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32),
            Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)),
        ]
    } else {
        Vec::new()
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let first = s[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first == 0x2001 && s[1] == 0x0db8 {
        Some("reserved")
    } else if first == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
        Some("discard-only")
    } else if first == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        Some("reserved (local-use NAT64)")
    } else if embedded_v4(ip)
        .into_iter()
        .any(|v4| v4_reason(v4).is_some())
    {
        Some("transition (embeds a non-public IPv4)")
    } else {
        None
    }
}

/// A resolver for the HTTP client that drops refused addresses, failing the request when none
/// is left.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl PolicyResolver {
    /// Resolves with the system resolver, then applies `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusal = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                // The refusal travels as itself, so callers can tell it from a DNS failure
                // by type (see [`crate::refusal`]).
                return Err(match refusal {
                    Some(refusal) => Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>,
                    None => format!("{host} did not resolve").into(),
                });
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, ip: &str) -> bool {
        policy.check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn refuses_non_public_addresses_by_default() {
        let p = AddressPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
        ] {
            assert!(refused(&p, ip), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!refused(&p, ip), "{ip}");
        }
        assert_eq!(
            p.check("127.0.0.1".parse().unwrap()).unwrap_err().reason,
            "loopback"
        );
    }

    #[test]
    fn transition_and_deprecated_ranges_are_judged_by_what_they_reach() {
        let p = AddressPolicy::default();
        for ip in [
            // NAT64 of loopback, metadata, private
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            // IPv4-compatible
            "::127.0.0.1",
            "::10.1.2.3",
            "::169.254.169.254",
            // 6to4 of 127.0.0.1 and 192.168.1.1
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            // Teredo: server 127.0.0.1; client (obfuscated) 10.0.0.1 = !0a000001 = f5ff:fffe
            "2001:0:7f00:1::1",
            "2001:0:101:101::f5ff:fffe",
            "fec0::1",
            "feff::1",
            "100::1",
            "100::ffff:ffff:ffff:ffff",
            "192.88.99.1",
        ] {
            assert!(refused(&p, ip), "{ip}");
        }
        for ip in [
            "64:ff9b::1.1.1.1",
            "2002:0101:0101::1",
            // Teredo server 1.1.1.1, client 8.8.8.8 (obfuscated f7f7:f7f7)
            "2001:0:101:101::f7f7:f7f7",
            "100:0:0:1::1",
            "192.88.98.1",
        ] {
            assert!(!refused(&p, ip), "{ip}");
        }
    }

    #[test]
    fn the_allow_list_opens_specific_networks() {
        let p = AddressPolicy::new(vec![
            Cidr::parse("127.0.0.1/32").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ]);
        assert!(!refused(&p, "127.0.0.1"));
        assert!(!refused(&p, "::ffff:127.0.0.1"));
        assert!(!refused(&p, "10.200.1.1"));
        assert!(refused(&p, "127.0.0.2"));
        assert!(refused(&p, "192.168.0.1"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
