//! [`ProxyService`]: forwards a request to an upstream and streams the answer back.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture as ClientFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use super::body::{HeadArrived, SentBody, UpstreamBody};
use super::error::ProxyError;
use super::forward::set_forwarding_headers;
use super::upgrade;
use crate::body::GatewayBody;
use crate::extensions::{CorrelationId, HandBack, PeerAddr, RequestHead, TlsInfo, UpgradeGuards};
use crate::forwarded::TrustedProxies;
use crate::rejection::{Fault, Rejection, RejectionKind};
use crate::upstream::{Picked, Pool, Transport, Tried, Upstream, with_tried};

/// The pooled keep-alive client the proxy forwards with, for request bodies of type `B`:
/// HTTP/1.1 to `http://` upstreams, TLS with HTTP/2 or HTTP/1.1 (as ALPN decides) to
/// `https://` ones, HTTP/2 with prior knowledge to `h2c://` ones. Cloning is a
/// reference-count bump, and the clones share the connection pools: share one between
/// proxies so that they share the pools.
pub struct ProxyClient<B> {
    clients: Arc<Clients<B>>,
}

/// The connector of `https://` upstreams.
#[cfg(feature = "tls")]
type TlsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The clients of `https://` upstreams, one per HTTP/2 connection allowed.
#[cfg(feature = "tls")]
type TlsClients<B> = Box<[Client<TlsConnector, SentBody<B>>]>;

struct Clients<B> {
    /// `http://`: its pool keeps as many HTTP/1.1 connections as it needs.
    http: Client<HttpConnector, SentBody<B>>,
    /// `https://`: one per HTTP/2 connection allowed to an upstream (HTTP/2 or HTTP/1.1 as
    /// ALPN decides; an HTTP/1.1 upstream's connections are spread over them too). Made at
    /// the first `https://` request: without one, the system's roots are never read.
    #[cfg(feature = "tls")]
    https: std::sync::OnceLock<TlsClients<B>>,
    /// What the `https://` clients are made with.
    #[cfg(feature = "tls")]
    settings: ProxyClientBuilder,
    /// `h2c://`: one per HTTP/2 connection allowed to an upstream.
    h2c: Box<[Client<HttpConnector, SentBody<B>>]>,
    /// Spreads HTTP/2 requests over the clients.
    next: AtomicUsize,
}

impl<B> Clients<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    #[inline]
    fn request(&self, transport: Transport, req: Request<SentBody<B>>) -> ClientFuture {
        match transport {
            Transport::Http => self.http.request(req),
            #[cfg(feature = "tls")]
            Transport::Https => {
                let https = self.https.get_or_init(|| self.settings.https_clients());
                https[self.lane(https.len())].request(req)
            }
            // Without `tls` no `https://` upstream parses.
            #[cfg(not(feature = "tls"))]
            Transport::Https => self.http.request(req),
            _ => self.h2c[self.lane(self.h2c.len())].request(req),
        }
    }

    #[inline]
    fn lane(&self, lanes: usize) -> usize {
        if lanes == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % lanes
        }
    }
}

impl<B> Clone for ProxyClient<B> {
    fn clone(&self) -> Self {
        Self {
            clients: Arc::clone(&self.clients),
        }
    }
}

impl<B> fmt::Debug for ProxyClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyClient")
            .field("http2_connections", &self.clients.h2c.len())
            .finish_non_exhaustive()
    }
}

impl<B> ProxyClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// A client tuned for proxying, with [`ProxyClientBuilder`]'s defaults: `TCP_NODELAY`,
    /// a 5 s connect timeout, idle pooled connections kept 90 s, `https://` upstreams
    /// verified against the system's roots. For other settings, build one with a
    /// [`ProxyClientBuilder`].
    pub fn new() -> Self {
        ProxyClientBuilder::new().build()
    }
}

impl<B> Default for ProxyClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn default() -> Self {
        Self::new()
    }
}

/// How a [`ProxyClient`] connects and pools its connections; `build()` makes one for any
/// request body type. The gateway builder takes one as it is
/// (`GatewayBuilder::client`), since it picks the body type itself.
#[derive(Clone, Debug)]
#[must_use]
pub struct ProxyClientBuilder {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    send_buffer_size: Option<usize>,
    recv_buffer_size: Option<usize>,
    http2_connections: NonZeroUsize,
    #[cfg(feature = "tls")]
    tls: Option<(crate::tls::UpstreamTls, Arc<rustls::ClientConfig>)>,
}

impl Default for ProxyClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// How often an idle HTTP/2 upstream connection is pinged, and how long the ping may go
/// unanswered before the connection is given up.
const HTTP2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));

impl ProxyClientBuilder {
    /// The defaults: a 5 s connect timeout, idle connections kept 90 s, no cap on idle
    /// connections per upstream, the kernel's socket buffer sizes, one HTTP/2 connection
    /// per upstream, `https://` upstreams verified against the system's roots;
    /// `TCP_NODELAY` always.
    pub fn new() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: usize::MAX,
            send_buffer_size: None,
            recv_buffer_size: None,
            http2_connections: NonZeroUsize::MIN,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// How long a new upstream connection may take to connect (default 5 s); after that
    /// the attempt fails as unreachable (`502`). A TLS handshake after it is bounded by the
    /// attempt's own timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept for reuse (default 90 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most idle connections kept per upstream (default: no cap).
    pub fn max_idle_per_upstream(mut self, max: usize) -> Self {
        self.max_idle_per_host = max;
        self
    }

    /// The kernel's send buffer size for upstream sockets (`SO_SNDBUF`; default: the
    /// kernel's).
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// The kernel's receive buffer size for upstream sockets (`SO_RCVBUF`; default: the
    /// kernel's).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// How many HTTP/2 connections each `h2c://` or `https://` upstream gets (default 1),
    /// requests spread over them in turn. One HTTP/2 connection carries every request to an
    /// upstream as streams, up to the stream limit the upstream announces
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`, often 100 to 250); requests beyond it wait for a
    /// stream. Raise this where more requests than that are in flight to one upstream.
    pub fn http2_connections(mut self, connections: NonZeroUsize) -> Self {
        self.http2_connections = connections;
        self
    }

    /// Speaks to `https://` upstreams with `tls`'s roots and client certificate, read (and
    /// checked) now.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::tls::UpstreamTls) -> Result<Self, crate::tls::TlsError> {
        let config = tls.client_config()?;
        self.tls = Some((tls, Arc::new(config)));
        Ok(self)
    }

    fn connector(&self) -> HttpConnector {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_send_buffer_size(self.send_buffer_size);
        connector.set_recv_buffer_size(self.recv_buffer_size);
        connector
    }

    /// A client with these settings and pools of its own.
    pub fn build<B>(&self) -> ProxyClient<B>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let h2c = (0..self.http2_connections.get())
            .map(|_| self.pooled().http2_only(true).build(self.connector()))
            .collect();
        ProxyClient {
            clients: Arc::new(Clients {
                http: self.pooled().build(self.connector()),
                #[cfg(feature = "tls")]
                https: std::sync::OnceLock::new(),
                #[cfg(feature = "tls")]
                settings: self.clone(),
                h2c,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// A pooled client's settings.
    fn pooled(&self) -> hyper_util::client::legacy::Builder {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle_per_host)
            .http2_keep_alive_interval(HTTP2_KEEP_ALIVE.0)
            .http2_keep_alive_timeout(HTTP2_KEEP_ALIVE.1);
        builder
    }

    /// The clients of `https://` upstreams, one per HTTP/2 connection allowed.
    #[cfg(feature = "tls")]
    fn https_clients<B>(&self) -> TlsClients<B>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        (0..self.http2_connections.get())
            .map(|_| self.pooled().build(self.tls_connector()))
            .collect()
    }

    #[cfg(feature = "tls")]
    fn tls_connector(&self) -> TlsConnector {
        let mut http = self.connector();
        http.enforce_http(false);
        let (config, http2) = match &self.tls {
            Some((tls, config)) => (rustls::ClientConfig::clone(config), tls.http2()),
            None => (
                crate::tls::UpstreamTls::new()
                    .client_config()
                    // No system roots: every `https://` upstream fails its handshake (a
                    // `502` that says so); the gateway builder refuses such routes up front.
                    .unwrap_or_else(|_| crate::tls::UpstreamTls::no_roots_config()),
                true,
            ),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only();
        if http2 {
            builder.enable_all_versions().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        }
    }
}

struct Inner<B> {
    client: ProxyClient<B>,
    pool: Pool,
    trusted: TrustedProxies,
    proto: HeaderValue,
    request_body_timeout: Option<Duration>,
    on_attempt: Option<AttemptHook>,
}

/// `X-Forwarded-Proto` of a request that came over TLS.
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The default [request-body timeout](ProxyService::request_body_timeout): 30 s.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// One upstream attempt as the proxy saw it, for [`ProxyService::on_attempt`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Attempt<'a> {
    /// The upstream it went to.
    pub upstream: &'a Upstream,
    /// From sending the request until the response head arrived, or until the exchange
    /// failed.
    pub latency: Duration,
    /// The upstream's status, or why no response head came.
    pub outcome: Result<StatusCode, &'a ProxyError>,
}

type AttemptHook = Arc<dyn Fn(&Attempt<'_>) + Send + Sync>;

impl<B> Clone for Inner<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            pool: self.pool.clone(),
            trusted: self.trusted.clone(),
            proto: self.proto.clone(),
            request_body_timeout: self.request_body_timeout,
            on_attempt: self.on_attempt.clone(),
        }
    }
}

/// What an attempt needs to report itself when it ends, kept only when there is a hook.
struct AttemptTimer {
    started: Option<(tokio::time::Instant, AttemptHook)>,
}

impl AttemptTimer {
    #[inline]
    fn start<B>(inner: &Inner<B>) -> Self {
        Self {
            started: inner
                .on_attempt
                .as_ref()
                .map(|hook| (tokio::time::Instant::now(), Arc::clone(hook))),
        }
    }

    #[inline]
    fn stop(&mut self, upstream: &Upstream, outcome: Result<StatusCode, &ProxyError>) {
        if let Some((started, hook)) = self.started.take() {
            hook(&Attempt {
                upstream,
                latency: started.elapsed(),
                outcome,
            });
        }
    }
}

/// Forwards requests to a route's upstreams; see the [module docs](super).
///
/// Always ready, like the client underneath. Cloning is a reference-count bump.
pub struct ProxyService<B = Incoming> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for ProxyService<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> fmt::Debug for ProxyService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyService")
            .field("pool", &self.inner.pool)
            .field("trusted", &self.inner.trusted)
            .finish_non_exhaustive()
    }
}

impl<B> ProxyService<B> {
    /// Forwards to the endpoints of `pool` over `client`, as the pool picks them (a
    /// one-endpoint pool for a single upstream: `Pool::builder([url]).build()`).
    pub fn new(client: ProxyClient<B>, pool: Pool) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                pool,
                trusted: TrustedProxies::none(),
                proto: HeaderValue::from_static("http"),
                request_body_timeout: Some(DEFAULT_REQUEST_BODY_TIMEOUT),
                on_attempt: None,
            }),
        }
    }

    /// The pool it forwards to.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Keeps `X-Forwarded-Proto`/`-Host` from peers in `trusted`. Like every setter here, it
    /// changes this service only, not clones made before.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.inner_mut().trusted = trusted;
        self
    }

    /// The `X-Forwarded-Proto` this hop sets for a plaintext request (default `http`); a
    /// request that came over TLS (it carries a [`TlsInfo`]) gets `https`.
    pub fn forwarded_proto(mut self, proto: HeaderValue) -> Self {
        self.inner_mut().proto = proto;
        self
    }

    /// How long the client's request body may send nothing while the proxy waits for it,
    /// before the response head has arrived (default 30 s; `None`: no limit). A body that
    /// stalls that long ends the exchange with `408`, the client's fault. The clock runs
    /// only while the proxy is waiting on the client, never while the upstream is slow to
    /// connect or to read, and stops once the response head has arrived, so a long-lived
    /// stream stays up.
    pub fn request_body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.inner_mut().request_body_timeout = timeout.into();
        self
    }

    /// Calls `hook` when each upstream attempt ends: at its response head, or when the
    /// exchange fails before one (with the upstream, the latency and the outcome). It runs
    /// on the request path, so keep it cheap; without a hook no clock is read. The
    /// gateway's metrics record `gateway_upstream_duration_seconds{route}` with it.
    pub fn on_attempt<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Attempt<'_>) + Send + Sync + 'static,
    {
        self.inner_mut().on_attempt = Some(Arc::new(hook));
        self
    }

    /// This service's settings, copied first when clones share them.
    fn inner_mut(&mut self) -> &mut Inner<B> {
        Arc::make_mut(&mut self.inner)
    }
}

impl<B> Service<Request<B>> for ProxyService<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<GatewayBody<UpstreamBody>>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.method() == Method::CONNECT {
            // Never upstream: this is a reverse proxy, not a tunnel to anywhere.
            return ResponseFuture::answer(
                Rejection::connect_refused()
                    .for_request(&req)
                    .into_response(),
            );
        }
        let inner = &*self.inner;
        // Endpoints a retry already tried (only a pool of several has a choice).
        let tried = if inner.pool.len() > 1 {
            req.extensions().get::<Tried>().copied().unwrap_or_default()
        } else {
            Tried::default()
        };
        let correlation_id = req.extensions().get::<CorrelationId>().cloned();
        let picked = match inner.pool.pick_for(RequestHead::from(&req), tried) {
            Ok(picked) => picked,
            Err(none) => {
                let rejection = Rejection::new(RejectionKind::NoHealthyUpstream)
                    .with_retry_after(none.retry_after())
                    .for_request(&req);
                return ResponseFuture::answer(rejection.into_response());
            }
        };
        let upstream = picked.upstream();
        let Some(uri) = upstream.uri_for(req.uri()) else {
            let rejection = Rejection::new(RejectionKind::BadRequest)
                .with_detail("the request target cannot be forwarded")
                .for_request(&req);
            return ResponseFuture::answer(rejection.into_response());
        };
        let peer = PeerAddr::from_extensions(req.extensions());
        let over_tls = req.extensions().get::<TlsInfo>().is_some();
        let transport = upstream.transport();
        // Only an absolute-form target has one (origin form, nearly every request, has not).
        // Read before a hand-back leaves the request with a bare URI.
        let target_authority = req.uri().authority().cloned();
        let hand_back = req.extensions_mut().remove::<HandBack>();
        let client_upgrade = if !upgrade::wants_upgrade(req.headers()) {
            None
        } else if req.version() == Version::HTTP_11 {
            let guards = req.extensions_mut().remove::<UpgradeGuards>();
            Some((hyper::upgrade::on(&mut req), guards.unwrap_or_default()))
        } else {
            // Only HTTP/1.1 switches protocols: the upstream is asked for none, so it never
            // switches on a client that could not follow.
            upgrade::strip_upgrade(req.headers_mut());
            None
        };
        if let Some(slot) = hand_back.filter(|_| client_upgrade.is_none()) {
            let tried = (inner.pool.len() > 1).then(|| with_tried(tried, picked.index()));
            req = hand_back_parts(req, &slot, tried);
        }
        set_forwarding_headers(
            req.headers_mut(),
            peer,
            target_authority.as_ref(),
            upstream.host(),
            if over_tls { &HTTPS } else { &inner.proto },
            &inner.trusted,
        );
        *req.uri_mut() = uri;
        // HTTP/1.1 to an HTTP/1.1 upstream whatever the client spoke, so the pooled
        // connection stays alive; an HTTP/2 connection sends it as a stream all the same.
        *req.version_mut() = Version::HTTP_11;
        // Only a body still to come can stall.
        let head = inner
            .request_body_timeout
            .filter(|_| !req.body().is_end_stream())
            .map(|timeout| (timeout, Arc::new(HeadArrived::default())));
        let head_arrived = head.as_ref().map(|(_, head)| Arc::clone(head));
        let req = req.map(|body| SentBody::new(body, head));
        ResponseFuture {
            state: State::Forward {
                timer: AttemptTimer::start(inner),
                picked: Some(picked),
                fut: inner.client.clients.request(transport, req),
                client_upgrade,
                correlation_id,
                head_arrived,
            },
        }
    }
}

/// Puts `req`'s parts into `slot` for the layer that asked for them (a retry), with the
/// endpoints tried so far when the pool has a choice, and returns
/// what is sent instead: the same method, headers and body, with no extensions (the client
/// reads none). The original header map, with the spare room the server's parser left, is
/// the one sent and grown by the forwarding headers; the kept copy is exactly as large as it
/// needs to be.
fn hand_back_parts<B>(req: Request<B>, slot: &HandBack, tried: Option<Tried>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    if let Some(tried) = tried {
        parts.extensions.insert(tried);
    }
    let kept = parts.headers.clone();
    let mut sent = Request::new(body);
    *sent.method_mut() = parts.method.clone();
    *sent.headers_mut() = std::mem::replace(&mut parts.headers, kept);
    slot.put(parts);
    sent
}

pin_project! {
    /// Response future of [`ProxyService`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Forward {
            #[pin]
            fut: ClientFuture,
            client_upgrade: Option<(OnUpgrade, UpgradeGuards)>,
            correlation_id: Option<CorrelationId>,
            timer: AttemptTimer,
            head_arrived: Option<Arc<HeadArrived>>,
            picked: Option<Picked>,
        },
        Answer { res: Option<Response<GatewayBody<UpstreamBody>>> },
    }
}

impl ResponseFuture {
    fn answer(res: Response<GatewayBody<UpstreamBody>>) -> Self {
        Self {
            state: State::Answer { res: Some(res) },
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<GatewayBody<UpstreamBody>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            StateProj::Forward {
                fut,
                client_upgrade,
                correlation_id,
                timer,
                head_arrived,
                picked,
            } => match fut.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(mut res)) => {
                    if let Some(head) = head_arrived {
                        head.set();
                    }
                    let mut picked = picked.take().expect("polled after completion");
                    timer.stop(picked.upstream(), Ok(res.status()));
                    picked.answered(&res);
                    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let Some((client, guards)) = client_upgrade.take() else {
                            // Nothing to join it to: the client would wait on a dead socket.
                            let rejection = Rejection::new(RejectionKind::BadGateway)
                                .with_detail("the upstream switched protocols unasked");
                            return Poll::Ready(Ok(rejection
                                .with_correlation_id(correlation_id.take())
                                .into_response()));
                        };
                        let upstream = hyper::upgrade::on(&mut res);
                        // The endpoint counts the tunnel in flight until it closes.
                        let mut guards = guards;
                        guards.push(Arc::new(picked));
                        tokio::spawn(upgrade::tunnel(client, upstream, guards));
                        return Poll::Ready(Ok(
                            res.map(|body| GatewayBody::stream(UpstreamBody::new(body, None)))
                        ));
                    }
                    Poll::Ready(Ok(res.map(|body| {
                        GatewayBody::stream(UpstreamBody::new(body, Some(picked)))
                    })))
                }
                Poll::Ready(Err(error)) => {
                    let error = ProxyError::from_client(error);
                    let mut picked = picked.take().expect("polled after completion");
                    timer.stop(picked.upstream(), Err(&error));
                    picked.broke(error.fault());
                    let source = std::error::Error::source(&error);
                    if error.fault() == Fault::Upstream {
                        tracing::debug!(%error, ?source, "upstream failed");
                    } else {
                        tracing::debug!(%error, ?source, "the client's request body failed");
                    }
                    let (kind, detail) = error.answer();
                    let mut rejection = Rejection::new(kind).with_detail(detail);
                    if let Some(id) = correlation_id.take() {
                        rejection = rejection.with_correlation_id(id);
                    }
                    let mut res: Response<GatewayBody<UpstreamBody>> = rejection.into_response();
                    res.extensions_mut().insert(error);
                    Poll::Ready(Ok(res))
                }
            },
        }
    }
}
