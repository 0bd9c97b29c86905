//! The observers' wiring: the one place where the [`trace`](crate::trace) adapter and, with
//! the `metrics` feature, the [`metrics`](crate::metrics) adapter plug into the layers'
//! neutral hooks. Without the feature, every step here hands its layer back as it is.

use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::proxy::ProxyService;
use crate::retry::RetryLayer;
use crate::route::RouterBuilder;
use crate::upstream::PoolBuilder;

/// A route's stack behind its observers.
#[cfg(feature = "metrics")]
pub(super) type Observed<S> = crate::metrics::Metrics<S>;
/// A route's stack behind its observers.
#[cfg(not(feature = "metrics"))]
pub(super) type Observed<S> = S;

/// What the observers keep for a route across reloads: which of the route's breakers, over
/// its reloads, owns the state gauge (a replaced breaker whose requests are still finishing
/// must not overwrite it).
#[derive(Clone, Default)]
pub(super) struct Carried {
    #[cfg(feature = "metrics")]
    gauge_owner: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// One route's observers.
pub(super) struct Observer {
    #[cfg(feature = "metrics")]
    route: String,
}

/// Every router: the request span's `route` field, and (with metrics) the requests no route
/// takes, counted under `route=""`.
pub(super) fn router<S>(router: RouterBuilder<S>) -> RouterBuilder<S> {
    let router = router.on_match(|matched| crate::trace::record_route(matched.prefix()));
    #[cfg(feature = "metrics")]
    let router = router.on_refusal(crate::metrics::record_unrouted);
    router
}

#[cfg(feature = "metrics")]
impl Observer {
    pub(super) fn for_route(prefix: &str) -> Self {
        Self {
            route: prefix.to_owned(),
        }
    }

    /// `gateway_upstream_duration_seconds{route}`: each attempt that got a response head.
    pub(super) fn proxy<B>(&self, proxy: ProxyService<B>) -> ProxyService<B> {
        let histogram = ::metrics::histogram!(
            crate::metrics::UPSTREAM_DURATION,
            "route" => self.route.clone(),
        );
        proxy.on_attempt(move |attempt| {
            if attempt.outcome.is_ok() {
                histogram.record(attempt.latency.as_secs_f64());
            }
        })
    }

    /// Per endpoint of the route's pool: `gateway_upstream_in_flight`,
    /// `gateway_upstream_endpoint_state`, `gateway_upstream_ejections_total` and
    /// `gateway_upstream_probes_total`, each `{route, endpoint}`; handles made here, so an
    /// event costs an index and an atomic.
    pub(super) fn pool(&self, pool: PoolBuilder) -> PoolBuilder {
        use crate::metrics as m;
        use crate::upstream::{EndpointState, PoolEventKind};
        struct Series {
            in_flight: ::metrics::Gauge,
            state: ::metrics::Gauge,
            ejections: ::metrics::Counter,
            probes: [::metrics::Counter; 6],
        }
        const RESULTS: [&str; 6] = ["pass", "connect", "timeout", "status", "exchange", "path"];
        let series: Vec<Series> = pool
            .endpoints()
            .iter()
            .map(|(url, _)| {
                let labels = [("route", self.route.clone()), ("endpoint", url.clone())];
                let state = ::metrics::gauge!(m::UPSTREAM_ENDPOINT_STATE, &labels);
                Series {
                    in_flight: ::metrics::gauge!(m::UPSTREAM_IN_FLIGHT, &labels),
                    state,
                    ejections: ::metrics::counter!(m::UPSTREAM_EJECTIONS_TOTAL, &labels),
                    probes: RESULTS.map(|result| {
                        ::metrics::counter!(
                            m::UPSTREAM_PROBES_TOTAL,
                            "route" => self.route.clone(),
                            "endpoint" => url.clone(),
                            "result" => result,
                        )
                    }),
                }
            })
            .collect();
        pool.on_event(move |event| {
            let Some(series) = series.get(event.index) else {
                return;
            };
            match event.kind {
                PoolEventKind::Taken => series.in_flight.increment(1.0),
                PoolEventKind::Released => series.in_flight.decrement(1.0),
                PoolEventKind::Ejected { .. } => {
                    series.ejections.increment(1);
                    series
                        .state
                        .set(m::endpoint_state_value(EndpointState::Ejected));
                }
                PoolEventKind::Returned | PoolEventKind::Healthy => series
                    .state
                    .set(m::endpoint_state_value(EndpointState::Healthy)),
                PoolEventKind::Unhealthy => series
                    .state
                    .set(m::endpoint_state_value(EndpointState::Unhealthy)),
                PoolEventKind::Probe(failure) => {
                    let result = failure.unwrap_or("pass");
                    if let Some(index) = RESULTS.iter().position(|r| *r == result) {
                        series.probes[index].increment(1);
                    }
                }
            }
        })
    }

    /// Sets each endpoint's state gauge to where it stands (a reload keeps an ejection).
    pub(super) fn pool_state(&self, pool: &crate::upstream::Pool) {
        for endpoint in pool.status().endpoints {
            let state = match endpoint.state {
                "ejected" => crate::upstream::EndpointState::Ejected,
                "unhealthy" => crate::upstream::EndpointState::Unhealthy,
                _ => crate::upstream::EndpointState::Healthy,
            };
            ::metrics::gauge!(
                crate::metrics::UPSTREAM_ENDPOINT_STATE,
                "route" => self.route.clone(),
                "endpoint" => endpoint.url,
            )
            .set(crate::metrics::endpoint_state_value(state));
        }
    }

    /// `gateway_retries_total{route}`, registered at the first retry.
    pub(super) fn retry<C>(&self, retry: RetryLayer<C>) -> RetryLayer<C> {
        let route = self.route.clone();
        let counter = std::sync::OnceLock::new();
        retry.on_retry(move |_| {
            counter
                .get_or_init(
                    || ::metrics::counter!(crate::metrics::RETRIES_TOTAL, "route" => route.clone()),
                )
                .increment(1);
        })
    }

    /// `gateway_bulkhead_in_flight{route}`, moved only by increments and decrements: a
    /// bulkhead a reload replaced may share the series and still give slots back.
    pub(super) fn bulkhead(&self, bulkhead: BulkheadLayer) -> BulkheadLayer {
        if bulkhead.max_concurrent().is_none() {
            return bulkhead;
        }
        let gauge = ::metrics::gauge!(
            crate::metrics::BULKHEAD_IN_FLIGHT,
            "route" => self.route.clone(),
        );
        bulkhead.on_slot_change(move |change| match change {
            crate::bulkhead::SlotChange::Taken => gauge.increment(1.0),
            crate::bulkhead::SlotChange::Released => gauge.decrement(1.0),
        })
    }

    /// `gateway_circuit_breaker_state{route}`. A breaker that will take over the state of
    /// the one it replaces (`kept`) keeps that one's hook and ownership of the gauge; a new
    /// one takes the gauge over.
    pub(super) fn breaker<C>(
        &self,
        breaker: CircuitBreakerLayer<C>,
        kept: bool,
        old: &Carried,
        carried: &mut Carried,
    ) -> CircuitBreakerLayer<C> {
        use std::sync::atomic::Ordering::SeqCst;
        let owner = std::sync::Arc::clone(&old.gauge_owner);
        let mine = if kept {
            owner.load(SeqCst)
        } else {
            owner.fetch_add(1, SeqCst) + 1
        };
        carried.gauge_owner = std::sync::Arc::clone(&owner);
        let gauge = self.breaker_gauge();
        breaker.on_state_change(move |transition| {
            if owner.load(SeqCst) == mine {
                gauge.set(crate::metrics::breaker_state_value(transition.to));
            }
        })
    }

    /// Sets the state gauge to where `breaker` stands: closed when new, as it was when it
    /// carried over.
    pub(super) fn breaker_state<C, R>(&self, breaker: &CircuitBreakerLayer<C, R>) {
        self.breaker_gauge()
            .set(crate::metrics::breaker_state_value(breaker.state()));
    }

    fn breaker_gauge(&self) -> ::metrics::Gauge {
        ::metrics::gauge!(
            crate::metrics::CIRCUIT_BREAKER_STATE,
            "route" => self.route.clone(),
        )
    }

    /// The route's requests, rejections and latency, outside everything else of the route.
    pub(super) fn route<S>(&self, service: S) -> Observed<S> {
        tower::Layer::layer(
            &crate::metrics::MetricsLayer::new(self.route.clone()),
            service,
        )
    }
}

#[cfg(not(feature = "metrics"))]
impl Observer {
    pub(super) fn for_route(_prefix: &str) -> Self {
        Self {}
    }

    pub(super) fn proxy<B>(&self, proxy: ProxyService<B>) -> ProxyService<B> {
        proxy
    }

    pub(super) fn retry<C>(&self, retry: RetryLayer<C>) -> RetryLayer<C> {
        retry
    }

    pub(super) fn pool(&self, pool: PoolBuilder) -> PoolBuilder {
        pool
    }

    pub(super) fn pool_state(&self, _pool: &crate::upstream::Pool) {}

    pub(super) fn bulkhead(&self, bulkhead: BulkheadLayer) -> BulkheadLayer {
        bulkhead
    }

    pub(super) fn breaker<C>(
        &self,
        breaker: CircuitBreakerLayer<C>,
        _kept: bool,
        _old: &Carried,
        _carried: &mut Carried,
    ) -> CircuitBreakerLayer<C> {
        breaker
    }

    pub(super) fn breaker_state<C, R>(&self, _breaker: &CircuitBreakerLayer<C, R>) {}

    pub(super) fn route<S>(&self, service: S) -> Observed<S> {
        service
    }
}
