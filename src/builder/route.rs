//! [`Route`]: one route's upstreams and settings, as the builder takes them.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use super::{BoxRoute, GatewayResponse};
use crate::circuit_breaker::Trip;
use crate::classify::{FailureClassifier, SharedClassifier};
use crate::rate_limit::Quota;
use crate::upstream::{ActiveHealth, PassiveHealth, Policy, PoolBuilder, WhenNoneHealthy};
use std::convert::Infallible;

/// The default per-attempt timeout: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A user's layer around a route's stack, type-erased.
pub(super) type WrapFn<B> = Arc<dyn Fn(BoxRoute<B>) -> BoxRoute<B> + Send + Sync>;

/// A route's upstreams and settings, for [`GatewayBuilder::route`](super::GatewayBuilder::route).
#[must_use]
pub struct Route<B = Incoming> {
    /// The upstreams and how they are balanced and checked; the builder adds the route's
    /// classifier, the observers and the carried state.
    pub(super) pool: PoolBuilder,
    pub(super) strip_prefix: bool,
    pub(super) timeout: Duration,
    pub(super) anonymous: Vec<String>,
    pub(super) rate_limit: Option<Quota>,
    pub(super) circuit_breaker: Option<Breaker>,
    pub(super) bulkhead: Option<NonZeroUsize>,
    pub(super) retry: Retries,
    pub(super) classifier: SharedClassifier,
    pub(super) layers: Vec<WrapFn<B>>,
    #[cfg(feature = "tls")]
    pub(super) upstream_tls: Option<crate::tls::UpstreamTls>,
}

/// A route's retry settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Retries {
    pub(super) max_retries: u32,
    /// The first wait's ceiling and the cap on any wait; the retry layer's defaults if unset.
    pub(super) backoff: Option<(Duration, Duration)>,
    pub(super) idempotent_writes: bool,
}

/// A route's circuit-breaker settings: what trips it and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Breaker {
    pub(super) trip: Trip,
    pub(super) cooldown: Duration,
}

impl<B> fmt::Debug for Route<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("pool", &self.pool)
            .field("strip_prefix", &self.strip_prefix)
            .field("timeout", &self.timeout)
            .field("anonymous", &self.anonymous)
            .field("rate_limit", &self.rate_limit)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("bulkhead", &self.bulkhead)
            .field("retry", &self.retry)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl<B> Route<B> {
    /// Forwards to `upstreams` (`http://host[:port][/base]`), a pool balanced round-robin
    /// with outlier ejection on, with the prefix stripped and a 30 s timeout.
    pub fn to<I>(upstreams: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::to_weighted(upstreams.into_iter().map(|url| (url, 1)))
    }

    /// Forwards to `(url, weight)` pairs (weights from 1 to 1000, for the
    /// [`Weighted`](Policy::Weighted) and [`Hash`](Policy::Hash) policies); otherwise as
    /// [`to`](Self::to).
    pub fn to_weighted<I, U>(upstreams: I) -> Self
    where
        I: IntoIterator<Item = (U, u32)>,
        U: Into<String>,
    {
        Self {
            pool: PoolBuilder::weighted(upstreams),
            strip_prefix: true,
            timeout: DEFAULT_TIMEOUT,
            anonymous: Vec::new(),
            rate_limit: None,
            circuit_breaker: None,
            bulkhead: None,
            retry: Retries::default(),
            classifier: SharedClassifier::default(),
            layers: Vec::new(),
            #[cfg(feature = "tls")]
            upstream_tls: None,
        }
    }

    /// Limits each client of this route to `quota`: by its auth identity when it has one,
    /// else by its IP address (see [`ClientKey`](crate::rate_limit::ClientKey); the
    /// gateway's [trusted proxies](super::GatewayBuilder::trusted_proxies) may name it).
    /// Over the limit: `429` with `Retry-After`. Every response of the route carries the
    /// `RateLimit` headers.
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.rate_limit = Some(quota);
        self
    }

    /// Opens this route's circuit when `trip` says: after a `NonZeroU32` of consecutive
    /// upstream failures (5xx, timeouts, unreachable upstreams; never 4xx), or at a
    /// [`FailureRate`](crate::circuit_breaker::FailureRate) over a sliding window. Then
    /// `503` without contacting the upstream for `cooldown`, and one probe decides (see
    /// [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer)). It is the
    /// route-level guard against the whole pool failing; a single endpoint that fails is the
    /// pool's to eject ([`passive_health`](Self::passive_health)), and a retry goes to
    /// another endpoint, so it does not open the breaker.
    pub fn circuit_breaker(mut self, trip: impl Into<Trip>, cooldown: Duration) -> Self {
        self.circuit_breaker = Some(Breaker {
            trip: trip.into(),
            cooldown,
        });
        self
    }

    /// At most `max_concurrent` requests of this route in flight, all clients together,
    /// each counted until its response body ends; the excess gets `429` at once.
    pub fn bulkhead(mut self, max_concurrent: NonZeroUsize) -> Self {
        self.bulkhead = Some(max_concurrent);
        self
    }

    /// Retries this route's failed `GET`, `HEAD` and `OPTIONS` requests up to `max_retries`
    /// times (`0`, the default, is no retry), each attempt under the route's timeout, after
    /// a jittered backoff, within a retry budget (see
    /// [`RetryLayer`](crate::retry::RetryLayer)). Failures are what the route's
    /// [classifier](Self::classifier) says.
    pub fn retry(mut self, max_retries: u32) -> Self {
        self.retry.max_retries = max_retries;
        self
    }

    /// The ceiling of the first retry's wait and the cap on any wait (defaults 25 ms and
    /// 250 ms; see [`RetryLayer::base_delay`](crate::retry::RetryLayer::base_delay)).
    pub fn retry_backoff(mut self, base_delay: Duration, max_delay: Duration) -> Self {
        self.retry.backoff = Some((base_delay, max_delay));
        self
    }

    /// Also retries `PUT` and `DELETE`, which HTTP defines as idempotent (default `false`;
    /// see [`RetryLayer::idempotent_writes`](crate::retry::RetryLayer::idempotent_writes)).
    pub fn retry_idempotent_writes(mut self, on: bool) -> Self {
        self.retry.idempotent_writes = on;
        self
    }

    /// What counts as an upstream failure on this route, for its circuit breaker and its
    /// retries (default [`ServerErrors`](crate::classify::ServerErrors): every 5xx, never a
    /// 4xx).
    pub fn classifier(mut self, classifier: impl FailureClassifier) -> Self {
        self.classifier = SharedClassifier::new(classifier);
        self
    }

    /// How the route's upstreams share its requests (default [`Policy::RoundRobin`]); see
    /// [`upstream`](crate::upstream).
    pub fn balance(mut self, policy: Policy) -> Self {
        self.pool = self.pool.policy(policy);
        self
    }

    /// Outlier ejection for the route's upstreams, or `None` to turn it off (default
    /// [`PassiveHealth::new`]: 5 failures in a row eject an endpoint for 30 s and more).
    /// Failures are what the route's [classifier](Self::classifier) says, plus connection
    /// errors and timeouts; never a client's fault.
    pub fn passive_health(mut self, passive: impl Into<Option<PassiveHealth>>) -> Self {
        self.pool = self.pool.passive_health(passive);
        self
    }

    /// Active health checks of the route's upstreams (default none).
    pub fn active_health(mut self, active: ActiveHealth) -> Self {
        self.pool = self.pool.active_health(active);
        self
    }

    /// What the route does when none of its upstreams is usable (default
    /// [`WhenNoneHealthy::Open`]: use them all).
    pub fn when_none_healthy(mut self, when: WhenNoneHealthy) -> Self {
        self.pool = self.pool.when_none_healthy(when);
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

    /// How this route's `https://` upstreams are verified and what client certificate they
    /// are shown (default: the system's roots, none), for the requests and the active
    /// checks alike. Routes with the same settings share a client and its connections.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn upstream_tls(mut self, tls: crate::tls::UpstreamTls) -> Self {
        self.pool = self.pool.tls(tls.clone());
        self.upstream_tls = Some(tls);
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
