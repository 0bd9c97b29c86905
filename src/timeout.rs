//! Answers 504 when the inner service has not produced a response head in time.
//!
//! [`TimeoutLayer`] measures the upstream: how long the inner service's future takes to
//! resolve (for the proxy, until the upstream's response head arrives) once the request is
//! complete. It never cuts a body that is flowing, in either direction, and never blames the
//! upstream for a slow client:
//! - the clock starts when the request body is complete (at once for a request without
//!   one): from then on the upstream has the timeout to answer;
//! - while the inner service waits on the client for the next frame, the clock does not run:
//!   that is the client's time, which the proxy's
//!   [request-body timeout](crate::proxy::ProxyService::request_body_timeout) judges (`408`);
//! - while the body is still to come but the inner service is not reading it (the upstream
//!   is slow to accept or to read it), the clock runs from the body's last frame, so an
//!   upstream that stops reading gets its `504`;
//! - the clock stops when the response head arrives, so a long download (or upload after
//!   an early answer) is never cut.
//!
//! The inner service sees the body wrapped in a [`RequestBody`], which passes every frame
//! through unchanged and notes where the body is. A request without a body costs nothing
//! of this.
//!
//! When the time runs out the inner future is dropped at once, under
//! [`Fault::blame`] as the upstream's fault (so the proxy counts the timeout against the
//! endpoint it picked), which for the proxy cancels the upstream request, and the answer is
//! a `504` [`Rejection`] of kind [`GatewayTimeout`](RejectionKind::GatewayTimeout).
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

use crate::rejection::{
    Fault, ProblemJson, Rejection, RejectionKind, RenderRejection, RequestContext,
};
use crate::time::later;

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

/// Where the request body is, for the deadline. Written by the body (whichever task polls
/// it), read when the timer fires: one word, `nanos << 2 | flags`, the nanoseconds from
/// `start` to the body's last progress.
struct Upload {
    start: Instant,
    state: AtomicU64,
}

/// The inner service is waiting on the client for the next frame: the client's time, which
/// this layer does not judge (the proxy's request-body timeout does).
const WAITING: u64 = 1;
/// The body is complete: the upstream's time runs from its end.
const DONE: u64 = 2;

impl Upload {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            state: AtomicU64::new(0),
        }
    }

    fn progress(&self, flags: u64) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX >> 2);
        self.state.store(nanos << 2 | flags, Ordering::Relaxed);
    }

    fn waiting(&self) {
        // The body is the one writer: a plain load and store, no locked instruction.
        let state = self.state.load(Ordering::Relaxed);
        if state & WAITING == 0 {
            self.state.store(state | WAITING, Ordering::Relaxed);
        }
    }

    /// When the upstream's time runs out, or `None` while the client is awaited.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        (state & WAITING == 0)
            .then(|| later(self.start + Duration::from_nanos(state >> 2), timeout))
    }
}

pin_project! {
    /// The request body as the service behind a [`TimeoutLayer`] sees it: the client's body,
    /// every frame, size hint and end unchanged, noting when each frame passes, when the
    /// service waits on the client and when the body ends, so that the timeout measures
    /// the upstream only.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        upload: Option<Arc<Upload>>,
    }

    impl<B> PinnedDrop for RequestBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A body dropped while awaited (its reader gave up on it) is nobody's wait any
            // more: the upstream's time runs from here.
            if let Some(upload) = this.project().upload {
                if upload.state.load(Ordering::Relaxed) & WAITING != 0 {
                    upload.progress(DONE);
                }
            }
        }
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
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        if let Some(upload) = this.upload {
            match &frame {
                Poll::Pending => upload.waiting(),
                Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => upload.progress(0),
                Poll::Ready(_) => upload.progress(DONE),
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
            inner: Some(self.inner.call(req)),
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
        inner: Option<F>,
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
        if let Some(inner) = this.inner.as_mut().as_pin_mut() {
            if let Poll::Ready(result) = inner.poll(cx) {
                return Poll::Ready(result);
            }
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Time is up, unless the request body moved since the timer was set, or the
            // client is still sending it (then look again in a while).
            match this
                .upload
                .as_ref()
                .map(|upload| upload.deadline(*this.timeout))
            {
                Some(None) => this
                    .sleep
                    .as_mut()
                    .reset(later(Instant::now(), *this.timeout)),
                Some(Some(deadline)) if deadline > this.sleep.deadline() => {
                    this.sleep.as_mut().reset(deadline);
                }
                _ => break,
            }
        }
        let (context, mut render) = this.answer.take().expect("polled after completion");
        // Cancel the attempt here, saying it is the upstream's fault: the proxy counts it
        // against the endpoint it went to.
        Fault::Upstream.blame(|| this.inner.set(None));
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
    async fn a_client_slower_than_the_timeout_is_not_the_upstreams_fault() {
        // Three frames 3 s apart under a 1 s timeout: the client's time is not judged here.
        let started = Instant::now();
        let res = reader(Duration::from_millis(900))
            .oneshot(Request::new(trickle(3, Duration::from_secs(3))))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(started.elapsed(), Duration::from_millis(9900));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_from_the_end_of_the_body() {
        // The body is done after 9 s; the upstream then takes 1.5 s: 504 at 10 s.
        let started = Instant::now();
        let res = reader(Duration::from_millis(1500))
            .oneshot(Request::new(trickle(3, Duration::from_secs(3))))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
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
    async fn a_body_dropped_while_awaited_starts_the_clock() {
        // The service waits on the body once, gives up on it, then hangs: the clock runs
        // from the drop, not never.
        let started = Instant::now();
        let res = ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service_fn(|req: Request<RequestBody<Trickle>>| async move {
                let mut body = req.into_body();
                let _ = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
                drop(body);
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            })
            .oneshot(Request::new(trickle(10, Duration::from_secs(60))))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(started.elapsed(), Duration::from_millis(1200));
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
