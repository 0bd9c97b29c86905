//! Typed request extensions that several layers read: [`CorrelationId`], [`PeerAddr`],
//! [`TlsInfo`] and [`Identity`]; [`HandBack`], through which the service at the end of a stack gives a
//! retry the request it consumed; and [`RequestHead`], the borrowed view of a request that
//! key extractors and balancers read.
//!
//! They live here, not in the layer that sets them, because concern modules never import each
//! other: the rate limiter, the proxy and every rejection read them without depending on
//! the correlation ID layer or the server.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::HeaderValue;
use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri};

/// The correlation ID of a request, as the
/// [`CorrelationIdLayer`](crate::correlation_id::CorrelationIdLayer) put it in the request
/// extensions.
///
/// Every [`Rejection`](crate::rejection::Rejection) captures it, so layers find it in the
/// request extensions without depending on the correlation ID layer. It is always 1 to 128
/// visible ASCII characters (`0x21..=0x7e`), so it is a valid header value and a valid JSON
/// string without escaping.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The longest correlation ID that is accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Accepts `value` when it is 1 to [`MAX_LEN`](Self::MAX_LEN) visible ASCII characters.
    pub fn from_header_value(value: &HeaderValue) -> Option<Self> {
        Self::is_valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// Accepts `value` when it is 1 to [`MAX_LEN`](Self::MAX_LEN) visible ASCII characters.
    pub fn from_bytes(value: &[u8]) -> Option<Self> {
        if !Self::is_valid(value) {
            return None;
        }
        let value = HeaderValue::from_bytes(value).expect("visible ASCII is a valid header value");
        Some(Self(value))
    }

    /// Wraps a value the caller has already made valid (a generated ID).
    #[cfg(feature = "correlation-id")]
    pub(crate) fn from_valid(value: HeaderValue) -> Self {
        debug_assert!(Self::is_valid(value.as_bytes()));
        Self(value)
    }

    /// Whether `value` is an acceptable correlation ID: 1 to 128 bytes, each `0x21..=0x7e`.
    pub fn is_valid(value: &[u8]) -> bool {
        // A fold rather than `all`: no early exit, so the check vectorizes.
        (1..=Self::MAX_LEN).contains(&value.len())
            && value.iter().fold(true, |ok, b| ok & b.is_ascii_graphic())
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        self.0
            .to_str()
            .expect("a correlation ID is visible ASCII by construction")
    }

    /// The ID as a header value; cloning it is a reference-count bump at most.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address of the client's end of the connection, as the server put it in the request
/// extensions (the way axum's `ConnectInfo` does).
///
/// [`Server`](crate::server::Server) sets it on every request. The proxy appends its IP to
/// `X-Forwarded-For` and the rate limiter keys anonymous clients by it (both read it with
/// [`PeerAddr::from_extensions`]). In axum, serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` and turn on the `axum` feature (in
/// `full`): axum's `ConnectInfo<SocketAddr>` then stands in for it. An embedder who serves
/// the gateway some other way (a hyper accept loop of their own) inserts it themselves:
///
/// ```
/// use tower_gateway::extensions::PeerAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr("192.0.2.7:50123".parse().unwrap()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer address a request came from, as the layers read it: the `PeerAddr` in
    /// `extensions` (what [`Server`](crate::server::Server) or your own accept loop puts
    /// there), else, with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (what
    /// `Router::into_make_service_with_connect_info::<SocketAddr>()` puts there). `None` when
    /// neither is there: then the rate limiter cannot tell clients apart by address and the
    /// proxy sends no `X-Forwarded-For`.
    #[inline]
    pub fn from_extensions(extensions: &http::Extensions) -> Option<Self> {
        if let Some(peer) = extensions.get::<Self>() {
            return Some(*peer);
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(peer)) =
            extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(Self(*peer));
        }
        None
    }
}

/// The TLS session a request came over, as the [`Server`](crate::server::Server) puts it in
/// every request of a TLS connection (your own accept loop can too): the server name the
/// client asked for (SNI), the protocol ALPN chose, and the client's certificate when the
/// listener asks for one and it was verified.
///
/// The proxy sets `X-Forwarded-Proto: https` for a request that carries one; the API-key
/// layer can [accept a verified certificate](crate::api_key::ApiKeyAuthLayer::client_certificates)
/// in place of a key. Its absence means plaintext. Cloning is a reference-count bump.
///
/// ```
/// use tower_gateway::extensions::TlsInfo;
///
/// let tls = TlsInfo::new("TLSv1.3").with_server_name("api.example.com");
/// assert_eq!(tls.server_name(), Some("api.example.com"));
/// assert!(tls.client_name().is_none());
/// ```
#[derive(Clone)]
pub struct TlsInfo(Arc<TlsInfoInner>);

#[derive(Clone)]
struct TlsInfoInner {
    version: &'static str,
    server_name: Option<Box<str>>,
    alpn: Option<Box<[u8]>>,
    client_chain: Box<[bytes::Bytes]>,
    client_name: Option<Box<str>>,
}

impl TlsInfo {
    /// A session of protocol `version` (`"TLSv1.2"`, `"TLSv1.3"`), with no SNI, no ALPN and no
    /// client certificate.
    pub fn new(version: &'static str) -> Self {
        Self(Arc::new(TlsInfoInner {
            version,
            server_name: None,
            alpn: None,
            client_chain: Box::new([]),
            client_name: None,
        }))
    }

    /// The server name the client sent (SNI).
    pub fn with_server_name(mut self, name: impl Into<Box<str>>) -> Self {
        Arc::make_mut(&mut self.0).server_name = Some(name.into());
        self
    }

    /// The protocol ALPN chose (`b"h2"`, `b"http/1.1"`).
    pub fn with_alpn(mut self, protocol: impl Into<Box<[u8]>>) -> Self {
        Arc::make_mut(&mut self.0).alpn = Some(protocol.into());
        self
    }

    /// The client's certificate chain (DER, end entity first), verified by the listener, and
    /// the name it stands for (its subject's common name).
    pub fn with_client_certificate(
        mut self,
        chain: impl Into<Box<[bytes::Bytes]>>,
        name: Option<Box<str>>,
    ) -> Self {
        let inner = Arc::make_mut(&mut self.0);
        inner.client_chain = chain.into();
        inner.client_name = name;
        self
    }

    /// The protocol version: `"TLSv1.2"` or `"TLSv1.3"`.
    pub fn version(&self) -> &'static str {
        self.0.version
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.0.server_name.as_deref()
    }

    /// The protocol ALPN chose, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.alpn.as_deref()
    }

    /// The client's verified certificate chain, DER-encoded, end entity first; empty when the
    /// listener does not ask for client certificates.
    pub fn client_certificates(&self) -> &[bytes::Bytes] {
        &self.0.client_chain
    }

    /// The name of the client's verified certificate: its subject common name (without a
    /// usable one, its first DNS, e-mail or URI subject alternative name, else `serial:` and
    /// its serial number in hex). The identity the listener gives the request when it
    /// carries no other credential.
    pub fn client_name(&self) -> Option<&str> {
        self.0.client_name.as_deref()
    }
}

impl fmt::Debug for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsInfo")
            .field("version", &self.0.version)
            .field("server_name", &self.0.server_name)
            .field("alpn", &self.0.alpn.as_deref().map(String::from_utf8_lossy))
            .field("client_certificates", &self.0.client_chain.len())
            .field("client_name", &self.0.client_name)
            .finish()
    }
}

/// Who made the request, as an authentication layer established it: an id (never the
/// credential) and the scopes it grants.
///
/// [`ApiKeyAuthLayer`](crate::api_key::ApiKeyAuthLayer) puts it in the request extensions;
/// the rate limiter keys on it, and handlers and logs show [`id`](Self::id). Cloning is a
/// reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity(Arc<IdentityInner>);

#[derive(PartialEq, Eq, Hash)]
struct IdentityInner {
    id: Box<str>,
    scopes: Box<[Box<str>]>,
}

impl Identity {
    /// An identity with no scopes.
    pub fn new(id: impl Into<Box<str>>) -> Self {
        Self(Arc::new(IdentityInner {
            id: id.into(),
            scopes: Box::new([]),
        }))
    }

    /// Grants `scopes` (replacing any granted before).
    pub fn with_scopes<I>(self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Box<str>>,
    {
        Self(Arc::new(IdentityInner {
            id: self.0.id.clone(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }))
    }

    /// The id: what logs show and what the rate limiter keys on.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The scopes granted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// Whether `scope` is granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| &**s == scope)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id())
            .field("scopes", &self.0.scopes)
            .finish()
    }
}

/// The route a request matched, as the [`Router`](crate::route::Router) put it in the
/// request extensions: its prefix, and whether the prefix was stripped from the path the
/// request now carries. Logs and metrics label by it; a [`Rejection`](crate::rejection::Rejection)
/// uses it to show the path the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatchedRoute {
    prefix: Arc<str>,
    stripped: bool,
    /// The URI the client sent, when the prefix was stripped from it.
    original: Option<http::Uri>,
}

impl MatchedRoute {
    /// A match of `prefix`, stripped from the path or not.
    pub fn new(prefix: Arc<str>, stripped: bool) -> Self {
        Self {
            prefix,
            stripped,
            original: None,
        }
    }

    /// The same match, keeping `uri`, the URI the client sent before the prefix was
    /// stripped (the router moves it in here), so that [`original_path`](Self::original_path)
    /// reads it instead of rebuilding it.
    pub fn with_original_uri(mut self, uri: http::Uri) -> Self {
        self.original = Some(uri);
        self
    }

    /// The route prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the prefix was cut off the request's path.
    pub fn stripped(&self) -> bool {
        self.stripped
    }

    /// The URI the client sent, when the router kept it (it does when it strips the prefix).
    pub fn original_uri(&self) -> Option<&http::Uri> {
        self.original.as_ref()
    }

    /// The path the client sent, given the path the request carries now.
    pub fn original_path(&self, path: &str) -> String {
        if let Some(uri) = &self.original {
            return uri.path().to_owned();
        }
        match (self.stripped, path) {
            (false, _) => path.to_owned(),
            (true, "/") => self.prefix.to_string(),
            (true, _) => format!("{}{path}", self.prefix),
        }
    }
}

/// Guards that must live as long as an upgraded connection's tunnel, in the request
/// extensions.
///
/// A layer that holds something for as long as a request is in flight (the bulkhead's slot)
/// puts a clone of it here when the request asks for a protocol upgrade. When the upstream
/// answers `101 Switching Protocols`, the [proxy](crate::proxy) moves these guards into the
/// tunnel it opens and drops them when the tunnel closes; otherwise they go with the request.
/// So a WebSocket counts as in flight for as long as it is open.
#[derive(Clone, Default)]
pub struct UpgradeGuards(Vec<Arc<dyn Any + Send + Sync>>);

impl UpgradeGuards {
    /// Keeps `guard` until the tunnel closes (or the request is done, if it is not upgraded).
    pub fn push(&mut self, guard: Arc<dyn Any + Send + Sync>) {
        self.0.push(guard);
    }

    /// How many guards are kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no guard is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for UpgradeGuards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeGuards")
            .field("len", &self.0.len())
            .finish()
    }
}

/// A place where the service at the end of a stack leaves a request's head (method, URI,
/// version, headers, extensions) after it has made the copy it sends, so that a retry above
/// it can send the request again without keeping a copy of its own.
///
/// The protocol, between a layer that may send a request again and the service that
/// consumes it:
/// - The layer puts a `HandBack` into the request's extensions and keeps a clone.
/// - The service, in `call` (synchronously, before its future is returned), removes the
///   `HandBack` from the extensions, sends a copy of what it needs and
///   [puts](Self::put) the request's original parts into it.
/// - When the answer calls for another attempt, the layer [takes](Self::take) the parts
///   back; when nothing was put, the request is not sent again.
///
/// The [`ProxyService`](crate::proxy::ProxyService) hands requests back, and a
/// [`RetryLayer`](crate::retry::RetryLayer) set to
/// [`hand_back`](crate::retry::RetryLayer::hand_back) relies on it (the gateway builder sets
/// that). A request that must be kept anyway costs one header-map copy either way; this way
/// the copy is the one that is sent, and the extensions are moved, never cloned.
///
/// ```
/// use tower_gateway::extensions::HandBack;
///
/// let slot = HandBack::new();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(slot.clone());
///
/// // The service at the end of the stack:
/// let back = req.extensions_mut().remove::<HandBack>().unwrap();
/// let (parts, ()) = req.into_parts();
/// let sent = http::Request::builder().uri(parts.uri.clone()).body(()).unwrap();
/// back.put(parts);
/// # drop(sent);
///
/// // The layer above, when the attempt failed:
/// let again = http::Request::from_parts(slot.take().unwrap(), ());
/// # drop(again);
/// ```
#[derive(Clone, Default)]
pub struct HandBack(Arc<Mutex<Option<Parts>>>);

impl HandBack {
    /// An empty place.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves `parts` for the layer that put this `HandBack` in the request, replacing what
    /// was left before. Put parts without this `HandBack` in their extensions: parts that
    /// hold their own `HandBack` keep each other alive until someone takes them.
    pub fn put(&self, parts: Parts) {
        *self.lock() = Some(parts);
    }

    /// Takes what was left, if anything.
    pub fn take(&self) -> Option<Parts> {
        self.lock().take()
    }

    /// Whether something was left.
    pub fn is_filled(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Parts>> {
        // Nothing panics while holding it; a poisoned slot still holds whole parts.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for HandBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandBack")
            .field("filled", &self.is_filled())
            .finish()
    }
}

/// A borrowed view of a request's head (everything but the body): four references, made
/// without touching the request. Rate-limit key extractors and upstream balancers read the
/// request through it.
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
