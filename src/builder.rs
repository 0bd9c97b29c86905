//! [`GatewayBuilder`]: routes and layers composed into one gateway service, in the contract's
//! order. This is the only module that knows that order.
//!
//! ```text
//!  request ─▶ CorrelationId   keeps or makes X-Correlation-Id; every answer below carries it
//!             HopByHop        neither side sees the other's connection headers
//!             RequestSpan     a tracing span per request and an access-log event per answer
//!             Router          404 / 400 before any policy: no token spent, no breaker touched
//!             ├─ Metrics      (feature `metrics`) the route's requests, rejections, latency
//!             ├─ your route layers (Route::layer), outermost first
//!             ApiKeyAuth      when auth is on: 401 / 403 before any limit is spent
//!             RateLimit       per client (identity, else address): 429 + Retry-After
//!             CircuitBreaker  per route: 503 while open, without touching anything below
//!             Bulkhead        per route, all clients: 429 at once; held until the body ends
//!             Retry           safe methods again after a 5xx, 502 or 504; one bulkhead slot
//!             Timeout         per attempt, until the response head: 504
//!             ProxyService    streams to an upstream and back: 502 when unreachable
//! ```
//!
//! The breaker sits outside retry, so it counts one outcome per client request (after its
//! retries); retry sits outside the timeout, so each attempt gets a fresh timeout. A route's
//! [classifier](Route::classifier) tells both what a failure is.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::builder::{Gateway, Route};
//! use tower_gateway::server::Server;
//!
//! let gateway = Gateway::builder()
//!     .route("/api/a", Route::to(["http://127.0.0.1:5051"]).timeout(Duration::from_secs(5)))
//!     .route("/api/b", Route::to(["http://127.0.0.1:5052", "http://127.0.0.1:5053"]))
//!     .build()?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5050").await?;
//! Server::new().serve(listener, gateway, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! Inside axum, mount it under a path with `Router::nest_service("/api", gateway)` (the
//! gateway then sees paths without `/api`), or for everything axum does not route with
//! `Router::fallback_service(gateway)`; build it for axum's body type with
//! `Gateway::<axum::body::Body>::builder()`. Around the whole gateway, wrap it like any
//! service (`ServiceBuilder::new().layer(..).service(gateway)`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::util::{BoxCloneSyncService, Either};
use tower::{Layer, Service};

use crate::api_key::{ApiKeyAuth, ApiKeyAuthLayer, KeySet, X_API_KEY};
use crate::body::GatewayBody;
use crate::bulkhead::{Bulkhead, BulkheadLayer, ResponseBody};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, FailureRate};
use crate::classify::{FailureClassifier, SharedClassifier};
use crate::correlation_id::{CorrelationIdLayer, SetCorrelationId, X_CORRELATION_ID};
use crate::hop_by_hop::{HopByHop, HopByHopLayer};
use crate::proxy::{
    ProxyClient, ProxyService, TrustedProxies, Upstream, UpstreamError, default_client,
};
use crate::rate_limit::{
    Client, ClientKey, LocalStore, Quota, RateLimit, RateLimitLayer, RouteStore,
};
use crate::retry::{Retry, RetryBody, RetryLayer};
use crate::route::{RouteError, Router};
use crate::timeout::{RequestBody, Timeout, TimeoutLayer};
use crate::trace::{RequestSpan, RequestSpanLayer};

/// The body of every gateway response: the upstream's stream or the gateway's own answer,
/// holding the route's bulkhead slot until it ends.
pub type GatewayResponseBody = ResponseBody<GatewayBody<Incoming>>;

/// The response of every gateway stack.
pub type GatewayResponse = Response<GatewayResponseBody>;

/// A route's stack when it has no layers of the user's: with auth when it is on.
pub type RouteStack<B> = Either<ApiKeyAuth<Policies<B>, Arc<KeySet>>, Policies<B>>;

/// The policies inside auth: the rate limit when the route has one (in-process, or in
/// Redis when the builder has a [shared store](GatewayBuilder::rate_limit_store)), then the
/// rest.
pub type Policies<B> = Either<RateLimit<Guarded<B>, ClientKey, RouteStore<Client>>, Guarded<B>>;

/// The circuit breaker when the route has one, then the rest.
pub type Guarded<B> = Either<CircuitBreaker<Admitted<B>, SharedClassifier>, Admitted<B>>;

/// What runs once a request is admitted: the bulkhead (without a limit when the route has
/// none), retry (passing everything straight through when the route has none), the
/// per-attempt timeout and the proxy.
pub type Admitted<B> = Bulkhead<Retry<Timeout<ProxyService<Forwarded<B>>>, SharedClassifier>>;

/// The request body the proxy sends: the client's, replayable by retry, behind the timeout's
/// progress tracking.
pub type Forwarded<B> = RequestBody<RetryBody<B>>;

/// The client a gateway forwards with: its request bodies are the client's bodies behind
/// retry's [`RetryBody`] and the timeout's [`RequestBody`].
pub type GatewayClient<B> = ProxyClient<Forwarded<B>>;

/// A route's stack with the user's layers around it, type-erased.
pub type BoxRoute<B> = BoxCloneSyncService<Request<B>, GatewayResponse, Infallible>;

/// A route's stack, behind its metrics when the feature is on.
#[cfg(feature = "metrics")]
type RouteService<B> = crate::metrics::Metrics<Either<RouteStack<B>, BoxRoute<B>>>;
#[cfg(not(feature = "metrics"))]
type RouteService<B> = Either<RouteStack<B>, BoxRoute<B>>;
type Stack<B> = SetCorrelationId<HopByHop<RequestSpan<Router<RouteService<B>>>>>;
type WrapFn<B> = Arc<dyn Fn(BoxRoute<B>) -> BoxRoute<B> + Send + Sync>;

/// The default per-attempt timeout: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A route's upstreams and settings, for [`GatewayBuilder::route`].
#[must_use]
pub struct Route<B = Incoming> {
    upstreams: Vec<String>,
    strip_prefix: bool,
    timeout: Duration,
    anonymous: Vec<String>,
    rate_limit: Option<Quota>,
    circuit_breaker: Option<(Trip, Duration)>,
    bulkhead: Option<NonZeroUsize>,
    retry: Option<RetryLayer>,
    classifier: SharedClassifier,
    layers: Vec<WrapFn<B>>,
}

impl<B> fmt::Debug for Route<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("upstreams", &self.upstreams)
            .field("strip_prefix", &self.strip_prefix)
            .field("timeout", &self.timeout)
            .field("anonymous", &self.anonymous)
            .field("rate_limit", &self.rate_limit)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("bulkhead", &self.bulkhead)
            .field("retry", &self.retry)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl<B> Route<B> {
    /// Forwards to `upstreams` (`http://host[:port][/base]`), round-robin when several, with
    /// the prefix stripped and a 30 s timeout.
    pub fn to<I>(upstreams: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self {
            upstreams: upstreams.into_iter().map(Into::into).collect(),
            strip_prefix: true,
            timeout: DEFAULT_TIMEOUT,
            anonymous: Vec::new(),
            rate_limit: None,
            circuit_breaker: None,
            bulkhead: None,
            retry: None,
            classifier: SharedClassifier::default(),
            layers: Vec::new(),
        }
    }

    /// Limits each client of this route to `quota`: by its auth identity when it has one,
    /// else by its IP address (see [`ClientKey`]; the gateway's
    /// [trusted proxies](GatewayBuilder::trusted_proxies) may name it). Over the limit:
    /// `429` with `Retry-After`. Every response of the route carries the `RateLimit` headers.
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.rate_limit = Some(quota);
        self
    }

    /// Opens this route's circuit after `failure_threshold` consecutive upstream failures
    /// (5xx, timeouts, unreachable upstreams; never 4xx): `503` without contacting the
    /// upstream for `cooldown`, then one probe decides (see
    /// [`CircuitBreakerLayer`]).
    pub fn circuit_breaker(mut self, failure_threshold: NonZeroU32, cooldown: Duration) -> Self {
        self.circuit_breaker = Some((Trip::Consecutive(failure_threshold), cooldown));
        self
    }

    /// Opens this route's circuit when the share of failed requests over a sliding window
    /// reaches `policy`'s rate (with at least its minimum of calls), instead of after
    /// consecutive failures; then as [`circuit_breaker`](Self::circuit_breaker).
    pub fn circuit_breaker_failure_rate(mut self, policy: FailureRate, cooldown: Duration) -> Self {
        self.circuit_breaker = Some((Trip::Rate(policy), cooldown));
        self
    }

    /// At most `max_concurrent` requests of this route in flight, all clients together,
    /// each counted until its response body ends; the excess gets `429` at once.
    pub fn bulkhead(mut self, max_concurrent: NonZeroUsize) -> Self {
        self.bulkhead = Some(max_concurrent);
        self
    }

    /// Retries this route's failed `GET`, `HEAD` and `OPTIONS` requests as `retry` says
    /// (`RetryLayer::new(2).base_delay(..)`; see [`RetryLayer`]), each attempt under the
    /// route's timeout. Failures are what the route's [classifier](Self::classifier) says.
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = Some(retry);
        self
    }

    /// What counts as an upstream failure on this route, for its circuit breaker and its
    /// retries (default [`ServerErrors`](crate::classify::ServerErrors): every 5xx, never a
    /// 4xx).
    pub fn classifier(mut self, classifier: impl FailureClassifier) -> Self {
        self.classifier = SharedClassifier::new(classifier);
        self
    }

    /// When auth is on, lets requests under `sub_path` (relative to the route prefix, on a
    /// segment boundary: `/health` under `/api/a` is `/api/a/health`) through without a key.
    pub fn anonymous(mut self, sub_path: impl Into<String>) -> Self {
        self.anonymous.push(sub_path.into());
        self
    }

    /// Whether the route prefix is cut off the path before forwarding (default `true`).
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.strip_prefix = strip;
        self
    }

    /// The per-attempt timeout until the response head arrives (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Wraps this route's stack in `layer` (after the router, before the built-in policies).
    /// Later calls wrap earlier ones. A route with layers of its own pays one boxed future
    /// per request; routes without stay unboxed.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxRoute<B>> + Send + Sync + 'static,
        L::Service: Service<Request<B>, Response = GatewayResponse, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<B>>>::Future: Send + 'static,
        B: 'static,
    {
        self.layers.push(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }
}

/// What opens a route's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trip {
    Consecutive(NonZeroU32),
    Rate(FailureRate),
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A bad or duplicate route prefix.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A route's upstream URL is not usable.
    #[error("route {prefix:?}: {source}")]
    Upstream {
        /// The route.
        prefix: String,
        /// What is wrong with the URL.
        source: UpstreamError,
    },
    /// A route has no upstream.
    #[error("route {0:?} has no upstreams")]
    NoUpstreams(String),
    /// A route's timeout is zero.
    #[error("route {0:?}: the timeout must be greater than zero")]
    ZeroTimeout(String),
    /// A route's circuit-breaker cooldown is zero.
    #[error("route {0:?}: the circuit breaker's cooldown must be greater than zero")]
    ZeroCooldown(String),
    /// An anonymous sub-path does not start with `/`, or ends with one.
    #[error(
        "route {prefix:?}: anonymous sub-path {path:?} must start with '/' and not end with it"
    )]
    Anonymous {
        /// The route.
        prefix: String,
        /// The sub-path.
        path: String,
    },
}

/// Collects routes and settings for a [`Gateway`].
#[must_use]
pub struct GatewayBuilder<B = Incoming> {
    routes: Vec<(String, Route<B>)>,
    auth: Option<(Arc<KeySet>, HeaderName)>,
    trusted: TrustedProxies,
    correlation_header: HeaderName,
    client: Option<GatewayClient<B>>,
    #[cfg(feature = "redis")]
    shared_limits: Option<crate::rate_limit::RedisBackend>,
    /// The state of the gateway this one replaces, to carry over.
    previous: Option<Arc<RouteStates>>,
}

/// What a gateway keeps per route to hand over to the gateway that replaces it: the layers
/// whose clones share its rate-limit budgets, breaker and bulkhead slots, with the settings
/// they were built with.
type RouteStates = HashMap<String, Carried>;

#[derive(Clone, Default)]
struct Carried {
    rate_limit: Option<(Quota, RateLimitLayer<ClientKey, RouteStore<Client>>)>,
    breaker: Option<((Trip, Duration), CircuitBreakerLayer<SharedClassifier>)>,
    bulkhead: Option<(NonZeroUsize, BulkheadLayer)>,
    /// Which of the route's breakers, over its reloads, owns the state gauge: a replaced
    /// breaker whose old requests are still finishing must not overwrite it.
    #[cfg(feature = "metrics")]
    gauge_owner: Arc<std::sync::atomic::AtomicU64>,
}

impl<B> fmt::Debug for GatewayBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("routes", &self.routes)
            .field("auth", &self.auth)
            .field("trusted", &self.trusted)
            .field("correlation_header", &self.correlation_header)
            .finish_non_exhaustive()
    }
}

impl<B> GatewayBuilder<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Adds a route: paths under `prefix` (on a segment boundary; the longest prefix wins)
    /// go to `route`.
    pub fn route(mut self, prefix: impl Into<String>, route: Route<B>) -> Self {
        self.routes.push((prefix.into(), route));
        self
    }

    /// Turns API-key auth on for every route: requests need a key of `keys` in `header`
    /// (`x-api-key` when `None`), except on each route's [anonymous](Route::anonymous)
    /// sub-paths.
    pub fn auth(mut self, keys: KeySet, header: Option<HeaderName>) -> Self {
        self.auth = Some((Arc::new(keys), header.unwrap_or(X_API_KEY)));
        self
    }

    /// Peers whose `X-Forwarded-*` headers are kept (default: none).
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The correlation ID header (default `x-correlation-id`).
    pub fn correlation_header(mut self, header: HeaderName) -> Self {
        self.correlation_header = header;
        self
    }

    /// Forwards over `client` instead of [`default_client`].
    pub fn client(mut self, client: GatewayClient<B>) -> Self {
        self.client = Some(client);
        self
    }

    /// Keeps every route's rate-limit budgets in Redis, shared with every other gateway
    /// instance on the same Redis and key prefix, instead of in this process. Each route
    /// counts under its own prefix as namespace. See [`rate_limit::redis`](crate::rate_limit::redis).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn rate_limit_store(mut self, redis: crate::rate_limit::RedisBackend) -> Self {
        self.shared_limits = Some(redis);
        self
    }

    /// Carries `previous`'s state over into the gateway being built, for a reload: a route
    /// (same prefix) whose rate limit has the same quota keeps its clients' spent budgets
    /// (in-process stores; a Redis store's budgets are in Redis anyway), one whose circuit
    /// breaker has the same trip policy and cooldown keeps its state and counts, and one
    /// whose bulkhead has the same limit keeps its slots, so requests still in flight on
    /// `previous` count against the new gateway's limit too. Everything else starts anew.
    pub fn keep_state_of(mut self, previous: &Gateway<B>) -> Self {
        self.previous = Some(Arc::clone(&previous.states));
        self
    }

    /// Checks every route and builds the gateway.
    pub fn build(self) -> Result<Gateway<B>, BuildError> {
        let client = self.client.unwrap_or_else(default_client);
        let mut router = Router::builder();
        let mut states = RouteStates::new();
        for (prefix, route) in self.routes {
            let old = self
                .previous
                .as_ref()
                .and_then(|states| states.get(&prefix))
                .cloned()
                .unwrap_or_default();
            let mut carried = Carried::default();
            if route.upstreams.is_empty() {
                return Err(BuildError::NoUpstreams(prefix));
            }
            if route.timeout.is_zero() {
                return Err(BuildError::ZeroTimeout(prefix));
            }
            let upstreams = route
                .upstreams
                .iter()
                .map(|url| Upstream::parse(url))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| BuildError::Upstream {
                    prefix: prefix.clone(),
                    source,
                })?;
            let proxy =
                ProxyService::new(client.clone(), upstreams).trusted_proxies(self.trusted.clone());
            #[cfg(feature = "metrics")]
            let proxy = proxy.upstream_duration(::metrics::histogram!(
                crate::metrics::UPSTREAM_DURATION,
                "route" => prefix.clone(),
            ));
            let bulkhead = match (route.bulkhead, old.bulkhead) {
                (Some(max), Some((old_max, old))) if old_max == max => old,
                (Some(max), _) => {
                    let bulkhead = BulkheadLayer::new(max);
                    #[cfg(feature = "metrics")]
                    let bulkhead = bulkhead.in_flight_gauge(::metrics::gauge!(
                        crate::metrics::BULKHEAD_IN_FLIGHT,
                        "route" => prefix.clone(),
                    ));
                    bulkhead
                }
                (None, _) => BulkheadLayer::unlimited(),
            };
            if let Some(max) = route.bulkhead {
                carried.bulkhead = Some((max, bulkhead.clone()));
            }
            let retry = route
                .retry
                .unwrap_or_else(|| RetryLayer::new(0))
                .with_classifier(route.classifier.clone())
                // The proxy at the end hands each request back: no copy kept for a retry.
                .hand_back(true);
            let admitted =
                bulkhead.layer(retry.layer(TimeoutLayer::new(route.timeout).layer(proxy)));
            let guarded = match route.circuit_breaker {
                Some((trip, cooldown)) => {
                    if cooldown.is_zero() {
                        return Err(BuildError::ZeroCooldown(prefix));
                    }
                    let breaker = match trip {
                        Trip::Consecutive(threshold) => {
                            CircuitBreakerLayer::new(threshold, cooldown)
                        }
                        Trip::Rate(policy) => CircuitBreakerLayer::failure_rate(policy, cooldown),
                    };
                    #[cfg(feature = "metrics")]
                    let gauge = ::metrics::gauge!(
                        crate::metrics::CIRCUIT_BREAKER_STATE,
                        "route" => prefix.clone(),
                    );
                    let kept = old
                        .breaker
                        .as_ref()
                        .filter(|(settings, _)| *settings == (trip, cooldown));
                    #[cfg(feature = "metrics")]
                    let breaker = {
                        use std::sync::atomic::Ordering::SeqCst;
                        // A kept breaker keeps its hook (and ownership of the gauge); a new one
                        // takes the gauge over from the one it replaces.
                        let owner = Arc::clone(&old.gauge_owner);
                        let mine = if kept.is_some() {
                            owner.load(SeqCst)
                        } else {
                            owner.fetch_add(1, SeqCst) + 1
                        };
                        carried.gauge_owner = Arc::clone(&owner);
                        let gauge = gauge.clone();
                        breaker.on_state_change(move |transition| {
                            if owner.load(SeqCst) == mine {
                                gauge.set(crate::metrics::breaker_state_value(transition.to));
                            }
                        })
                    };
                    let mut breaker = breaker.with_classifier(route.classifier.clone());
                    if let Some((_, old)) = kept {
                        breaker = breaker.sharing_breaker_of(old);
                    }
                    // Closed when new; as it stands when it carried over.
                    #[cfg(feature = "metrics")]
                    gauge.set(crate::metrics::breaker_state_value(breaker.state()));
                    carried.breaker = Some(((trip, cooldown), breaker.clone()));
                    Either::Left(breaker.layer(admitted))
                }
                None => Either::Right(admitted),
            };
            let policies = match route.rate_limit {
                Some(quota) => {
                    #[cfg(feature = "redis")]
                    let store: RouteStore<Client> = match &self.shared_limits {
                        Some(redis) => redis.store(&prefix, quota).into(),
                        None => LocalStore::new(quota).into(),
                    };
                    #[cfg(not(feature = "redis"))]
                    let store: RouteStore<Client> = LocalStore::new(quota).into();
                    let mut limit = RateLimitLayer::with_store(
                        ClientKey::new().trusted_proxies(self.trusted.clone()),
                        store,
                    );
                    if let Some((old_quota, old)) = &old.rate_limit {
                        if *old_quota == quota && old.store().is_local() && limit.store().is_local()
                        {
                            limit = limit.sharing_store_of(old);
                        }
                    }
                    carried.rate_limit = Some((quota, limit.clone()));
                    Either::Left(limit.layer(guarded))
                }
                None => Either::Right(guarded),
            };
            let stack = match &self.auth {
                None => Either::Right(policies),
                Some((keys, header)) => {
                    let mut auth = ApiKeyAuthLayer::new(Arc::clone(keys)).header(header.clone());
                    for path in &route.anonymous {
                        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
                            return Err(BuildError::Anonymous {
                                prefix,
                                path: path.clone(),
                            });
                        }
                        // The auth layer sees the path after the router stripped the prefix.
                        auth = if route.strip_prefix || prefix == "/" {
                            auth.anonymous(path.as_str())
                        } else {
                            auth.anonymous(format!("{prefix}{path}"))
                        };
                    }
                    Either::Left(auth.layer(policies))
                }
            };
            let service = if route.layers.is_empty() {
                Either::Left(stack)
            } else {
                let boxed = route
                    .layers
                    .iter()
                    .fold(BoxCloneSyncService::new(stack), |inner, wrap| wrap(inner));
                Either::Right(boxed)
            };
            #[cfg(feature = "metrics")]
            let service = crate::metrics::MetricsLayer::new(prefix.clone()).layer(service);
            states.insert(prefix.clone(), carried);
            router = router.route(prefix, route.strip_prefix, service);
        }
        let router = router.build()?;
        let inner = CorrelationIdLayer::new()
            .header(self.correlation_header.clone())
            .layer(
                HopByHopLayer::new()
                    .protect(self.correlation_header)
                    .layer(RequestSpanLayer::new().layer(router)),
            );
        Ok(Gateway {
            inner,
            states: Arc::new(states),
        })
    }
}

/// The gateway: one `Clone` service of every route and layer; see the [module docs](self).
///
/// Cloning is cheap (reference counts), so hyper can clone it per connection and axum per
/// request. Its error type is [`Infallible`]: every failure is an answer.
pub struct Gateway<B = Incoming> {
    inner: Stack<B>,
    /// What a gateway built with [`GatewayBuilder::keep_state_of`] this one takes over.
    states: Arc<RouteStates>,
}

impl<B> Clone for Gateway<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            states: Arc::clone(&self.states),
        }
    }
}

impl<B> fmt::Debug for Gateway<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let router = self.inner.get_ref().get_ref().get_ref();
        f.debug_struct("Gateway")
            .field("routes", &router.prefixes().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<B> Gateway<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Starts a gateway with no routes.
    pub fn builder() -> GatewayBuilder<B> {
        GatewayBuilder {
            routes: Vec::new(),
            auth: None,
            trusted: TrustedProxies::none(),
            correlation_header: X_CORRELATION_ID,
            client: None,
            #[cfg(feature = "redis")]
            shared_limits: None,
            previous: None,
        }
    }
}

impl<B> Service<Request<B>> for Gateway<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = ResponseFuture<B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`Gateway`].
    pub struct ResponseFuture<B>
    where
        B: http_body::Body<Data = Bytes>,
        B: Send,
        B: Unpin,
        B: 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        #[pin]
        inner: <Stack<B> as Service<Request<B>>>::Future,
    }
}

impl<B> fmt::Debug for ResponseFuture<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<GatewayResponse, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
