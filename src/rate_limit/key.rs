//! Who a request counts against: the [`KeyExtractor`] trait and the built-in keys.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;
use http::header::HeaderName;

use crate::extensions::{Identity, PeerAddr, RequestHead};
use crate::forwarded::{TrustedProxies, client_ip};

/// Picks the key a request is counted under. Closures `Fn(&RequestHead<'_>) -> Option<K>`
/// are key extractors too.
///
/// `None` means the request cannot be attributed; the limiter then counts it in one budget
/// shared by all such requests (it is never waved through), and says so once per process in
/// a `warn` log.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key: cheap to clone and hash (an address, an `Arc`, a small header value).
    type Key: Clone + Hash + Eq + Send + Sync + 'static;

    /// The key of the request whose head is `req`.
    fn extract(&self, req: &RequestHead<'_>) -> Option<Self::Key>;
}

impl<F, K> KeyExtractor for F
where
    F: Fn(&RequestHead<'_>) -> Option<K> + Send + Sync + 'static,
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    type Key = K;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<K> {
        self(req)
    }
}

/// Who a request is from, as [`ClientKey`] extracts it: the key its budget is kept under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// An authenticated identity.
    Identity(Identity),
    /// An anonymous client, by address.
    Ip(IpAddr),
}

/// The default key extractor: keys each request by its [`ClientId`], the auth [`Identity`]
/// when there is one, else the client's IP address as [`PeerIp`] finds it.
#[derive(Clone, Debug, Default)]
pub struct ClientKey {
    ip: PeerIp,
}

impl ClientKey {
    /// Identity, else the peer's address; no proxy trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the client's address from `X-Forwarded-For` when the peer is in `trusted` (see
    /// [`PeerIp::trusted_proxies`]).
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.ip = self.ip.trusted_proxies(trusted);
        self
    }

    /// Counts IPv6 clients by network (see [`PeerIp::ipv6_prefix`]).
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        self.ip = self.ip.ipv6_prefix(len);
        self
    }
}

impl KeyExtractor for ClientKey {
    type Key = ClientId;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<ClientId> {
        match req.extensions().get::<Identity>() {
            Some(identity) => Some(ClientId::Identity(identity.clone())),
            None => self.ip.extract(req).map(ClientId::Ip),
        }
    }
}

/// The auth [`Identity`]; `None` for anonymous requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityKey;

impl KeyExtractor for IdentityKey {
    type Key = Identity;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<Identity> {
        req.extensions().get::<Identity>().cloned()
    }
}

/// The client's IP address: the peer address of the request (the [`PeerAddr`] that
/// [`Server`](crate::server::Server) sets, or in axum with the `axum` feature its
/// `ConnectInfo<SocketAddr>`; see [`PeerAddr::from_extensions`]), or, when the peer is a
/// trusted proxy, the right-most untrusted `X-Forwarded-For` entry ([`client_ip`]). `None`
/// without a peer address: the rate limiter then warns once and counts such requests in
/// one shared budget.
///
/// IPv6 addresses count one by one by default. A single host often holds a whole /64,
/// though, and could spread its requests over as many keys as it likes:
/// [`ipv6_prefix(64)`](Self::ipv6_prefix) counts each /64 as one client.
#[derive(Clone, Debug)]
pub struct PeerIp {
    trusted: TrustedProxies,
    v6_mask: u128,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self {
            trusted: TrustedProxies::none(),
            v6_mask: u128::MAX,
        }
    }
}

impl PeerIp {
    /// The peer's address; no proxy trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts IPv6 clients by their first `len` bits (clamped to 128; 64 is one
    /// subnet). IPv4 addresses are unaffected.
    pub fn ipv6_prefix(mut self, len: u8) -> Self {
        let len = u32::from(len.min(128));
        self.v6_mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        self
    }

    /// Peers in `trusted` may name the client in `X-Forwarded-For`.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }
}

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<IpAddr> {
        let Some(PeerAddr(peer)) = PeerAddr::from_extensions(req.extensions()) else {
            warn_no_address();
            return None;
        };
        match client_ip(req.headers(), peer.ip(), &self.trusted) {
            IpAddr::V6(ip) if self.v6_mask != u128::MAX => {
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(ip) & self.v6_mask)))
            }
            ip => Some(ip),
        }
    }
}

/// The value of a request header (the first one); `None` without it, or when the value is
/// longer than [`HeaderKey::MAX_LEN`] bytes (such requests share the budget of requests
/// without a key, and the limiter's memory stays bounded by its key cap times that length).
#[derive(Clone)]
pub struct HeaderKey(HeaderName);

impl HeaderKey {
    /// The longest value used as a key: 256 bytes.
    pub const MAX_LEN: usize = 256;

    /// Keys on `header`.
    pub fn new(header: HeaderName) -> Self {
        Self(header)
    }
}

impl fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HeaderKey").field(&self.0).finish()
    }
}

impl KeyExtractor for HeaderKey {
    type Key = HeaderValue;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<HeaderValue> {
        req.headers()
            .get(&self.0)
            .filter(|value| value.len() <= Self::MAX_LEN)
            .cloned()
    }
}

/// One key for every request: a limit on the route as a whole.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    type Key = ();

    #[inline]
    fn extract(&self, _req: &RequestHead<'_>) -> Option<()> {
        Some(())
    }
}

/// Writes a rate-limit key into a shared store's key name (a Redis key, say). Two different
/// keys must write different bytes. Implemented for the crate's key types; implement it for
/// your own [`KeyExtractor::Key`] to use it with a shared store.
pub trait StoreKey {
    /// Appends this key's bytes to `out`.
    fn write_key(&self, out: &mut Vec<u8>);
}

impl StoreKey for ClientId {
    fn write_key(&self, out: &mut Vec<u8>) {
        match self {
            ClientId::Identity(identity) => {
                out.extend_from_slice(b"id:");
                identity.write_key(out);
            }
            ClientId::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                ip.write_key(out);
            }
        }
    }
}

impl StoreKey for Identity {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id().as_bytes());
    }
}

impl StoreKey for IpAddr {
    fn write_key(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{self}");
    }
}

impl StoreKey for HeaderValue {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl StoreKey for () {
    fn write_key(&self, _out: &mut Vec<u8>) {}
}

impl StoreKey for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl StoreKey for bytes::Bytes {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl StoreKey for u64 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

impl<T: StoreKey + ?Sized> StoreKey for std::sync::Arc<T> {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
    }
}

/// Says once per process, at `warn`, that a request came with no peer address, so that a
/// limiter keying by address counts it in the one budget of every request without a key:
/// a server that gives the layers no client address.
#[cold]
fn warn_no_address() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.load(Ordering::Relaxed) || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        "rate limit: a request had no client address, so it shares one budget with every \
         request without a key; to limit clients by address, serve with tower_gateway::server::Server, \
         or in axum with into_make_service_with_connect_info::<SocketAddr>() and the `axum` \
         feature, or insert an extensions::PeerAddr (said once)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn request(peer: Option<&str>, xff: Option<&str>, identity: Option<&str>) -> Request<()> {
        let mut req = Request::get("/").body(()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        }
        if let Some(xff) = xff {
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
        }
        if let Some(id) = identity {
            req.extensions_mut().insert(Identity::new(id));
        }
        req
    }

    fn head(req: &Request<()>) -> RequestHead<'_> {
        RequestHead::from(req)
    }

    #[test]
    fn client_key_prefers_the_identity_then_the_address() {
        let key = ClientKey::new();
        assert_eq!(
            key.extract(&head(&request(Some("1.2.3.4:5"), None, Some("alice")))),
            Some(ClientId::Identity(Identity::new("alice")))
        );
        assert_eq!(
            key.extract(&head(&request(Some("1.2.3.4:5"), Some("9.9.9.9"), None))),
            Some(ClientId::Ip("1.2.3.4".parse().unwrap())),
            "an untrusted peer cannot pick its key with X-Forwarded-For"
        );
        assert_eq!(key.extract(&head(&request(None, None, None))), None);
    }

    #[test]
    fn trusted_proxies_name_the_client() {
        let key =
            ClientKey::new().trusted_proxies(TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(
            key.extract(&head(&request(
                Some("10.0.0.1:5"),
                Some("6.6.6.6, 203.0.113.7"),
                None
            ))),
            Some(ClientId::Ip("203.0.113.7".parse().unwrap()))
        );
    }

    #[test]
    fn ipv6_clients_can_count_by_network() {
        let exact = PeerIp::new();
        let by_64 = PeerIp::new().ipv6_prefix(64);
        let a = request(Some("[2001:db8:1:2:aaaa::1]:5"), None, None);
        let b = request(Some("[2001:db8:1:2:bbbb::9]:5"), None, None);
        let v4 = request(Some("192.0.2.1:5"), None, None);
        assert_ne!(exact.extract(&head(&a)), exact.extract(&head(&b)));
        assert_eq!(by_64.extract(&head(&a)), by_64.extract(&head(&b)));
        assert_eq!(
            by_64.extract(&head(&a)),
            Some("2001:db8:1:2::".parse().unwrap())
        );
        assert_eq!(
            by_64.extract(&head(&v4)),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            PeerIp::new().ipv6_prefix(0).extract(&head(&a)),
            Some("::".parse().unwrap())
        );
    }

    #[test]
    fn header_global_and_closure_keys() {
        let req = Request::get("/").header("x-tenant", "t1").body(()).unwrap();
        let p = head(&req);
        assert_eq!(
            HeaderKey::new(HeaderName::from_static("x-tenant"))
                .extract(&p)
                .unwrap(),
            "t1"
        );
        assert_eq!(
            HeaderKey::new(HeaderName::from_static("x-other")).extract(&p),
            None
        );
        let long = Request::get("/")
            .header("x-tenant", "t".repeat(HeaderKey::MAX_LEN + 1))
            .body(())
            .unwrap();
        assert_eq!(
            HeaderKey::new(HeaderName::from_static("x-tenant")).extract(&head(&long)),
            None,
            "over-long values do not become keys"
        );
        assert_eq!(GlobalKey.extract(&p), Some(()));
        let by_path = |p: &RequestHead<'_>| Some(p.uri().path().to_owned());
        assert_eq!(by_path.extract(&p).as_deref(), Some("/"));
        assert_eq!(IdentityKey.extract(&p), None);
    }
}
