//! Who a request counts against: the [`KeyExtractor`] trait and the built-in keys.

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri};

use crate::extensions::{Identity, PeerAddr};
use crate::forwarded::{TrustedProxies, client_ip};

/// A borrowed view of a request's head (everything but the body), for key extractors: four
/// references, made without touching the request.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request target.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The extensions (the auth [`Identity`], the [`PeerAddr`], ...).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

impl<'a, B> From<&'a Request<B>> for RequestHead<'a> {
    #[inline]
    fn from(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Picks the key a request is counted under. Closures `Fn(&RequestHead<'_>) -> Option<K>`
/// are key extractors too.
///
/// `None` means the request cannot be attributed; the limiter then counts it in one budget
/// shared by all such requests (it is never waved through).
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

/// A client, as [`ClientKey`] tells them apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// An authenticated identity.
    Identity(Identity),
    /// An anonymous client, by address.
    Ip(IpAddr),
}

/// The contract's client key, and the default: the auth [`Identity`] when there is one,
/// else the client's IP address as [`PeerIp`] finds it.
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
}

impl KeyExtractor for ClientKey {
    type Key = Client;

    #[inline]
    fn extract(&self, req: &RequestHead<'_>) -> Option<Client> {
        match req.extensions().get::<Identity>() {
            Some(identity) => Some(Client::Identity(identity.clone())),
            None => self.ip.extract(req).map(Client::Ip),
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

/// The client's IP address: the [`PeerAddr`] in the request extensions (which
/// [`Server`](crate::server::Server) sets; in axum, set it from `ConnectInfo`), or, when the
/// peer is a trusted proxy, the right-most untrusted `X-Forwarded-For` entry
/// ([`client_ip`]). `None` without a `PeerAddr`.
#[derive(Clone, Debug, Default)]
pub struct PeerIp {
    trusted: TrustedProxies,
}

impl PeerIp {
    /// The peer's address; no proxy trusted.
    pub fn new() -> Self {
        Self::default()
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
        let PeerAddr(peer) = req.extensions().get::<PeerAddr>()?;
        Some(client_ip(req.headers(), peer.ip(), &self.trusted))
    }
}

/// The value of a request header (the first one); `None` without it.
#[derive(Clone)]
pub struct HeaderKey(HeaderName);

impl HeaderKey {
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
        req.headers().get(&self.0).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(Client::Identity(Identity::new("alice")))
        );
        assert_eq!(
            key.extract(&head(&request(Some("1.2.3.4:5"), Some("9.9.9.9"), None))),
            Some(Client::Ip("1.2.3.4".parse().unwrap())),
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
            Some(Client::Ip("203.0.113.7".parse().unwrap()))
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
        assert_eq!(GlobalKey.extract(&p), Some(()));
        let by_path = |p: &RequestHead<'_>| Some(p.uri().path().to_owned());
        assert_eq!(by_path.extract(&p).as_deref(), Some("/"));
        assert_eq!(IdentityKey.extract(&p), None);
    }
}
