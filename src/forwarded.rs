//! Who the client is when proxies stand in between: [`TrustedProxies`] and
//! [`client_ip`], shared by the proxy (which keeps or replaces `X-Forwarded-*`) and the
//! rate limiter (which keys on the client's address).
//!
//! A peer's word about the client is taken only when the peer is a trusted proxy. Then the
//! client is the **right-most untrusted** address of `X-Forwarded-For`: every address to its
//! right was appended by a proxy we trust, and everything to its left was written by the
//! client itself, who may forge it at will.
//!
//! # Example
//! ```
//! use std::net::IpAddr;
//! use http::HeaderMap;
//! use tower_gateway::forwarded::{TrustedProxies, client_ip};
//!
//! let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
//! let mut headers = HeaderMap::new();
//! // The client forged 1.2.3.4; our load balancer 10.0.0.2 appended the real 203.0.113.7.
//! headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.0.0.2".parse().unwrap());
//! let peer: IpAddr = "10.0.0.1".parse().unwrap();
//! assert_eq!(client_ip(&headers, peer, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
//! // An untrusted peer's header is ignored.
//! let peer: IpAddr = "198.51.100.1".parse().unwrap();
//! assert_eq!(client_ip(&headers, peer, &trusted), peer);
//! ```

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

/// `x-forwarded-for`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The networks whose peers may speak for the client in `X-Forwarded-*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Box<[IpNet]>,
}

impl TrustedProxies {
    /// Trusts the peers in `nets`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
        }
    }

    /// Trusts nobody (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `ip` is in a trusted network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
/// address of `X-Forwarded-For` (all its values, in order) that is not itself trusted.
///
/// When every listed address is trusted, the left-most one is the client. An entry that is
/// not an address (`unknown`, junk) ends the walk: the hop that wrote it, the nearest trusted
/// one, is taken as the client, so junk can never name somebody else. IPv4-mapped IPv6
/// addresses come back as IPv4, and an entry may carry a port (`1.2.3.4:5`, `[::1]:5`) or
/// brackets (`[::1]`).
#[inline]
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() {
        return peer;
    }
    behind_proxies(headers, peer, trusted)
}

fn behind_proxies(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    if !trusted.contains(client) {
        return client;
    }
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    let ip = match entry.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok()?.into(),
            None => entry.parse::<SocketAddr>().ok()?.ip(),
        },
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = xff(&["9.9.9.9"]);
        assert_eq!(
            client_ip(&h, ip("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(&h, ip("10.0.0.1"), &TrustedProxies::none()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn right_most_untrusted_entry_across_header_lines() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = xff(&["6.6.6.6, 7.7.7.7", "203.0.113.7 , 10.0.0.3", "10.0.0.2"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_means_the_left_most_and_no_header_means_the_peer() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = xff(&["10.0.0.9, 10.0.0.3"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.0.0.9"));
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.1"), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn junk_stops_at_the_nearest_trusted_hop_and_ports_and_mapped_addresses_parse() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = xff(&["1.1.1.1, unknown, 10.0.0.4"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.0.0.4"));
        let h = xff(&["1.1.1.1, "]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.0.0.1"));
        let h = xff(&["[::ffff:192.0.2.1]:443"]);
        assert_eq!(
            client_ip(&h, ip("::ffff:10.0.0.1"), &trusted),
            ip("192.0.2.1")
        );
        let h = xff(&["192.0.2.8:5000"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("192.0.2.8"));
        let h = xff(&["[2001:db8::2]"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("2001:db8::2"));
        let h = xff(&["[1.2.3.4]"]);
        assert_eq!(client_ip(&h, ip("10.0.0.1"), &trusted), ip("10.0.0.1"));
    }
}
