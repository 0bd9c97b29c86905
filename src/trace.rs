//! One tracing span per request, and one event when its answer is ready: the gateway's
//! access log.
//!
//! [`RequestSpanLayer`] opens an `info` span named `request` with the fields
//! `correlation_id` (from the [`CorrelationId`] extension), `method`, `path` (never the query,
//! which can carry a token), `route` (recorded by [`record_route`], which the gateway builder calls
//! when a route matches), `status` and `latency_ms`. Everything that happens for the request
//! (retries, breaker transitions, rejections, upstream errors) is logged inside it. When the
//! response head is ready it records `status` and `latency_ms` and emits one `info` event,
//! with `rejection` set when the gateway answered by itself. A client that leaves first gets
//! `status = 499`.
//!
//! No field ever holds a header value other than the correlation ID, so keys never reach the
//! logs. With the span's level disabled (`RUST_LOG=warn`), the layer costs a level check.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::trace::RequestSpanLayer;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(RequestSpanLayer::new())
//!     .service_fn(|_req: Request<()>| async {
//!         tracing::debug!("inside the request's span");
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     });
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```
//!
//! # Ordering
//! Inside the [`CorrelationIdLayer`](crate::correlation_id::CorrelationIdLayer) (whose ID it
//! logs) and outside the router (so requests no route takes are logged too). The gateway
//! builder puts it there.
//!
//! # Rejections
//! None: it only observes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use crate::extensions::CorrelationId;
use crate::rejection::Rejection;

/// The status logged for a request whose client left before its answer.
const CLIENT_CLOSED: u16 = 499;

/// Records `route` as the `route` field of the current request's span, when there is one.
///
/// Call it where the route is known, inside the span: the gateway builder calls it from the
/// router's [`on_match`](crate::route::RouterBuilder::on_match) hook with the route prefix.
#[inline]
pub fn record_route(route: &str) {
    let span = Span::current();
    if !span.is_disabled() {
        span.record("route", route);
    }
}

/// Opens a span per request and logs its answer; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
#[must_use]
pub struct RequestSpanLayer {
    _private: (),
}

impl RequestSpanLayer {
    /// A span per request, an event per answer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// Service of [`RequestSpanLayer`].
#[derive(Clone, Debug)]
pub struct RequestSpan<S> {
    inner: S,
}

impl<S> RequestSpan<S> {
    /// A [`RequestSpanLayer`].
    pub fn layer() -> RequestSpanLayer {
        RequestSpanLayer::new()
    }

    inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestSpan<S>
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
        let span = tracing::info_span!(
            "request",
            correlation_id = Empty,
            method = %req.method(),
            path = req.uri().path(),
            route = Empty,
            status = Empty,
            latency_ms = Empty,
        );
        if span.is_disabled() {
            return ResponseFuture {
                inner: self.inner.call(req),
                log: None,
            };
        }
        if let Some(id) = req.extensions().get::<CorrelationId>() {
            span.record("correlation_id", id.as_str());
        }
        let start = Instant::now();
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            log: Some((span, start)),
        }
    }
}

pin_project! {
    /// Response future of [`RequestSpan`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The span and when the request came, while the answer is awaited; `None` when the
        // span is disabled or the answer was logged.
        log: Option<(Span, Instant)>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((span, start)) = this.project().log.take() {
                finish(&span, start, CLIENT_CLOSED, None);
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Records the answer in `span` and logs it.
fn finish(span: &Span, start: Instant, status: u16, rejection: Option<&Rejection>) {
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    let _entered = span.enter();
    match rejection {
        Some(rejection) => tracing::info!(
            status,
            latency_ms,
            rejection = rejection.kind().reason(),
            "answered"
        ),
        None if status == CLIENT_CLOSED => {
            tracing::info!(status, latency_ms, "client closed the request")
        }
        None => tracing::info!(status, latency_ms, "answered"),
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.log {
            Some((span, _)) => {
                let _entered = span.enter();
                std::task::ready!(this.inner.poll(cx))
            }
            None => std::task::ready!(this.inner.poll(cx)),
        };
        if let Some((span, start)) = this.log.take() {
            match &result {
                Ok(res) => finish(
                    &span,
                    start,
                    res.status().as_u16(),
                    res.extensions().get::<Rejection>(),
                ),
                Err(_) => finish(&span, start, 500, None),
            }
        }
        Poll::Ready(result)
    }
}
