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
//!             ProxyService    streams to the endpoint the route's pool picks: 502 when
//!                             unreachable, 503 when the pool has none and fails closed
//! ```
//!
//! The breaker sits outside retry, so it counts one outcome per client request (after its
//! retries); retry sits outside the timeout, so each attempt gets a fresh timeout. A route's
//! [classifier](Route::classifier) tells both what a failure is, and the route's
//! [upstream pool](crate::upstream) too: the pool ejects a single endpoint that keeps failing
//! (and a retry goes to another endpoint), while the breaker guards against the whole pool
//! failing, so one dead endpoint of three never opens it.
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

mod carry;
mod observe;
mod route;
mod stages;

use std::collections::HashSet;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
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

use self::carry::{Carried, RouteStates};
use self::observe::{Observed, Observer};
pub use self::route::{DEFAULT_TIMEOUT, Route};
use crate::api_key::{ApiKeyAuth, KeySet, X_API_KEY};
use crate::body::GatewayBody;
use crate::bulkhead::{Bulkhead, ResponseBody};
use crate::circuit_breaker::CircuitBreaker;
use crate::classify::SharedClassifier;
use crate::correlation_id::{CorrelationIdLayer, SetCorrelationId, X_CORRELATION_ID};
use crate::forwarded::TrustedProxies;
use crate::hop_by_hop::{HopByHop, HopByHopLayer};
use crate::proxy::{
    DEFAULT_REQUEST_BODY_TIMEOUT, ProxyClient, ProxyClientBuilder, ProxyService, UpstreamBody,
};
use crate::rate_limit::{
    ClientId, ClientKey, LocalStore, Quota, RateLimit, RateLimitLayer, RouteStore,
};
use crate::retry::{Retry, RetryBody};
use crate::route::{RouteError, Router, validate_prefix};
use crate::timeout::{RequestBody, Timeout};
use crate::trace::{RequestSpan, RequestSpanLayer};
use crate::upstream::UpstreamError;
use crate::upstream::{Pool, PoolError};

/// The response of every gateway stack. Its body is the upstream's stream or the gateway's
/// own answer, holding the route's bulkhead slot until it ends.
pub type GatewayResponse = Response<ResponseBody<GatewayBody<UpstreamBody>>>;

/// A route's stack with the user's layers around it, type-erased: what a
/// [`Route::layer`] wraps.
pub type BoxRoute<B> = BoxCloneSyncService<Request<B>, GatewayResponse, Infallible>;

// The stack's own types, innermost first. They stay private, so that the order of the
// layers can change without breaking anyone.

/// The request body the proxy sends: the client's, replayable by retry, behind the
/// timeout's progress tracking.
type ForwardedBody<B> = RequestBody<RetryBody<B>>;
/// The client the proxies forward with.
type GatewayClient<B> = ProxyClient<ForwardedBody<B>>;
/// What runs once a request is admitted: the bulkhead (unlimited on a route without one),
/// retry (passing everything through on a route without one), the timeout and the proxy.
type Admitted<B> = Bulkhead<Retry<Timeout<ProxyService<ForwardedBody<B>>>, SharedClassifier>>;
/// The circuit breaker when the route has one.
type Guarded<B> = Either<CircuitBreaker<Admitted<B>, SharedClassifier>, Admitted<B>>;
/// A route's rate-limit layer: per client, in-process or in a shared store.
type RouteLimit = RateLimitLayer<ClientKey, RouteStore<ClientId>>;
/// The rate limit when the route has one.
type Limited<B> = Either<RateLimit<Guarded<B>, ClientKey, RouteStore<ClientId>>, Guarded<B>>;
/// Auth when it is on.
type Authed<B> = Either<ApiKeyAuth<Limited<B>, Arc<KeySet>>, Limited<B>>;
/// The user's layers around it, boxed, when the route has any.
type RouteService<B> = Observed<Either<Authed<B>, BoxRoute<B>>>;
type Stack<B> = SetCorrelationId<HopByHop<RequestSpan<Router<RouteService<B>>>>>;

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
        /// Which of the route's upstreams, from 0.
        index: usize,
        /// What is wrong with the URL.
        source: UpstreamError,
    },
    /// A route's pool settings cannot work (a weight out of range, a bad health check).
    #[error("route {prefix:?}: {source}")]
    Pool {
        /// The route.
        prefix: String,
        /// What is wrong.
        source: PoolError,
    },
    /// A route has no upstream.
    #[error("route {0:?} has no upstreams")]
    NoUpstreams(String),
    /// A route's `https://` upstreams cannot be spoken to: its TLS files, or the system's
    /// roots, cannot be used.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("route {prefix:?}: upstream TLS: {source}")]
    UpstreamTls {
        /// The route.
        prefix: String,
        /// What is wrong.
        source: crate::tls::TlsError,
    },
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
        /// Which of the route's anonymous sub-paths, from 0.
        index: usize,
        /// The sub-path.
        path: String,
    },
    /// A route's retry backoff caps its waits below the first one's ceiling.
    #[error("route {prefix:?}: the retry's max delay {max:?} is less than its base delay {base:?}")]
    RetryBackoff {
        /// The route.
        prefix: String,
        /// The first wait's ceiling.
        base: Duration,
        /// The cap on any wait.
        max: Duration,
    },
}

/// Collects routes and settings for a [`Gateway`].
#[must_use]
pub struct GatewayBuilder<B = Incoming> {
    routes: Vec<(String, Route<B>)>,
    auth: Option<Arc<KeySet>>,
    auth_header: HeaderName,
    auth_client_certificates: bool,
    trusted: TrustedProxies,
    correlation_header: HeaderName,
    client: ProxyClientBuilder,
    request_body_timeout: Option<Duration>,
    #[cfg(feature = "redis")]
    shared_limits: Option<crate::rate_limit::redis::RedisBackend>,
    /// The state of the gateway this one replaces, to carry over.
    previous: Option<Arc<RouteStates>>,
}

impl<B> fmt::Debug for GatewayBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("routes", &self.routes)
            .field("auth", &self.auth)
            .field("auth_header", &self.auth_header)
            .field("trusted", &self.trusted)
            .field("correlation_header", &self.correlation_header)
            .field("request_body_timeout", &self.request_body_timeout)
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

    /// Turns API-key auth on for every route: requests need a key of `keys` (in the
    /// [`auth_header`](Self::auth_header)), except on each route's
    /// [anonymous](Route::anonymous) sub-paths.
    pub fn auth(mut self, keys: KeySet) -> Self {
        self.auth = Some(Arc::new(keys));
        self
    }

    /// The header that carries the API key when [auth](Self::auth) is on (default
    /// `x-api-key`).
    pub fn auth_header(mut self, header: HeaderName) -> Self {
        self.auth_header = header;
        self
    }

    /// Whether a client certificate the server verified authenticates a request that sends no
    /// key, when [auth](Self::auth) is on (default `false`; see
    /// [`ApiKeyAuthLayer::client_certificates`](crate::api_key::ApiKeyAuthLayer::client_certificates)).
    pub fn auth_client_certificates(mut self, accept: bool) -> Self {
        self.auth_client_certificates = accept;
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

    /// Forwards over a client with `settings` instead of [`ProxyClientBuilder`]'s defaults.
    /// Every route of the gateway shares the one client and its connection pool.
    pub fn client(mut self, settings: ProxyClientBuilder) -> Self {
        self.client = settings;
        self
    }

    /// How long a request body may send nothing while the gateway waits for it, before the
    /// response head (default 30 s; `None`: no limit). A body that stalls that long gets
    /// `408` and is the client's fault: it never counts against the upstream. See
    /// [`ProxyService::request_body_timeout`].
    pub fn request_body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_body_timeout = timeout.into();
        self
    }

    /// Keeps every route's rate-limit budgets in Redis, shared with every other gateway
    /// instance on the same Redis and key prefix, instead of in this process. Each route
    /// counts under its own prefix as namespace. See [`rate_limit::redis`](crate::rate_limit::redis).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn rate_limit_store(mut self, redis: crate::rate_limit::redis::RedisBackend) -> Self {
        self.shared_limits = Some(redis);
        self
    }

    /// Carries `previous`'s state over into the gateway being built, for a reload: a route
    /// (same prefix) whose rate limit has the same quota keeps its clients' spent budgets
    /// (in-process stores; a Redis store's budgets are in Redis anyway), one whose circuit
    /// breaker has the same trip policy and cooldown keeps its state and counts, and one
    /// whose bulkhead has the same limit keeps its slots, so requests still in flight on
    /// `previous` count against the new gateway's limit too. Everything else starts anew.
    ///
    /// Each stateful layer does its part through its own public `keep_state_of`
    /// ([`RateLimitLayer`](crate::rate_limit::RateLimitLayer::keep_state_of),
    /// [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer::keep_state_of),
    /// [`BulkheadLayer`](crate::bulkhead::BulkheadLayer::keep_state_of)), which a stack of
    /// your own can call the same way.
    pub fn keep_state_of(mut self, previous: &Gateway<B>) -> Self {
        self.previous = Some(Arc::clone(&previous.states));
        self
    }

    /// Checks every route as [`build`](Self::build) does, without building anything: the
    /// first error in route order (a bad or repeated prefix, then the route's own settings).
    /// The config module maps it to the key path of the TOML file.
    pub fn check(&self) -> Result<(), BuildError> {
        let mut prefixes = HashSet::new();
        for (prefix, route) in &self.routes {
            check_prefix(prefix, &mut prefixes)?;
            stages::check(prefix, route)?;
        }
        Ok(())
    }

    /// Checks every route and builds the gateway. Every check comes first, so a gateway that
    /// takes over another's state ([`keep_state_of`](Self::keep_state_of)) either builds or
    /// leaves the other as it was.
    pub fn build(self) -> Result<Gateway<B>, BuildError> {
        self.check()?;
        let client: GatewayClient<B> = self.client.build();
        // Routes with TLS settings of their own get a client each, shared by equal settings.
        #[cfg(feature = "tls")]
        let mut tls_clients: std::collections::HashMap<
            crate::tls::UpstreamTls,
            GatewayClient<B>,
        > = std::collections::HashMap::new();
        let mut router = observe::router(Router::builder());
        let mut states = RouteStates::new();
        let mut prefixes = HashSet::new();
        let mut pools = Vec::with_capacity(self.routes.len());
        for (prefix, route) in &self.routes {
            check_prefix(prefix, &mut prefixes)?;
            let old = self
                .previous
                .as_ref()
                .and_then(|states| states.get(prefix))
                .cloned()
                .unwrap_or_default();
            let mut carried = Carried::default();
            #[cfg(feature = "tls")]
            let client = match &route.upstream_tls {
                None => &client,
                Some(tls) => match tls_clients.entry(tls.clone()) {
                    std::collections::hash_map::Entry::Occupied(entry) => &*entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        let settings = self.client.clone().tls(tls.clone()).map_err(|source| {
                            BuildError::UpstreamTls {
                                prefix: prefix.clone(),
                                source,
                            }
                        })?;
                        &*entry.insert(settings.build())
                    }
                },
            };
            #[cfg(not(feature = "tls"))]
            let client = &client;
            let service = self.route_stack(prefix, route, client, &old, &mut carried)?;
            if let Some(pool) = &carried.pool {
                pools.push((prefix.clone(), pool.clone()));
            }
            states.insert(prefix.clone(), carried);
            router = if route.strip_prefix {
                router.route(prefix.clone(), service)
            } else {
                router.route_keeping_prefix(prefix.clone(), service)
            };
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
            pools: pools.into(),
        })
    }

    /// One route's stack, built from the proxy outwards, one stage a line.
    fn route_stack(
        &self,
        prefix: &str,
        route: &Route<B>,
        client: &GatewayClient<B>,
        old: &Carried,
        carried: &mut Carried,
    ) -> Result<RouteService<B>, BuildError> {
        let observe = Observer::for_route(prefix);
        let pool = stages::pool(prefix, route, &observe, old, carried)?;
        let proxy = observe.proxy(stages::proxy(
            client,
            pool,
            &self.trusted,
            self.request_body_timeout,
        ));
        let timeout = stages::timeout(route).layer(proxy);
        let retry = observe.retry(stages::retry(route)).layer(timeout);
        let admitted = observe
            .bulkhead(stages::bulkhead(route, old, carried))
            .layer(retry);
        let breaker = stages::circuit_breaker(route, &observe, old, carried);
        let guarded = stages::optional(breaker, admitted);
        let store = |quota| self.store_for(prefix, quota);
        let limit = stages::rate_limit(route, store, &self.trusted, old, carried);
        let limited = stages::optional(limit, guarded);
        let auth = stages::auth(
            prefix,
            route,
            self.auth.as_ref(),
            &self.auth_header,
            self.auth_client_certificates,
        );
        let authed = stages::optional(auth, limited);
        let service = if route.layers.is_empty() {
            Either::Left(authed)
        } else {
            let boxed = route
                .layers
                .iter()
                .fold(BoxCloneSyncService::new(authed), |inner, wrap| wrap(inner));
            Either::Right(boxed)
        };
        Ok(observe.route(service))
    }

    /// Where a route's rate-limit budgets live: in the shared store when the builder has
    /// one, else in the process.
    fn store_for(&self, prefix: &str, quota: Quota) -> RouteStore<ClientId> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared_limits {
            return redis.store(prefix, quota).into();
        }
        let _ = prefix;
        LocalStore::new(quota).into()
    }
}

/// Checks `prefix` and that no route before it (in `seen`) has it.
fn check_prefix<'a>(prefix: &'a str, seen: &mut HashSet<&'a str>) -> Result<(), BuildError> {
    validate_prefix(prefix)?;
    if !seen.insert(prefix) {
        return Err(RouteError::DuplicatePrefix(prefix.to_owned()).into());
    }
    Ok(())
}

/// The gateway: one `Clone` service of every route and layer; see the [module docs](self).
///
/// Cloning is cheap (reference counts), so hyper can clone it per connection and axum per
/// request. Its error type is [`Infallible`]: every failure is an answer.
pub struct Gateway<B = Incoming> {
    inner: Stack<B>,
    /// What a gateway built with [`GatewayBuilder::keep_state_of`] this one takes over.
    states: Arc<RouteStates>,
    /// Each route's upstream pool, in route order.
    pools: Arc<[(String, Pool)]>,
}

impl<B> Clone for Gateway<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            states: Arc::clone(&self.states),
            pools: Arc::clone(&self.pools),
        }
    }
}

impl<B> Gateway<B> {
    /// Each route's prefix and upstream pool, in the order the routes were added: what an
    /// admin view shows ([`Pool::status`]).
    pub fn pools(&self) -> impl Iterator<Item = (&str, &Pool)> {
        self.pools
            .iter()
            .map(|(prefix, pool)| (prefix.as_str(), pool))
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
            auth_header: X_API_KEY,
            auth_client_certificates: false,
            trusted: TrustedProxies::none(),
            correlation_header: X_CORRELATION_ID,
            client: ProxyClientBuilder::new(),
            request_body_timeout: Some(DEFAULT_REQUEST_BODY_TIMEOUT),
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
