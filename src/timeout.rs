//! Answers 504 when the inner service has not produced a response head in time.
//!
//! [`TimeoutLayer`] bounds how long the inner service's future may go without progress
//! before it resolves, which for the proxy is the moment the upstream's response head
//! arrives. It never cuts a body that is flowing, in either direction:
//! - while the request body streams, every frame the inner service reads restarts the
//!   clock, so a long upload is cut only if it stalls for the whole timeout; after its last
//!   frame, the upstream has the timeout to answer. The inner service sees the body wrapped
//!   in a [`RequestBody`], which passes every frame through unchanged and notes the time.
//!   A request without a body costs nothing of this;
//! - the clock stops when the response head arrives, so a long download is never cut.
//!
//! When the time runs out the inner future is dropped, which for the proxy cancels the
//! upstream request, and the answer is a `504` [`Rejection`] of kind
//! [`GatewayTimeout`](RejectionKind::GatewayTimeout).
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
//!     .service_fn(|_req: Request<_>| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await; // a stuck upstream
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//!     });
//!
//! let res = svc.oneshot(Request::new(Full::<Bytes>::default())).await.unwrap();
//! assert_eq!(res.status(), 504);
//! # }
//! ```
//!
//! # Ordering
//! Innermost but for the proxy, inside retry: each attempt gets a fresh timeout.
//!
//! # Rejections
//! `504 Gateway Timeout`, kind [`RejectionKind::GatewayTimeout`], with the request's
//! correlation ID and, for a request a router took (the gateway's, or axum's with the `axum`
//! feature), the path the client sent as `instance`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection, RequestContext};

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

/// When the request body last made progress, for the deadline: its last frame plus the
/// timeout. Written by the body (whichever task polls it), read when the timer fires.
struct Upload {
    start: Instant,
    /// Nanoseconds from `start` to the last frame.
    progress: AtomicU64,
}

impl Upload {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            progress: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.progress.store(nanos, Ordering::Relaxed);
    }

    fn deadline(&self, timeout: Duration) -> Instant {
        self.start + Duration::from_nanos(self.progress.load(Ordering::Relaxed)) + timeout
    }
}

pin_project! {
    /// The request body as the service behind a [`TimeoutLayer`] sees it: the client's body,
    /// every frame, size hint and end unchanged, noting when each frame passes so that the
    /// timeout never cuts an upload that is still flowing.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        upload: Option<Arc<Upload>>,
    }
}

impl<B> RequestBody<B> {
    /// The client's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("streaming", &self.upload.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if frame.is_ready() {
            if let Some(upload) = this.upload {
                upload.touch();
            }
        }
        frame
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Timeout<S, R>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    R: RenderRejection<ResB> + Clone,
    ReqB: Body,
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
        let context = RequestContext::capture(&req);
        // A body still to come: its frames move the deadline (a request without one costs
        // nothing).
        let upload = (!req.body().is_end_stream()).then(|| Arc::new(Upload::new()));
        let req = req.map(|inner| RequestBody {
            inner,
            upload: upload.clone(),
        });
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            upload,
            answer: Some((context, self.render.clone())),
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
        timeout: Duration,
        upload: Option<Arc<Upload>>,
        answer: Option<(RequestContext, R)>,
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
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Time is up, unless the request body moved since the timer was set.
            match this
                .upload
                .as_ref()
                .map(|upload| upload.deadline(*this.timeout))
            {
                Some(deadline) if deadline > this.sleep.deadline() => {
                    this.sleep.as_mut().reset(deadline);
                }
                _ => break,
            }
        }
        let (context, mut render) = this.answer.take().expect("polled after completion");
        let rejection = Rejection::new(RejectionKind::GatewayTimeout).for_context(context);
        Poll::Ready(Ok(rejection.into_response_with(&mut render)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::{CorrelationId, MatchedRoute};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
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
    ) -> impl Service<Request<Empty<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
    {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service_fn(move |_req: Request<RequestBody<Empty<Bytes>>>| {
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
        // As the router leaves it: `/api/orders?token=secret` with `/api` stripped.
        let mut req = Request::get("/orders?token=secret")
            .body(Empty::new())
            .unwrap();
        req.extensions_mut()
            .insert(CorrelationId::from_bytes(b"slow-1").unwrap());
        req.extensions_mut()
            .insert(MatchedRoute::new("/api".into(), true));
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
        assert_eq!(
            json["instance"], "/api/orders",
            "the path the client sent, no query"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn passes_a_response_in_time_through() {
        let res = slow(Duration::from_millis(999), Arc::default())
            .oneshot(Request::new(Empty::new()))
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
            .service_fn(|_req: Request<_>| async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(String::new()))
            });
        let res = svc
            .oneshot(Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(res.body(), "too slow");
    }

    type Trickle = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A request body of `frames` frames, one every `every`.
    fn trickle(frames: u32, every: Duration) -> Trickle {
        let frames = futures_util::stream::unfold(0, move |sent| async move {
            if sent == frames {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(b"part"))), sent + 1))
        });
        StreamBody::new(frames).boxed_unsync()
    }

    /// Reads the whole body, then answers after `then`.
    fn reader(
        then: Duration,
    ) -> impl Service<Request<Trickle>, Response = Response<Full<Bytes>>, Error = Infallible> {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service_fn(move |req: Request<RequestBody<Trickle>>| async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                tokio::time::sleep(then).await;
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            })
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_that_keeps_flowing_is_never_cut() {
        // Eight frames, 500 ms apart: 4 s of upload under a 1 s timeout.
        let started = Instant::now();
        let res = reader(Duration::from_millis(900))
            .oneshot(Request::new(trickle(8, Duration::from_millis(500))))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            32
        );
        assert_eq!(started.elapsed(), Duration::from_millis(4900));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_from_the_last_frame() {
        let started = Instant::now();
        let res = reader(Duration::from_secs(5))
            .oneshot(Request::new(trickle(4, Duration::from_millis(500))))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "2 s of upload, then 1 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_the_upstream_stops_reading_is_cut() {
        let started = Instant::now();
        let res = ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service_fn(|req: Request<RequestBody<Trickle>>| async move {
                let mut body = req.into_body();
                body.frame().await; // one frame, then the upstream stops reading
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            })
            .oneshot(Request::new(trickle(10, Duration::from_millis(500))))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1500),
            "1 s after the frame"
        );
    }
}
