//! Caps how many requests a route has in flight, answering `429` at once to the rest.
//!
//! [`BulkheadLayer`] lets at most `max_concurrent` requests through at a time, counted across
//! every clone of the layer and of its services. A request takes a slot (a permit) when the
//! service is called and keeps it until its response body is finished: the permit moves into
//! the response future and then into the [`ResponseBody`], so a streamed download counts as in
//! flight until its last frame. The slot comes back when the body ends, fails or is dropped, or
//! when the response future fails or is dropped, so a client that hangs up gives its slot back.
//!
//! A request that asks for a protocol upgrade (a WebSocket) shares its slot with the tunnel
//! it may become: after a `101` the [proxy](crate::proxy) keeps the slot until the tunnel
//! closes (see [`UpgradeGuards`]), so open WebSockets count as in flight too.
//!
//! A request that finds every slot taken is answered `429` at once: it never waits for a slot,
//! and it never reaches the inner service. Nothing is reserved in `poll_ready`, which is passed
//! through to the inner service.
//!
//! Why not tower's own layers: `ConcurrencyLimit` waits for a permit in `poll_ready`, which
//! queues the excess instead of refusing it, and it lets the permit go when the response head
//! is produced, not when the body ends. `LoadShed` in front of it turns the wait into an
//! immediate error, but the permit still ends at the head, and the refusal is an error, not a
//! response.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::num::NonZeroUsize;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::bulkhead::BulkheadLayer;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(NonZeroUsize::new(1).unwrap()))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("report")))
//!     });
//!
//! // The first response's body is still being read: it holds the only slot.
//! let first = svc.clone().oneshot(Request::new(())).await.unwrap();
//! let second = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(second.status(), 429);
//!
//! // Dropping the response (or reading its body to the end) frees the slot.
//! drop(first);
//! let third = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(third.status(), 200);
//! assert_eq!(third.into_body().collect().await.unwrap().to_bytes(), "report");
//! # }
//! ```
//!
//! # In axum
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::num::NonZeroUsize;
//! use axum::{Router, routing::get};
//! use tower_gateway::bulkhead::BulkheadLayer;
//!
//! // At most 8 exports at a time; the ninth gets a 429 problem+json at once.
//! let app = Router::new()
//!     .route("/export", get(|| async { "a big export" }))
//!     .layer(BulkheadLayer::new(NonZeroUsize::new(8).unwrap()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Ordering
//! After the rate limiter and the circuit breaker, before retry: a request over its rate limit
//! or facing an open circuit is answered before it takes a slot, and a retried request holds
//! one slot for all its attempts.
//!
//! # Rejections
//! `429 Too Many Requests`, kind [`RejectionKind::ConcurrencyLimited`], without `Retry-After`
//! (no one can tell when a slot frees up), with the request's correlation ID and path.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::UPGRADE;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::extensions::UpgradeGuards;
use tower::{Layer, Service};

use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// A slot taken or given back, as [`BulkheadLayer::on_slot_change`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotChange {
    /// A request took a slot: one more in flight.
    Taken,
    /// A request gave its slot back (its body ended, or it was dropped): one fewer.
    Released,
}

type SlotHook = Arc<dyn Fn(SlotChange) + Send + Sync>;

/// The slots of one bulkhead, shared by every clone of its layer and services.
#[derive(Clone)]
struct Limit {
    max: usize,
    permits: Arc<Semaphore>,
    /// Told of every slot taken and given back, when set.
    hook: Option<SlotHook>,
}

impl Limit {
    fn new(max: NonZeroUsize) -> Self {
        // More permits than a semaphore can count would never all be in use at once anyway.
        let max = max.get().min(Semaphore::MAX_PERMITS);
        Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            hook: None,
        }
    }

    /// A slot, if one is free; never waits.
    fn try_admit(&self) -> Option<Permit> {
        // The semaphore is never closed, so an error always means "no slot free".
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        if let Some(hook) = &self.hook {
            hook(SlotChange::Taken);
        }
        Some(Permit {
            _permit: permit,
            hook: self.hook.clone(),
        })
    }

    fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

fn max_concurrent(limit: Option<&Limit>) -> Option<usize> {
    limit.map(|limit| limit.max)
}

fn in_flight(limit: Option<&Limit>) -> usize {
    limit.map_or(0, Limit::in_flight)
}

/// Caps the requests in flight and answers `429` to the excess; see the [module docs](self).
///
/// Cloning is a reference-count bump: the clones, and every service they make, share one set
/// of slots.
#[must_use]
pub struct BulkheadLayer<R = ProblemJson> {
    limit: Option<Limit>,
    render: R,
}

impl BulkheadLayer {
    /// At most `max_concurrent` requests in flight, counted until each response body ends.
    pub fn new(max_concurrent: NonZeroUsize) -> Self {
        Self {
            limit: Some(Limit::new(max_concurrent)),
            render: ProblemJson,
        }
    }

    /// A layer that admits every request and holds no slot, so that services with and
    /// without a limit have one type (the gateway builder uses it for routes without a
    /// bulkhead). Its response body is the same [`ResponseBody`], never holding a slot.
    pub fn unlimited() -> Self {
        Self {
            limit: None,
            render: ProblemJson,
        }
    }
}

impl<R> BulkheadLayer<R> {
    /// Renders the `429` with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> BulkheadLayer<R2> {
        BulkheadLayer {
            limit: self.limit,
            render,
        }
    }

    /// How many requests may be in flight at once; `None` when there is no limit.
    pub fn max_concurrent(&self) -> Option<usize> {
        max_concurrent(self.limit.as_ref())
    }

    /// Calls `hook` each time a request takes a slot and each time a slot is given back, on
    /// the task that takes or gives it (keep it cheap: it runs on the request path). A
    /// layer without a limit never calls it. The gateway's metrics keep
    /// `gateway_bulkhead_in_flight{route}` with it. Set it before the layer is used: slots
    /// taken before keep the hook they were taken with (none), so their release is not
    /// reported either.
    pub fn on_slot_change<F>(mut self, hook: F) -> Self
    where
        F: Fn(SlotChange) + Send + Sync + 'static,
    {
        if let Some(limit) = &mut self.limit {
            limit.hook = Some(Arc::new(hook));
        }
        self
    }

    /// This layer with `other`'s slots (and `other`'s slot hook), when both have the same
    /// limit: requests still in flight through `other` count against this layer too. For a
    /// reload that replaces a stack while it serves (the gateway builder's
    /// `GatewayBuilder::keep_state_of` calls it); with
    /// different limits, or either without one, this layer keeps its own slots.
    pub fn keep_state_of<R2>(mut self, other: &BulkheadLayer<R2>) -> Self {
        if let (Some(mine), Some(theirs)) = (&self.limit, &other.limit) {
            if mine.max == theirs.max {
                self.limit = Some(theirs.clone());
            }
        }
        self
    }

    /// How many requests are in flight now, across every clone of this layer and its services
    /// (always 0 for a layer without a limit, which counts nothing).
    pub fn in_flight(&self) -> usize {
        in_flight(self.limit.as_ref())
    }
}

impl<R: Clone> Clone for BulkheadLayer<R> {
    fn clone(&self) -> Self {
        Self {
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

impl<R> fmt::Debug for BulkheadLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone> Layer<S> for BulkheadLayer<R> {
    type Service = Bulkhead<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

/// Service of [`BulkheadLayer`].
pub struct Bulkhead<S, R = ProblemJson> {
    inner: S,
    limit: Option<Limit>,
    render: R,
}

impl<S> Bulkhead<S> {
    /// Wraps `inner`, with at most `max_concurrent` requests in flight.
    pub fn new(inner: S, max_concurrent: NonZeroUsize) -> Self {
        BulkheadLayer::new(max_concurrent).layer(inner)
    }

    /// A [`BulkheadLayer`].
    pub fn layer(max_concurrent: NonZeroUsize) -> BulkheadLayer {
        BulkheadLayer::new(max_concurrent)
    }
}

impl<S, R> Bulkhead<S, R> {
    /// How many requests may be in flight at once; `None` when there is no limit.
    pub fn max_concurrent(&self) -> Option<usize> {
        max_concurrent(self.limit.as_ref())
    }

    /// How many requests are in flight now, across every clone of this service and of the
    /// layer that made it (always 0 without a limit).
    pub fn in_flight(&self) -> usize {
        in_flight(self.limit.as_ref())
    }

    inner_accessors!();
}

impl<S: Clone, R: Clone> Clone for Bulkhead<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for Bulkhead<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Bulkhead<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB>,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission is decided in `call`; nothing is reserved here.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let permit = match &self.limit {
            None => None,
            Some(limit) => match limit.try_admit() {
                Some(permit) if req.headers().contains_key(UPGRADE) => {
                    // It may become a tunnel that outlives the response: the proxy keeps a
                    // share of the slot in the tunnel until it closes.
                    let shared = Arc::new(permit);
                    req.extensions_mut()
                        .get_or_insert_default::<UpgradeGuards>()
                        .push(Arc::clone(&shared) as Arc<dyn Any + Send + Sync>);
                    Some(Slot::Shared(shared))
                }
                Some(permit) => Some(Slot::Owned(permit)),
                None => {
                    let res = Rejection::new(RejectionKind::ConcurrencyLimited)
                        .with_detail(
                            "too many requests are in flight for this route; \
                             the request was not queued",
                        )
                        .for_request(&req)
                        .into_response_with(&mut self.render);
                    return ResponseFuture {
                        state: State::Answer {
                            res: Some(res.map(ResponseBody::new)),
                        },
                    };
                }
            },
        };
        ResponseFuture {
            state: State::Forward {
                fut: self.inner.call(req),
                permit,
            },
        }
    }
}

pin_project! {
    /// Response future of [`Bulkhead`]: holds the request's permit until the response head
    /// arrives, then hands it to the [`ResponseBody`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Forward {
            #[pin]
            fut: F,
            permit: Option<Slot>,
        },
        Answer { res: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = matches!(self.state, State::Answer { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forward { fut, permit } => {
                let result = ready!(fut.poll(cx));
                // On an error the permit is dropped, and so released, right here.
                let permit = permit.take();
                Poll::Ready(result.map(|res| res.map(|body| ResponseBody::holding(body, permit))))
            }
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}

pin_project! {
    /// The response body behind a [`BulkheadLayer`]: the inner body, every frame, size hint and
    /// end unchanged, holding the request's slot until the body ends, fails or is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Slot>,
    }
}

/// A request's slot: its own, or shared with the tunnel it may become (see
/// [`UpgradeGuards`]).
enum Slot {
    Owned(#[allow(dead_code, reason = "held for its drop")] Permit),
    Shared(#[allow(dead_code, reason = "held for its drop")] Arc<Permit>),
}

/// One slot of a bulkhead, given back when dropped.
struct Permit {
    _permit: OwnedSemaphorePermit,
    /// The hook to tell when this slot is given back.
    hook: Option<SlotHook>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(hook) = &self.hook {
            hook(SlotChange::Released);
        }
    }
}

impl<B> ResponseBody<B> {
    /// Wraps `body` without holding a slot.
    pub fn new(body: B) -> Self {
        Self {
            inner: body,
            permit: None,
        }
    }

    /// Wraps `body`, holding `permit` until it ends; a body that has already ended lets the
    /// permit go at once.
    fn holding(body: B, permit: Option<Slot>) -> Self
    where
        B: Body,
    {
        let permit = if body.is_end_stream() { None } else { permit };
        Self {
            inner: body,
            permit,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the inner body, releasing the slot it held.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B: From<Bytes>> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        Self::new(B::from(data))
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            // The slot is free as soon as the body is done, not when it is dropped later.
            this.permit.take();
        }
        Poll::Ready(frame)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::GatewayBody;
    use futures_util::stream;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, io::Error>>>>;
    type TestBody = GatewayBody<Frames>;
    type Res = Response<ResponseBody<TestBody>>;

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn frames(items: Vec<Result<Frame<Bytes>, io::Error>>) -> TestBody {
        GatewayBody::stream(StreamBody::new(stream::iter(items)))
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, io::Error> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    /// The upstream: the path picks the answer.
    async fn upstream(req: Request<()>) -> Result<Response<TestBody>, io::Error> {
        let body = match req.uri().path() {
            "/hang" => std::future::pending().await,
            "/fail" => return Err(io::Error::other("upstream unreachable")),
            "/stream" => frames(vec![data("a"), data("b"), data("c")]),
            "/broken" => frames(vec![data("a"), Err(io::Error::other("reset"))]),
            "/empty" => GatewayBody::empty(),
            _ => GatewayBody::full("ok"),
        };
        Ok(Response::new(body))
    }

    /// A bulkhead of `max` over [`upstream`], its layer (to read `in_flight`) and a count of
    /// the calls that reached the upstream.
    fn setup(
        max: usize,
    ) -> (
        BulkheadLayer,
        impl Service<Request<()>, Response = Res, Error = io::Error, Future: Send> + Clone + Send,
        Arc<AtomicUsize>,
    ) {
        let layer = BulkheadLayer::new(nz(max));
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let svc = layer.layer(service_fn(move |req| {
            seen.fetch_add(1, Ordering::SeqCst);
            upstream(req)
        }));
        (layer, svc, calls)
    }

    fn req(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    async fn get<S>(svc: &S, path: &str) -> Res
    where
        S: Service<Request<()>, Response = Res, Error = io::Error> + Clone,
    {
        svc.clone().oneshot(req(path)).await.unwrap()
    }

    #[tokio::test]
    async fn the_excess_gets_429_at_once_without_reaching_upstream() {
        let (layer, svc, calls) = setup(2);
        let held = [get(&svc, "/stream").await, get(&svc, "/stream").await];
        assert!(held.iter().all(|res| res.status() == 200));
        assert_eq!(layer.in_flight(), 2);

        let mut refused = Request::get("/orders?token=secret").body(()).unwrap();
        refused
            .extensions_mut()
            .insert(crate::extensions::CorrelationId::from_bytes(b"busy-1").unwrap());
        let res = svc.clone().oneshot(refused).await.unwrap();
        assert_eq!(res.status(), 429);
        assert!(res.headers().get(RETRY_AFTER).is_none());
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::ConcurrencyLimited
        );
        assert!(res.body().permit.is_none(), "a rejection holds no slot");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 429);
        assert_eq!(json["correlation_id"], "busy-1");
        assert_eq!(json["instance"], "/orders");

        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the 429 never reached upstream"
        );
        assert_eq!(layer.in_flight(), 2);
        drop(held);
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_slot_hook_sees_every_slot_taken_and_given_back() {
        let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&changes);
        let layer = BulkheadLayer::new(nz(1))
            .on_slot_change(move |change| seen.lock().unwrap().push(change));
        let svc = layer.layer(service_fn(upstream));
        let held = get(&svc, "/stream").await;
        assert_eq!(
            get(&svc, "/ok").await.status(),
            429,
            "a refusal takes no slot"
        );
        assert_eq!(*changes.lock().unwrap(), [SlotChange::Taken]);
        drop(held);
        assert_eq!(
            *changes.lock().unwrap(),
            [SlotChange::Taken, SlotChange::Released]
        );
        // An unlimited layer never calls it.
        let unlimited = BulkheadLayer::unlimited().on_slot_change(|_| panic!("no slots"));
        let res = unlimited
            .layer(service_fn(upstream))
            .oneshot(req("/ok"))
            .await;
        assert_eq!(res.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn keep_state_of_shares_the_slots_only_with_the_same_limit() {
        let (old, svc, _) = setup(1);
        let held = get(&svc, "/stream").await;
        let same = BulkheadLayer::new(nz(1)).keep_state_of(&old);
        assert_eq!(
            same.in_flight(),
            1,
            "the slot held through the old layer counts"
        );
        let res = same.layer(service_fn(upstream)).oneshot(req("/ok")).await;
        assert_eq!(res.unwrap().status(), 429);
        let other = BulkheadLayer::new(nz(2)).keep_state_of(&old);
        assert_eq!(
            other.in_flight(),
            0,
            "another limit starts with its own slots"
        );
        drop(held);
        assert_eq!(same.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_permit_is_held_until_the_body_ends() {
        let (layer, svc, _) = setup(1);
        let mut body = get(&svc, "/stream").await.into_body();
        assert_eq!(layer.in_flight(), 1, "held after the head");
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
            assert_eq!(layer.in_flight(), 1, "held while frames flow");
            assert_eq!(get(&svc, "/").await.status(), 429);
        }
        assert!(body.frame().await.is_none());
        assert_eq!(
            layer.in_flight(),
            0,
            "free at the end, before the body is dropped"
        );
        assert_eq!(get(&svc, "/stream").await.status(), 200);
        drop(body);
    }

    #[tokio::test]
    async fn a_body_that_reports_its_end_frees_the_slot_with_its_last_frame() {
        let (layer, svc, _) = setup(1);
        let mut body = get(&svc, "/").await.into_body();
        assert_eq!(layer.in_flight(), 1);
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        assert_eq!(layer.in_flight(), 0, "no poll for the end needed");
        drop(body);

        let body = get(&svc, "/empty").await.into_body();
        assert_eq!(
            layer.in_flight(),
            0,
            "an empty body frees the slot with the head"
        );
        assert_eq!(get(&svc, "/").await.status(), 200);
        drop(body);
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_frees_the_slot() {
        let (layer, svc, _) = setup(1);
        let mut body = get(&svc, "/stream").await.into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 1);
        drop(body);
        assert_eq!(layer.in_flight(), 0);
        assert_eq!(get(&svc, "/").await.status(), 200);
    }

    #[tokio::test]
    async fn a_body_error_frees_the_slot() {
        let (layer, svc, _) = setup(1);
        let mut body = get(&svc, "/broken").await.into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(layer.in_flight(), 1);
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(layer.in_flight(), 0);
        drop(body);
    }

    #[tokio::test]
    async fn a_dropped_response_future_frees_the_slot() {
        let (layer, svc, calls) = setup(1);

        // Dropped before it is ever polled.
        let fut = svc
            .clone()
            .ready_oneshot()
            .await
            .unwrap()
            .call(req("/hang"));
        assert_eq!(layer.in_flight(), 1, "taken in call");
        drop(fut);
        assert_eq!(layer.in_flight(), 0);

        // Dropped while waiting for the upstream: the client hung up.
        let task = tokio::spawn(svc.clone().oneshot(req("/hang")));
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.in_flight(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(layer.in_flight(), 0);
        assert_eq!(get(&svc, "/").await.status(), 200);
    }

    #[tokio::test]
    async fn an_inner_error_frees_the_slot() {
        let (layer, svc, _) = setup(1);
        let err = svc.clone().oneshot(req("/fail")).await.unwrap_err();
        assert_eq!(err.to_string(), "upstream unreachable");
        assert_eq!(layer.in_flight(), 0);
        assert_eq!(get(&svc, "/").await.status(), 200);
    }

    #[tokio::test]
    async fn clones_share_the_slots() {
        let (layer, svc, _) = setup(2);
        let other_layer = layer.clone();
        let other_svc = other_layer.layer(service_fn(upstream));
        let a = get(&svc, "/stream").await;
        let b = get(&other_svc, "/stream").await;
        assert_eq!(a.status(), 200);
        assert_eq!(b.status(), 200);
        assert_eq!(get(&svc.clone(), "/").await.status(), 429);
        assert_eq!(get(&other_svc, "/").await.status(), 429);
        assert_eq!(layer.in_flight(), 2);
        assert_eq!(other_layer.in_flight(), 2);
        let direct = BulkheadLayer::new(nz(2)).layer(service_fn(upstream));
        assert_eq!(direct.in_flight(), 0, "a new layer has its own slots");
        drop((a, b));
        assert_eq!(other_layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn poll_ready_reserves_nothing() {
        const N: usize = 3;
        let (layer, svc, _) = setup(N);
        let mut probe = svc.clone();
        for _ in 0..N + 5 {
            probe.ready().await.unwrap();
        }
        assert_eq!(layer.in_flight(), 0);
        let mut held = Vec::new();
        for _ in 0..N {
            let res = get(&svc, "/stream").await;
            assert_eq!(res.status(), 200);
            held.push(res);
        }
        assert_eq!(layer.in_flight(), N);
        // The probe, ready all along, is refused like anyone else.
        assert_eq!(probe.call(req("/")).await.unwrap().status(), 429);
    }

    #[tokio::test]
    async fn unlimited_admits_everything_and_holds_nothing() {
        let layer = BulkheadLayer::unlimited();
        assert_eq!(layer.max_concurrent(), None);
        let svc = layer.layer(service_fn(upstream));
        let mut held = Vec::new();
        for _ in 0..1000 {
            let res = get(&svc, "/stream").await;
            assert_eq!(res.status(), 200);
            assert!(res.body().permit.is_none());
            held.push(res);
        }
        assert_eq!(svc.in_flight(), 0);
    }

    #[tokio::test]
    async fn custom_rendering_and_accessors() {
        let layer = BulkheadLayer::new(nz(1))
            .with_rejection(|_: &Rejection| Response::new(Full::from("busy")));
        assert_eq!(layer.max_concurrent(), Some(1));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
            });
        assert_eq!(svc.max_concurrent(), Some(1));
        let held = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(svc.in_flight(), 1);
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "busy");
        assert!(format!("{svc:?}").contains("in_flight: 1"));
        assert_eq!(
            format!("{:?}", held.body()),
            "ResponseBody { holds_permit: true, .. }"
        );
        let inner = held.into_body().into_inner();
        assert_eq!(svc.in_flight(), 0, "unwrapping the body releases the slot");
        assert_eq!(inner.collect().await.unwrap().to_bytes(), "ok");
    }

    #[test]
    fn a_huge_limit_is_clamped_instead_of_panicking() {
        let layer = BulkheadLayer::new(NonZeroUsize::MAX);
        assert_eq!(layer.max_concurrent(), Some(Semaphore::MAX_PERMITS));
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_than_the_limit_under_contention() {
        const MAX: usize = 4;
        const TASKS: usize = 64;
        const REQUESTS: usize = 200;

        let current = Arc::new(AtomicUsize::new(0));
        let observed = Arc::new(AtomicUsize::new(0));
        let layer = BulkheadLayer::new(nz(MAX));
        let svc = ServiceBuilder::new().layer(layer.clone()).service_fn({
            let (current, observed) = (Arc::clone(&current), Arc::clone(&observed));
            move |_req: Request<()>| {
                let (current, observed) = (Arc::clone(&current), Arc::clone(&observed));
                async move {
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    observed.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    current.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
                }
            }
        });

        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (svc, layer) = (svc.clone(), layer.clone());
                tokio::spawn(async move {
                    let (mut admitted, mut rejected) = (0, 0);
                    for _ in 0..REQUESTS {
                        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                        assert!(layer.in_flight() <= MAX);
                        if res.status() == 200 {
                            admitted += 1;
                            // Hold the body a moment: it still counts as in flight.
                            tokio::task::yield_now().await;
                            res.into_body().collect().await.unwrap();
                        } else {
                            assert_eq!(res.status(), 429);
                            rejected += 1;
                        }
                    }
                    (admitted, rejected)
                })
            })
            .collect();

        let (mut admitted, mut rejected) = (0, 0);
        for task in tasks {
            let (a, r) = task.await.unwrap();
            admitted += a;
            rejected += r;
        }
        assert_eq!(admitted + rejected, TASKS * REQUESTS);
        assert!(
            admitted > 0 && rejected > 0,
            "{admitted} admitted, {rejected} rejected"
        );
        let observed = observed.load(Ordering::SeqCst);
        assert!(
            (1..=MAX).contains(&observed),
            "{observed} in flight at once"
        );
        assert_eq!(layer.in_flight(), 0, "every slot came back");
    }

    #[tokio::test]
    async fn works_in_an_axum_router() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::get;

        let layer = BulkheadLayer::new(nz(1));
        let app = Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(layer.clone());
        let req = || Request::get("/").body(Body::empty()).unwrap();

        let first = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(layer.in_flight(), 1);

        let second = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(second.status(), 429);
        assert_eq!(
            second.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::ConcurrencyLimited
        );

        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(layer.in_flight(), 0);
        assert_eq!(app.oneshot(req()).await.unwrap().status(), 200);
    }
}
