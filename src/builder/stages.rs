//! One function per stage of a route's stack, innermost first, in the order of the
//! [module docs](super): each takes the route's settings and what the gateway it replaces
//! left (for a reload), and returns the stage's layer.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use tower::Layer;
use tower::util::Either;

use super::carry::Carried;
use super::observe::Observer;
use super::route::{Breaker, Retries, Route};
use super::{BuildError, ForwardedBody, GatewayClient, RouteLimit};
use crate::api_key::{ApiKeyAuthLayer, KeySet};
use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::classify::SharedClassifier;
use crate::forwarded::TrustedProxies;
use crate::proxy::ProxyService;
use crate::rate_limit::{ClientId, ClientKey, Quota, RateLimitLayer, RouteStore};
use crate::retry::RetryLayer;
use crate::timeout::TimeoutLayer;
use crate::upstream::{Pool, PoolBuilder, PoolError};

/// Checks a route's settings, all in one place.
pub(super) fn check<B>(prefix: &str, route: &Route<B>) -> Result<(), BuildError> {
    if route.pool.endpoints().is_empty() {
        return Err(BuildError::NoUpstreams(prefix.to_owned()));
    }
    if route.timeout.is_zero() {
        return Err(BuildError::ZeroTimeout(prefix.to_owned()));
    }
    #[cfg(feature = "tls")]
    check_upstream_tls(prefix, route)?;
    if route
        .circuit_breaker
        .is_some_and(|breaker| breaker.cooldown.is_zero())
    {
        return Err(BuildError::ZeroCooldown(prefix.to_owned()));
    }
    if let Some((index, path)) = route
        .anonymous
        .iter()
        .enumerate()
        .find(|(_, path)| !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')))
    {
        return Err(BuildError::Anonymous {
            prefix: prefix.to_owned(),
            index,
            path: path.clone(),
        });
    }
    if let Some((base, max)) = route.retry.backoff.filter(|(base, max)| max < base) {
        return Err(BuildError::RetryBackoff {
            prefix: prefix.to_owned(),
            base,
            max,
        });
    }
    pool_settings(route)
        .check()
        .map_err(|error| pool_error(prefix, error))
}

/// The route's pool settings with its classifier, before the observers and the carried
/// state.
fn pool_settings<B>(route: &Route<B>) -> PoolBuilder {
    route
        .pool
        .clone()
        .shared_classifier(route.classifier.clone())
}

fn pool_error(prefix: &str, error: PoolError) -> BuildError {
    match error {
        PoolError::Url { index, source } => BuildError::Upstream {
            prefix: prefix.to_owned(),
            index,
            source,
        },
        PoolError::Empty => BuildError::NoUpstreams(prefix.to_owned()),
        source => BuildError::Pool {
            prefix: prefix.to_owned(),
            source,
        },
    }
}

/// The route's upstream pool: its endpoints' health carries over by URL.
pub(super) fn pool<B>(
    prefix: &str,
    route: &Route<B>,
    observe: &Observer,
    old: &Carried,
    carried: &mut Carried,
) -> Result<Pool, BuildError> {
    let mut pool = observe.pool(pool_settings(route));
    if let Some(old) = &old.pool {
        pool = pool.keep_state_of(old);
    }
    let pool = pool.build().map_err(|error| pool_error(prefix, error))?;
    observe.pool_state(&pool);
    carried.pool = Some(pool.clone());
    Ok(pool)
}

/// A route with `https://` upstreams can verify them: its CA and client certificate files
/// are usable, or, without a CA, the system has root certificates.
#[cfg(feature = "tls")]
fn check_upstream_tls<B>(prefix: &str, route: &Route<B>) -> Result<(), BuildError> {
    let https = route
        .pool
        .endpoints()
        .iter()
        .any(|(url, _)| url.starts_with("https://"));
    if !https && route.upstream_tls.is_none() {
        return Ok(());
    }
    route
        .upstream_tls
        .clone()
        .unwrap_or_default()
        .check()
        .map_err(|source| BuildError::UpstreamTls {
            prefix: prefix.to_owned(),
            source,
        })
}

/// The proxy at the bottom: forwards to the route's upstreams.
pub(super) fn proxy<B>(
    client: &GatewayClient<B>,
    pool: Pool,
    trusted: &TrustedProxies,
    request_body_timeout: Option<Duration>,
) -> ProxyService<ForwardedBody<B>>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    ProxyService::new(client.clone(), pool)
        .trusted_proxies(trusted.clone())
        .request_body_timeout(request_body_timeout)
}

/// The per-attempt timeout, until the response head.
pub(super) fn timeout<B>(route: &Route<B>) -> TimeoutLayer {
    TimeoutLayer::new(route.timeout)
}

/// Retry, passing everything straight through on a route without one, so that every route
/// has one type. The proxy below hands each request back: no copy is kept for a retry.
pub(super) fn retry<B>(route: &Route<B>) -> RetryLayer<SharedClassifier> {
    let Retries {
        max_retries,
        backoff,
        idempotent_writes,
    } = route.retry;
    let mut retry = RetryLayer::new(max_retries).idempotent_writes(idempotent_writes);
    if let Some((base, max)) = backoff {
        retry = retry.base_delay(base).max_delay(max);
    }
    retry
        .with_classifier(route.classifier.clone())
        .hand_back(true)
}

/// The bulkhead, unlimited on a route without one; its slots carry over when the limit is
/// the same.
pub(super) fn bulkhead<B>(route: &Route<B>, old: &Carried, carried: &mut Carried) -> BulkheadLayer {
    let Some(max) = route.bulkhead else {
        return BulkheadLayer::unlimited();
    };
    let mut bulkhead = BulkheadLayer::new(max);
    if let Some(old) = &old.bulkhead {
        bulkhead = bulkhead.keep_state_of(old);
    }
    carried.bulkhead = Some(bulkhead.clone());
    bulkhead
}

/// The circuit breaker, when the route has one; its state carries over when its settings
/// are the same.
pub(super) fn circuit_breaker<B>(
    route: &Route<B>,
    observe: &Observer,
    old: &Carried,
    carried: &mut Carried,
) -> Option<CircuitBreakerLayer<SharedClassifier>> {
    let settings = route.circuit_breaker?;
    let Breaker { trip, cooldown } = settings;
    let breaker = CircuitBreakerLayer::new(trip, cooldown);
    let kept = old
        .breaker
        .as_ref()
        .filter(|(old_settings, _)| *old_settings == settings)
        .map(|(_, old)| old);
    // The hook goes on before the state is taken over: setting it starts a new breaker.
    let mut breaker = observe
        .breaker(breaker, kept.is_some(), &old.observe, &mut carried.observe)
        .with_classifier(route.classifier.clone());
    if let Some(old) = kept {
        breaker = breaker.keep_state_of(old);
    }
    observe.breaker_state(&breaker);
    carried.breaker = Some((settings, breaker.clone()));
    Some(breaker)
}

/// The rate limit, when the route has one, in `store`'s budgets; an in-process store's
/// budgets carry over when the quota is the same.
pub(super) fn rate_limit<B>(
    route: &Route<B>,
    store: impl FnOnce(Quota) -> RouteStore<ClientId>,
    trusted: &TrustedProxies,
    old: &Carried,
    carried: &mut Carried,
) -> Option<RouteLimit> {
    let quota = route.rate_limit?;
    let mut limit = RateLimitLayer::with_store(
        ClientKey::new().trusted_proxies(trusted.clone()),
        store(quota),
    );
    if let Some((old_quota, old)) = &old.rate_limit {
        if *old_quota == quota && old.store().is_local() && limit.store().is_local() {
            limit = limit.keep_state_of(old);
        }
    }
    carried.rate_limit = Some((quota, limit.clone()));
    Some(limit)
}

/// API-key auth, when it is on: the route's anonymous sub-paths as the auth layer sees
/// them (after the router stripped the prefix, or not).
pub(super) fn auth<B>(
    prefix: &str,
    route: &Route<B>,
    keys: Option<&Arc<KeySet>>,
    header: &HeaderName,
    client_certificates: bool,
) -> Option<ApiKeyAuthLayer<Arc<KeySet>>> {
    let keys = keys?;
    let mut auth = ApiKeyAuthLayer::new(Arc::clone(keys))
        .header(header.clone())
        .client_certificates(client_certificates);
    for path in &route.anonymous {
        auth = if route.strip_prefix || prefix == "/" {
            auth.anonymous(path.as_str())
        } else {
            auth.anonymous(format!("{prefix}{path}"))
        };
    }
    Some(auth)
}

/// `layer` around `inner` when there is one; `inner` as it is when there is none, with
/// the same type either way.
pub(super) fn optional<L, S>(layer: Option<L>, inner: S) -> Either<L::Service, S>
where
    L: Layer<S>,
{
    match layer {
        Some(layer) => Either::Left(layer.layer(inner)),
        None => Either::Right(inner),
    }
}
