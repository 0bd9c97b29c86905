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
//! closes (see [`UpgradeGuards`](crate::extensions::UpgradeGuards)), so open WebSockets
//! count as in flight too.
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
//! `429 Too Many Requests`, kind
//! [`RejectionKind::ConcurrencyLimited`](crate::rejection::RejectionKind::ConcurrencyLimited),
//! without `Retry-After` (no one can tell when a slot frees up), with the request's correlation
//! ID and path.

mod body;
mod future;
mod layer;
mod limit;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
pub use limit::SlotChange;
pub use service::Bulkhead;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::GatewayBody;
    use crate::rejection::{Rejection, RejectionKind};
    use bytes::Bytes;
    use futures_util::stream;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http::{Request, Response};
    use http_body::{Body, Frame};
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;
    use std::io;
    use std::num::NonZeroUsize;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;
    use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

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
