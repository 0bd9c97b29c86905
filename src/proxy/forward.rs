//! The forwarding headers: `Host`, `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host`.
//!
//! - `Host` becomes the upstream's own authority.
//! - `X-Forwarded-For` gets the peer IP appended (all the client's values joined first, so
//!   the upstream sees one comma-separated chain).
//! - `X-Forwarded-Proto` and `X-Forwarded-Host` are set to this hop's scheme and the
//!   client's `Host`, replacing what the client sent, unless the peer is a trusted proxy and
//!   sent them, in which case they are kept.
//! - `Forwarded` (RFC 7239) and `X-Real-IP`, which this hop does not maintain, are removed
//!   unless the peer is a trusted proxy, so a client cannot forge them for the upstream.

use std::fmt::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use crate::extensions::PeerAddr;
use crate::forwarded::{TrustedProxies, X_FORWARDED_FOR};

/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Rewrites `headers` for the upstream at `host` (its authority as a header value).
/// `target_authority` is the authority of an absolute-form request target
/// (`GET http://host/path`), which names the client's host in place of its `Host` line
/// (RFC 9112 §3.2.2).
pub(crate) fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: Option<PeerAddr>,
    target_authority: Option<&Authority>,
    host: &HeaderValue,
    proto: &HeaderValue,
    trusted: &TrustedProxies,
) {
    let trusted_peer =
        peer.is_some_and(|PeerAddr(addr)| !trusted.is_empty() && trusted.contains(addr.ip()));

    if !trusted_peer {
        headers.remove(header::FORWARDED);
        headers.remove(X_REAL_IP);
    }

    // The client's host, before its Host is replaced by the upstream's: an absolute-form
    // target's authority wins over a Host line that says otherwise.
    let host_line = headers.insert(header::HOST, host.clone());
    let client_host = match target_authority {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok().or(host_line),
        None => host_line,
    };
    if !(trusted_peer && headers.contains_key(X_FORWARDED_HOST)) {
        match client_host {
            Some(client_host) => {
                headers.insert(X_FORWARDED_HOST, client_host);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if !(trusted_peer && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, proto.clone());
    }

    if let Some(PeerAddr(addr)) = peer {
        let ip = addr.ip().to_canonical();
        let mut chain = String::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(value) = value.to_str() {
                let value = value.trim();
                if !value.is_empty() {
                    chain.push_str(value);
                    chain.push_str(", ");
                }
            }
        }
        write!(chain, "{ip}").expect("writing to a String cannot fail");
        let value = HeaderValue::try_from(chain)
            .expect("visible ASCII values and an IP are a valid header value");
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)], peer: &str, trusted: &TrustedProxies) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        set_forwarding_headers(
            &mut headers,
            Some(PeerAddr(peer.parse().unwrap())),
            None,
            &HeaderValue::from_static("127.0.0.1:5051"),
            &HeaderValue::from_static("http"),
            trusted,
        );
        headers
    }

    #[test]
    fn untrusted_peer_gets_appended_and_its_proto_and_host_replaced() {
        let h = run(
            &[
                ("host", "gw.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "forged.example"),
                ("forwarded", "for=10.9.9.9;proto=https"),
                ("x-real-ip", "10.9.9.9"),
            ],
            "203.0.113.9:4000",
            &TrustedProxies::none(),
        );
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
        assert_eq!(h["host"], "127.0.0.1:5051");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 203.0.113.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
    }

    #[test]
    fn trusted_peer_keeps_proto_and_host() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = run(
            &[
                ("host", "gw.example"),
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "public.example"),
                ("x-real-ip", "198.51.100.1"),
            ],
            "10.1.2.3:4000",
            &trusted,
        );
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "public.example");
    }

    #[test]
    fn an_absolute_form_target_names_the_host_over_a_conflicting_host_line() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "forged.example".parse().unwrap());
        let target: http::Uri = "http://real.example:8080/path".parse().unwrap();
        set_forwarding_headers(
            &mut headers,
            Some(PeerAddr("203.0.113.9:4000".parse().unwrap())),
            target.authority(),
            &HeaderValue::from_static("127.0.0.1:5051"),
            &HeaderValue::from_static("http"),
            &TrustedProxies::none(),
        );
        assert_eq!(headers["x-forwarded-host"], "real.example:8080");
        assert_eq!(headers["host"], "127.0.0.1:5051");
    }

    #[test]
    fn ipv4_mapped_peers_are_ipv4() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        assert!(trusted.contains("::ffff:10.0.0.1".parse().unwrap()));
        let h = run(&[], "[::ffff:192.0.2.1]:80", &trusted);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert!(
            h.get("x-forwarded-host").is_none(),
            "no client Host, none forwarded"
        );
    }
}
