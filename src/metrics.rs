//! Request metrics through the [`metrics`](https://docs.rs/metrics) facade, so that you pick
//! the exporter (Prometheus, StatsD, ...) by installing its recorder.
//!
//! This module is an adapter: no layer of the crate records a metric itself. [`MetricsLayer`]
//! counts a route's requests and rejections and times them; the other metrics are recorded
//! from the layers' neutral hooks, which the gateway builder wires in one place (and which a
//! stack of your own can wire the same way):
//!
//! | metric | kind | labels | from |
//! |---|---|---|---|
//! | `gateway_requests_total` | counter | `route`, `method`, `status` | [`MetricsLayer`]; [`record_unrouted`] from the router's `on_refusal` hook for `route=""` |
//! | `gateway_request_duration_seconds` | histogram | `route` | [`MetricsLayer`]: until the response head |
//! | `gateway_rejections_total` | counter | `route`, `reason` | [`MetricsLayer`]: the gateway's own answers, by [`reason`](RejectionKind::reason) |
//! | `gateway_upstream_duration_seconds` | histogram | `route` | the proxy's `on_attempt` hook: each attempt that got the upstream's response head, until then |
//! | `gateway_retries_total` | counter | `route` | retry's `on_retry` hook: each retry decided on (after its backoff it is sent unless the client left) |
//! | `gateway_bulkhead_in_flight` | gauge | `route` | the bulkhead's `on_slot_change` hook: requests holding a slot |
//! | `gateway_circuit_breaker_state` | gauge | `route` | the breaker's `on_state_change` hook ([`breaker_state_value`]): 0 closed, 1 open, 2 half-open |
//! | `gateway_upstream_in_flight` | gauge | `route`, `endpoint` | the pool's `on_event` hook: requests in flight to the endpoint, until their response bodies end |
//! | `gateway_upstream_endpoint_state` | gauge | `route`, `endpoint` | the pool's `on_event` hook ([`endpoint_state_value`]): 0 healthy, 1 ejected, 2 unhealthy |
//! | `gateway_upstream_ejections_total` | counter | `route`, `endpoint` | the pool's `on_event` hook: outlier ejections |
//! | `gateway_upstream_probes_total` | counter | `route`, `endpoint`, `result` | the pool's `on_event` hook: active probes, `result` `pass` or why it failed (`connect`, `timeout`, `tls`, `status`, `exchange`) |
//! | `gateway_tls_certificate_expiry_timestamp_seconds` | gauge | `certificate` | [`record_tls_certificates`] from the listener's `on_load` hook (feature `tls`): when each served certificate expires, in Unix seconds, by its file |
//!
//! - `method` is the request method for the nine standard ones, else `other`; `status` is the
//!   response status code, or `499` for a request whose client went away before its answer.
//! - Handles are registered with the recorder installed when the layer is built (and
//!   counters on first use), so install the recorder first. Without one, recording is a no-op
//!   behind a clock read and a map lookup.
//! - Route labels are route prefixes, and the other labels come from bounded sets, so the
//!   number of series stays bounded whatever clients send.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::metrics::MetricsLayer;
//!
//! // Install your exporter's recorder first, e.g. metrics-exporter-prometheus.
//! let svc = ServiceBuilder::new()
//!     .layer(MetricsLayer::new("/api"))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     });
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```
//!
//! # Ordering
//! Outside every layer whose answers it should count: the builder puts it first in each
//! route, right after routing, so it sees the route's `401`, `429`, `503`, `504` and `502` as
//! well as the upstream's answers.
//!
//! # Rejections
//! None: it only observes.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::metrics::{Counter, Histogram, SharedString};
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::rejection::{Rejection, RejectionKind};

/// `gateway_requests_total`: requests by route, method and status.
pub const REQUESTS_TOTAL: &str = "gateway_requests_total";
/// `gateway_request_duration_seconds`: time to the response head, by route.
pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
/// `gateway_rejections_total`: the gateway's own answers, by route and reason.
pub const REJECTIONS_TOTAL: &str = "gateway_rejections_total";
/// `gateway_upstream_duration_seconds`: each upstream attempt's time to its response head.
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";
/// `gateway_retries_total`: retries sent, by route.
pub const RETRIES_TOTAL: &str = "gateway_retries_total";
/// `gateway_bulkhead_in_flight`: requests holding a bulkhead slot, by route.
pub const BULKHEAD_IN_FLIGHT: &str = "gateway_bulkhead_in_flight";
/// `gateway_circuit_breaker_state`: 0 closed, 1 open, 2 half-open, by route.
pub const CIRCUIT_BREAKER_STATE: &str = "gateway_circuit_breaker_state";

/// `gateway_upstream_in_flight{route, endpoint}`: requests in flight to each endpoint.
pub const UPSTREAM_IN_FLIGHT: &str = "gateway_upstream_in_flight";
/// `gateway_upstream_endpoint_state{route, endpoint}`: 0 healthy, 1 ejected, 2 unhealthy.
pub const UPSTREAM_ENDPOINT_STATE: &str = "gateway_upstream_endpoint_state";
/// `gateway_upstream_ejections_total{route, endpoint}`: outlier ejections.
pub const UPSTREAM_EJECTIONS_TOTAL: &str = "gateway_upstream_ejections_total";
/// `gateway_upstream_probes_total{route, endpoint, result}`: active health probes, `result`
/// `pass`, `connect`, `timeout`, `status` or `exchange`.
pub const UPSTREAM_PROBES_TOTAL: &str = "gateway_upstream_probes_total";

/// `gateway_tls_certificate_expiry_timestamp_seconds{certificate}`: when each certificate the
/// listener serves expires (Unix seconds), by its file.
#[cfg(feature = "tls")]
pub const TLS_CERTIFICATE_EXPIRY: &str = "gateway_tls_certificate_expiry_timestamp_seconds";

/// Records when each of `certificates` expires, as
/// [`TLS_CERTIFICATE_EXPIRY`]: the adapter for
/// [`ServerTlsBuilder::on_load`](crate::tls::ServerTlsBuilder::on_load).
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub fn record_tls_certificates(certificates: &[crate::tls::CertificateInfo]) {
    for certificate in certificates {
        let expiry = certificate
            .not_after
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        ::metrics::gauge!(
            TLS_CERTIFICATE_EXPIRY,
            "certificate" => certificate.path.display().to_string()
        )
        .set(expiry);
    }
}

/// The status recorded for a request whose client went away before its answer (nginx's
/// "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

fn method_index(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// The `method` label of a request method: its name for the nine standard methods, else
/// `other`.
pub fn method_label(method: &Method) -> &'static str {
    METHODS[usize::from(method_index(method))]
}

/// Hashes the small integer keys of the counter cache (method and status in one `u32`).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive keys over the whole range.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One route's metric handles.
struct RouteMetrics {
    route: SharedString,
    duration: Histogram,
    /// `gateway_requests_total` by `method << 16 | status`, registered on first use.
    requests: DashMap<u32, Counter, BuildHasherDefault<KeyHasher>>,
    /// `gateway_rejections_total` by reason, registered on first use.
    rejections: [OnceLock<Counter>; RejectionKind::REASONS.len()],
}

impl RouteMetrics {
    fn new(route: SharedString) -> Self {
        Self {
            duration: ::metrics::histogram!(REQUEST_DURATION, "route" => route.clone()),
            route,
            requests: DashMap::default(),
            rejections: Default::default(),
        }
    }

    fn record(&self, method: u8, status: u16, rejection: Option<RejectionKind>, start: Instant) {
        self.duration.record(start.elapsed().as_secs_f64());
        let key = u32::from(method) << 16 | u32::from(status);
        // The read path takes a shard's read lock; the first request of a kind registers.
        match self.requests.get(&key) {
            Some(counter) => counter.increment(1),
            None => self
                .requests
                .entry(key)
                .or_insert_with(|| {
                    ::metrics::counter!(
                        REQUESTS_TOTAL,
                        "route" => self.route.clone(),
                        "method" => METHODS[usize::from(method)],
                        "status" => status.to_string(),
                    )
                })
                .increment(1),
        }
        if let Some(kind) = rejection {
            let index = kind.reason_index();
            self.rejections[index]
                .get_or_init(|| {
                    ::metrics::counter!(
                        REJECTIONS_TOTAL,
                        "route" => self.route.clone(),
                        "reason" => RejectionKind::REASONS[index],
                    )
                })
                .increment(1);
        }
    }
}

/// The value of `gateway_circuit_breaker_state` for `state`: 0 closed, 1 open, 2 half-open.
#[cfg(feature = "circuit-breaker")]
pub fn breaker_state_value(state: crate::circuit_breaker::BreakerState) -> f64 {
    use crate::circuit_breaker::BreakerState;
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    }
}

/// The value of `gateway_upstream_endpoint_state` for `state`: 0 healthy, 1 ejected, 2
/// unhealthy.
#[cfg(feature = "proxy")]
pub fn endpoint_state_value(state: crate::upstream::EndpointState) -> f64 {
    use crate::upstream::EndpointState;
    match state {
        EndpointState::Ejected => 1.0,
        EndpointState::Unhealthy => 2.0,
        _ => 0.0,
    }
}

/// Counts one request the router answered itself (no route matched, or a malformed path):
/// `gateway_requests_total` and `gateway_rejections_total` with `route=""`.
pub fn record_unrouted(method: &Method, rejection: &Rejection) {
    let kind = rejection.kind();
    ::metrics::counter!(
        REQUESTS_TOTAL,
        "route" => "",
        "method" => method_label(method),
        "status" => kind.status().as_str().to_owned(),
    )
    .increment(1);
    ::metrics::counter!(REJECTIONS_TOTAL, "route" => "", "reason" => kind.reason()).increment(1);
}

/// Counts and times a route's requests; see the [module docs](self).
#[derive(Clone)]
#[must_use]
pub struct MetricsLayer {
    metrics: Arc<RouteMetrics>,
}

impl MetricsLayer {
    /// Records under the label `route="<route>"`, with the recorder installed now.
    pub fn new(route: impl Into<SharedString>) -> Self {
        Self {
            metrics: Arc::new(RouteMetrics::new(route.into())),
        }
    }

    /// The route label.
    pub fn route(&self) -> &str {
        &self.metrics.route
    }
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("route", &self.route())
            .finish()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Service of [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    metrics: Arc<RouteMetrics>,
}

impl<S: fmt::Debug> fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("route", &&*self.metrics.route)
            .finish()
    }
}

impl<S> Metrics<S> {
    /// A [`MetricsLayer`] for `route`.
    pub fn layer(route: impl Into<SharedString>) -> MetricsLayer {
        MetricsLayer::new(route)
    }

    inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Metrics<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = method_index(req.method());
        let start = Instant::now();
        ResponseFuture {
            inner: self.inner.call(req),
            start,
            method,
            metrics: Some(Arc::clone(&self.metrics)),
        }
    }
}

pin_project! {
    /// Response future of [`Metrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        method: u8,
        // Taken when the answer is recorded; still here on drop means the client left.
        metrics: Option<Arc<RouteMetrics>>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(metrics) = this.metrics.take() {
                metrics.record(*this.method, CLIENT_CLOSED, None, *this.start);
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("method", &METHODS[usize::from(self.method)])
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(metrics) = this.metrics.take() {
            let (status, rejection) = match &result {
                Ok(res) => (
                    res.status(),
                    res.extensions().get::<Rejection>().map(Rejection::kind),
                ),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
            };
            metrics.record(*this.method, status.as_u16(), rejection, *this.start);
        }
        Poll::Ready(result)
    }
}
