//! [`ProxyService`]: forwards a request to an upstream and streams the answer back.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use super::error::ProxyError;
use super::forward::set_forwarding_headers;
use super::upgrade;
use crate::body::GatewayBody;
use crate::extensions::{CorrelationId, HandBack, PeerAddr, UpgradeGuards};
use crate::forwarded::TrustedProxies;
use crate::rejection::{Rejection, RejectionKind};

/// The pooled keep-alive HTTP/1.1 client the proxy forwards with.
pub type ProxyClient<B> = Client<HttpConnector, B>;

/// A client tuned for proxying: `TCP_NODELAY`, a 5 s connect timeout, idle pooled
/// connections kept 90 s. Share one between routes so they share the pool.
pub fn default_client<B>() -> ProxyClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// An upstream URL that is not `http://host[:port][/base-path]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Not a URL at all.
    #[error("invalid upstream URL {0:?}: expected http://host[:port][/path]")]
    Invalid(String),
    /// A scheme other than `http`.
    #[error("unsupported scheme in upstream URL {0:?}: only http:// is supported")]
    Scheme(String),
    /// A query, or user information in the authority.
    #[error("upstream URL {0:?} must not have a query or user information")]
    Extra(String),
}

/// Where a route's requests go: scheme, authority and an optional base path.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    base: Option<Box<str>>,
    url: Box<str>,
}

impl Upstream {
    /// Parses `http://host[:port][/base-path]`. The base path, if any, is put in front of the
    /// path of every forwarded request.
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| UpstreamError::Invalid(url.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError::Invalid(url.to_owned()));
        };
        if scheme != &Scheme::HTTP {
            return Err(UpstreamError::Scheme(url.to_owned()));
        }
        if uri.query().is_some() || authority.as_str().contains('@') || authority.host().is_empty()
        {
            return Err(UpstreamError::Extra(url.to_owned()));
        }
        let base = uri.path().trim_end_matches('/');
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: HeaderValue::from_str(authority.as_str())
                .map_err(|_| UpstreamError::Invalid(url.to_owned()))?,
            base: (!base.is_empty()).then(|| base.into()),
            url: url.into(),
        })
    }

    /// The URL it was parsed from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The upstream URI for a request to `uri` (whose path and query are kept).
    fn uri_for(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match (&self.base, uri.path_and_query()) {
            (None, Some(pq)) => pq.clone(),
            (None, None) => PathAndQuery::from_static("/"),
            (Some(base), pq) => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{base}{pq}")).ok()?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

/// Picks which of a route's upstreams serves the next request: the seam where load
/// balancing strategies plug in.
pub trait Balance: Send + Sync + 'static {
    /// An index into `upstreams`, which is never empty.
    fn pick(&self, upstreams: &[Upstream]) -> usize;
}

/// Takes the upstreams in turn (the default).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    #[inline]
    fn pick(&self, upstreams: &[Upstream]) -> usize {
        if upstreams.len() == 1 {
            return 0;
        }
        self.next.fetch_add(1, Ordering::Relaxed) % upstreams.len()
    }
}

struct Inner<B, L> {
    client: ProxyClient<B>,
    upstreams: Arc<[Upstream]>,
    balance: L,
    trusted: TrustedProxies,
    proto: HeaderValue,
    on_attempt: Option<AttemptHook>,
}

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

/// What an attempt needs to report itself when it ends, kept only when there is a hook.
struct AttemptTimer {
    started: Option<(tokio::time::Instant, AttemptHook, Arc<[Upstream]>, usize)>,
}

impl AttemptTimer {
    #[inline]
    fn start<B, L>(inner: &Inner<B, L>, index: usize) -> Self {
        Self {
            started: inner.on_attempt.as_ref().map(|hook| {
                (
                    tokio::time::Instant::now(),
                    Arc::clone(hook),
                    Arc::clone(&inner.upstreams),
                    index,
                )
            }),
        }
    }

    #[inline]
    fn stop(&mut self, outcome: Result<StatusCode, &ProxyError>) {
        if let Some((started, hook, upstreams, index)) = self.started.take() {
            hook(&Attempt {
                upstream: &upstreams[index],
                latency: started.elapsed(),
                outcome,
            });
        }
    }
}

/// Forwards requests to a route's upstreams; see the [module docs](super).
///
/// Always ready, like the client underneath. Cloning is a reference-count bump.
pub struct ProxyService<B = Incoming, L = RoundRobin> {
    inner: Arc<Inner<B, L>>,
}

impl<B, L> Clone for ProxyService<B, L> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B, L> fmt::Debug for ProxyService<B, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.inner.upstreams.iter().map(Upstream::url).collect();
        f.debug_struct("ProxyService")
            .field("upstreams", &urls)
            .field("trusted", &self.inner.trusted)
            .finish_non_exhaustive()
    }
}

impl<B> ProxyService<B, RoundRobin> {
    /// Forwards to `upstreams` in turn over `client`.
    ///
    /// # Panics
    /// If `upstreams` is empty: a proxy needs somewhere to forward to.
    pub fn new(client: ProxyClient<B>, upstreams: Vec<Upstream>) -> Self {
        Self::with_balance(client, upstreams, RoundRobin::default())
    }
}

impl<B, L: Balance> ProxyService<B, L> {
    /// Forwards to the upstream `balance` picks.
    ///
    /// # Panics
    /// If `upstreams` is empty: a proxy needs somewhere to forward to.
    pub fn with_balance(client: ProxyClient<B>, upstreams: Vec<Upstream>, balance: L) -> Self {
        assert!(!upstreams.is_empty(), "a proxy needs at least one upstream");
        Self {
            inner: Arc::new(Inner {
                client,
                upstreams: upstreams.into(),
                balance,
                trusted: TrustedProxies::none(),
                proto: HeaderValue::from_static("http"),
                on_attempt: None,
            }),
        }
    }

    /// Keeps `X-Forwarded-Proto`/`-Host` from peers in `trusted`. Call before cloning.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.inner_mut().trusted = trusted;
        self
    }

    /// The `X-Forwarded-Proto` this hop sets (default `http`). Call before cloning.
    pub fn forwarded_proto(mut self, proto: HeaderValue) -> Self {
        self.inner_mut().proto = proto;
        self
    }

    /// Calls `hook` when each upstream attempt ends: at its response head, or when the
    /// exchange fails before one (with the upstream, the latency and the outcome). It runs
    /// on the request path, so keep it cheap; without a hook no clock is read. The
    /// gateway's metrics record `gateway_upstream_duration_seconds{route}` with it. Call
    /// before cloning.
    pub fn on_attempt<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Attempt<'_>) + Send + Sync + 'static,
    {
        self.inner_mut().on_attempt = Some(Arc::new(hook));
        self
    }

    fn inner_mut(&mut self) -> &mut Inner<B, L> {
        Arc::get_mut(&mut self.inner).expect("configure a ProxyService before cloning it")
    }
}

impl<B, L> Service<Request<B>> for ProxyService<B, L>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    L: Balance,
{
    type Response = Response<GatewayBody<Incoming>>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let inner = &*self.inner;
        let index = inner.balance.pick(&inner.upstreams);
        let upstream = &inner.upstreams[index];
        let correlation_id = req.extensions().get::<CorrelationId>().cloned();
        let Some(uri) = upstream.uri_for(req.uri()) else {
            let rejection = Rejection::new(RejectionKind::BadRequest)
                .with_detail("the request target cannot be forwarded")
                .for_request(&req);
            return ResponseFuture::answer(rejection.into_response());
        };
        let peer = req.extensions().get::<PeerAddr>().copied();
        let hand_back = req.extensions_mut().remove::<HandBack>();
        let client_upgrade = upgrade::wants_upgrade(req.headers()).then(|| {
            let guards = req.extensions_mut().remove::<UpgradeGuards>();
            (hyper::upgrade::on(&mut req), guards.unwrap_or_default())
        });
        if let Some(slot) = hand_back.filter(|_| client_upgrade.is_none()) {
            req = hand_back_parts(req, &slot);
        }
        set_forwarding_headers(
            req.headers_mut(),
            peer,
            &upstream.host,
            &inner.proto,
            &inner.trusted,
        );
        *req.uri_mut() = uri;
        // HTTP/1.1 upstream whatever the client spoke, so the pooled connection stays alive.
        *req.version_mut() = Version::HTTP_11;
        ResponseFuture {
            state: State::Forward {
                timer: AttemptTimer::start(inner, index),
                fut: inner.client.request(req),
                client_upgrade,
                correlation_id,
            },
        }
    }
}

/// Puts `req`'s parts into `slot` for the layer that asked for them (a retry) and returns
/// what is sent instead: the same method, headers and body, with no extensions (the client
/// reads none). The original header map, with the spare room the server's parser left, is
/// the one sent and grown by the forwarding headers; the kept copy is exactly as large as it
/// needs to be.
fn hand_back_parts<B>(req: Request<B>, slot: &HandBack) -> Request<B> {
    let (mut parts, body) = req.into_parts();
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
            fut: hyper_util::client::legacy::ResponseFuture,
            client_upgrade: Option<(OnUpgrade, UpgradeGuards)>,
            correlation_id: Option<CorrelationId>,
            timer: AttemptTimer,
        },
        Answer { res: Option<Response<GatewayBody<Incoming>>> },
    }
}

impl ResponseFuture {
    fn answer(res: Response<GatewayBody<Incoming>>) -> Self {
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
    type Output = Result<Response<GatewayBody<Incoming>>, std::convert::Infallible>;

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
            } => match fut.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(mut res)) => {
                    timer.stop(Ok(res.status()));
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
                        tokio::spawn(upgrade::tunnel(client, upstream, guards));
                    }
                    Poll::Ready(Ok(res.map(GatewayBody::stream)))
                }
                Poll::Ready(Err(error)) => {
                    let error = ProxyError::from_client(error);
                    timer.stop(Err(&error));
                    tracing::debug!(%error, source = ?std::error::Error::source(&error), "upstream failed");
                    let detail = if error.is_connect() {
                        "the upstream could not be reached"
                    } else {
                        "the upstream connection failed before it answered"
                    };
                    let mut rejection =
                        Rejection::new(RejectionKind::BadGateway).with_detail(detail);
                    if let Some(id) = correlation_id.take() {
                        rejection = rejection.with_correlation_id(id);
                    }
                    let mut res: Response<GatewayBody<Incoming>> = rejection.into_response();
                    res.extensions_mut().insert(error);
                    Poll::Ready(Ok(res))
                }
            },
        }
    }
}
