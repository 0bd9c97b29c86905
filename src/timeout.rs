//! Answers 504 when the inner service has not produced a response head in time.
//!
//! [`TimeoutLayer`] bounds the time from `call` until the inner service's future resolves,
//! which for the proxy is the moment the upstream's response head arrives. It does not
//! bound the body: a download that keeps flowing is never cut. When the time runs out the
//! inner future is dropped, which for the proxy cancels the upstream request, and the
//! answer is a `504` [`Rejection`] of kind [`GatewayTimeout`](RejectionKind::GatewayTimeout).
//!
//! tower's own `Timeout` fails with an error instead of answering; this layer keeps the inner
//! error type, so it drops into an axum `Router` as it is.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::timeout::TimeoutLayer;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(5)))
//!     .service_fn(|_req: Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await; // a stuck upstream
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//!
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 504);
//! # }
//! ```
//!
//! # Ordering
//! Innermost but for the proxy, inside retry: each attempt gets a fresh timeout.
//!
//! # Rejections
//! `504 Gateway Timeout`, kind [`RejectionKind::GatewayTimeout`], with the request's
//! correlation ID.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::extensions::CorrelationId;
use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// Answers 504 when the response head takes longer than the timeout; see the
/// [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct TimeoutLayer<R = ProblemJson> {
    timeout: Duration,
    render: R,
}

impl TimeoutLayer {
    /// A layer that waits at most `timeout` for the response head.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            render: ProblemJson,
        }
    }
}

impl<R> TimeoutLayer<R> {
    /// Renders the 504 with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> TimeoutLayer<R2> {
        TimeoutLayer {
            timeout: self.timeout,
            render,
        }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S, R: Clone> Layer<S> for TimeoutLayer<R> {
    type Service = Timeout<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
            render: self.render.clone(),
        }
    }
}

/// Service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S, R = ProblemJson> {
    inner: S,
    timeout: Duration,
    render: R,
}

impl<S> Timeout<S> {
    /// Wraps `inner`, waiting at most `timeout` for its response head.
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimeoutLayer::new(timeout).layer(inner)
    }

    /// A [`TimeoutLayer`].
    pub fn layer(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer::new(timeout)
    }
}

impl<S, R> Timeout<S, R> {
    inner_accessors!();
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Timeout<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB> + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Only what the 504's body needs; the request itself goes to the inner service.
        let correlation_id = req.extensions().get::<CorrelationId>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            answer: Some((correlation_id, self.render.clone())),
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F, R> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        answer: Option<(Option<CorrelationId>, R)>,
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.sleep.deadline())
            .finish_non_exhaustive()
    }
}

impl<F, R, B, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: RenderRejection<B>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let (correlation_id, mut render) = this.answer.take().expect("polled after completion");
        let rejection =
            Rejection::new(RejectionKind::GatewayTimeout).with_correlation_id(correlation_id);
        Poll::Ready(Ok(rejection.into_response_with(&mut render)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::{ServiceBuilder, ServiceExt};

    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn slow(
        delay: Duration,
        dropped: Arc<AtomicBool>,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
    {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service_fn(move |_req: Request<()>| {
                let guard = SetOnDrop(Arc::clone(&dropped));
                async move {
                    tokio::time::sleep(delay).await;
                    drop(guard);
                    Ok::<_, Infallible>(Response::new(Full::from("upstream")))
                }
            })
    }

    #[tokio::test(start_paused = true)]
    async fn answers_504_and_drops_the_inner_future_when_too_slow() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(CorrelationId::from_bytes(b"slow-1").unwrap());
        let started = tokio::time::Instant::now();
        let res = slow(Duration::from_secs(30), Arc::clone(&dropped))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(res.status(), 504);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the inner future is cancelled"
        );
        let rejection = res.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.kind(), RejectionKind::GatewayTimeout);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["correlation_id"], "slow-1");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_a_response_in_time_through() {
        let res = slow(Duration::from_millis(999), Arc::default())
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.extensions().get::<Rejection>().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn custom_rendering() {
        let svc = ServiceBuilder::new()
            .layer(
                TimeoutLayer::new(Duration::from_millis(10))
                    .with_rejection(|_: &Rejection| Response::new("too slow".to_owned())),
            )
            .service_fn(|_req: Request<()>| async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(String::new()))
            });
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(res.body(), "too slow");
    }
}
