//! A circuit breaker: after `failure_threshold` consecutive upstream failures (or at a
//! failure rate over a sliding window), the route is answered `503` at once for a
//! `cooldown`, then probes find out whether it recovered.
//!
//! - **Closed**: requests pass. Each answer is classified by a
//!   [`FailureClassifier`](crate::classify::FailureClassifier) (default
//!   [`ServerErrors`](crate::classify::ServerErrors): 5xx, the gateway's own 502 and 504;
//!   never a 4xx), and counted by the trip policy (below), which opens the breaker. Deciding
//!   whether a request passes costs one atomic load. A refusal of the gateway's own from
//!   further in (a full bulkhead's `429`) never reached the upstream and counts neither way
//!   ([`ResponseHead::is_about_upstream`](crate::classify::ResponseHead::is_about_upstream));
//!   a probe refused so gives its slot back to the next request.
//! - **Open**: requests are answered `503` without touching the inner service, with
//!   `Retry-After` set to what is left of the cooldown.
//! - **Half-open**: after the cooldown, [`probes`](CircuitBreakerLayer::probes) requests
//!   (default 1) go through while the rest still get `503`. A probe's success closes the
//!   breaker; its failure opens it for another cooldown. A probe is a ticket released on
//!   drop: a probe that is cancelled, or whose client hangs up, counts as a failure, so the
//!   breaker can never wedge half-open waiting for an answer that will not come.
//!
//! Every change of state is a tracing event (`warn` when it opens, `info` otherwise) and
//! calls the [`on_state_change`](CircuitBreakerLayer::on_state_change) hook.
//!
//! An outcome counts only in the closed stretch its request was admitted in: a late answer
//! to a request admitted before the breaker opened neither extends the cooldown nor reopens
//! a breaker that has closed since. Each time the breaker closes, it counts afresh.
//!
//! # Which policy
//! - **Consecutive failures**, [`Trip::Consecutive`] (the default; [`CircuitBreakerLayer::new`] takes a `NonZeroU32` for it): opens after
//!   `failure_threshold` failures in a row; any success starts the count again. It costs an
//!   atomic counter per answer and reacts within a few requests to an upstream that is
//!   down outright. Pick it for a route with little traffic, or one whose upstream fails
//!   all at once (crashed, unreachable). An upstream failing one request in three, the
//!   failures spread among successes, seldom opens it.
//! - **Failure rate**, [`Trip::FailureRate`] (give [`CircuitBreakerLayer::new`] a [`FailureRate`]): opens
//!   when at least `rate` of the calls answered in the last `window` failed, once that
//!   window holds at least `min_calls` calls (Resilience4j's time-based sliding window).
//!   Every answer is a call, a 4xx a successful one. Pick it for a busy route whose
//!   upstream degrades partly (one replica of three down, overload): it opens at "40% of
//!   the last 30 s failed" however the failures interleave with successes, and `min_calls`
//!   keeps two unlucky requests on a quiet route from opening it. The window is ten buckets
//!   of `window / 10`, each one atomic word: recording an answer is one compare-and-swap
//!   (and once per bucket a look at the other nine), and only a failure sums the buckets
//!   to compare the rate, so a success never opens the breaker. No lock.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::{num::NonZeroU32, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::circuit_breaker::{BreakerState, CircuitBreakerLayer};
//!
//! let layer = CircuitBreakerLayer::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(30));
//! let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(|_req: Request<()>| async {
//!     let mut res = Response::new(Full::<Bytes>::from("down"));
//!     *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!     Ok::<_, std::convert::Infallible>(res)
//! });
//!
//! for _ in 0..2 {
//!     assert_eq!(svc.clone().oneshot(Request::new(())).await.unwrap().status(), 500);
//! }
//! assert_eq!(layer.state(), BreakerState::Open);
//! let refused = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(refused.status(), 503);
//! assert_eq!(refused.headers()["retry-after"], "30");
//! # }
//! ```
//!
//! # Ordering
//! After the rate limiter, before the bulkhead and retry: an open circuit answers before a
//! bulkhead slot is taken, and the breaker sees the outcome of a request after all its retry
//! attempts (one failure per client request, not one per attempt).
//!
//! # Rejections
//! `503 Service Unavailable`, kind
//! [`RejectionKind::CircuitOpen`](crate::rejection::RejectionKind::CircuitOpen), with `Retry-After`
//! (whole seconds, at least 1) while the cooldown runs; without it while probes are out.

mod future;
mod layer;
mod state;
mod window;

pub use future::ResponseFuture;
pub use layer::{CircuitBreaker, CircuitBreakerLayer};
pub use state::{BreakerState, Transition, Trip};
pub use window::{FailureRate, FailureRateError};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::{Rejection, RejectionKind};
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tower::{Layer, ServiceExt, service_fn};

    type Body = Full<Bytes>;

    /// An upstream answering the status in `status`, counting its calls, and waiting for
    /// `gate` when it is set.
    #[derive(Clone, Default)]
    struct Upstream {
        status: Arc<AtomicU16>,
        hits: Arc<AtomicUsize>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Upstream {
        fn answering(status: u16) -> Self {
            let up = Self::default();
            up.status.store(status, Ordering::SeqCst);
            up
        }

        fn service(
            &self,
        ) -> impl tower::Service<
            Request<()>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + use<> {
            let up = self.clone();
            service_fn(move |_req: Request<()>| {
                let up = up.clone();
                async move {
                    up.hits.fetch_add(1, Ordering::SeqCst);
                    if let Some(gate) = &up.gate {
                        gate.acquire().await.expect("never closed").forget();
                    }
                    let mut res = Response::new(Body::from("upstream"));
                    *res.status_mut() =
                        StatusCode::from_u16(up.status.load(Ordering::SeqCst)).unwrap();
                    Ok::<_, Infallible>(res)
                }
            })
        }
    }

    /// A breaker (threshold 1, cooldown 30 s) in front of an upstream that answers 500 and
    /// holds each request until `gate` lets it go: opened by one failure, its cooldown just
    /// over.
    async fn opened_then_cooled_down() -> (
        Arc<tokio::sync::Semaphore>,
        Upstream,
        CircuitBreakerLayer,
        impl tower::Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send,
    ) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let up = Upstream {
            gate: Some(Arc::clone(&gate)),
            ..Upstream::answering(500)
        };
        let layer = breaker(1, 30);
        let svc = layer.layer(up.service());
        gate.add_permits(1);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        (gate, up, layer, svc)
    }

    /// An inner service answering, in turn, the upstream's 500s and the gateway's own
    /// refusal (a full bulkhead's 429) as `script` says: `true` for a refusal.
    fn refusing(
        script: Vec<bool>,
    ) -> (
        Arc<AtomicUsize>,
        impl tower::Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let svc = service_fn(move |_req: Request<()>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let refuse = script.get(n).copied().unwrap_or(false);
            async move {
                Ok::<_, Infallible>(if refuse {
                    Rejection::new(RejectionKind::ConcurrencyLimited).into_response::<Body>()
                } else {
                    let mut res = Response::new(Body::from("upstream"));
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    res
                })
            }
        });
        (calls, svc)
    }

    #[tokio::test(start_paused = true)]
    async fn the_gateways_own_refusals_count_neither_way() {
        // 500, refused, 500: two consecutive upstream failures, the refusal in between
        // resetting nothing.
        let (_, inner) = refusing(vec![false, true, false]);
        let layer = breaker(2, 30);
        let svc = layer.layer(inner);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(status(&svc).await, 429);
        assert_eq!(layer.state(), BreakerState::Closed);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);

        // A probe the gateway refused gives its slot back: the next request probes.
        let (calls, inner) = refusing(vec![false, true, true]);
        let layer = breaker(1, 30);
        let svc = layer.layer(inner);
        assert_eq!(status(&svc).await, 500);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(status(&svc).await, 429);
        assert_eq!(layer.state(), BreakerState::HalfOpen, "no verdict");
        assert_eq!(status(&svc).await, 429, "the next request is a probe");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(status(&svc).await, 500, "and the next");
        assert_eq!(layer.state(), BreakerState::Open);
    }

    fn breaker(threshold: u32, cooldown_secs: u64) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(
            NonZeroU32::new(threshold).unwrap(),
            Duration::from_secs(cooldown_secs),
        )
    }

    async fn status<S>(svc: &S) -> u16
    where
        S: tower::Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone,
    {
        svc.clone()
            .oneshot(Request::new(()))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(start_paused = true)]
    async fn keep_state_of_carries_an_open_breaker_only_to_the_same_settings() {
        let up = Upstream::answering(500);
        let old = breaker(1, 30);
        assert_eq!(status(&old.layer(up.service())).await, 500);
        assert_eq!(old.state(), BreakerState::Open);
        assert_eq!(
            breaker(1, 30).keep_state_of(&old).state(),
            BreakerState::Open
        );
        assert_eq!(
            breaker(2, 30).keep_state_of(&old).state(),
            BreakerState::Closed
        );
        assert_eq!(
            breaker(1, 60).keep_state_of(&old).state(),
            BreakerState::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_refuses_without_the_upstream() {
        let up = Upstream::answering(500);
        let layer = breaker(3, 30);
        let svc = layer.layer(up.service());
        for _ in 0..2 {
            assert_eq!(status(&svc).await, 500);
        }
        // A success in between resets the count.
        up.status.store(200, Ordering::SeqCst);
        assert_eq!(status(&svc).await, 200);
        up.status.store(500, Ordering::SeqCst);
        for _ in 0..2 {
            assert_eq!(status(&svc).await, 500);
        }
        assert_eq!(layer.state(), BreakerState::Closed);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        let hits = up.hits.load(Ordering::SeqCst);

        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "30");
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::CircuitOpen
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()["retry-after"], "10");
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            hits,
            "open: the upstream is not contacted"
        );
    }

    /// An upstream answering `status`, after the delay the request asks for in `x-delay-s`.
    fn delaying(
        status: Arc<AtomicU16>,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send {
        service_fn(move |req: Request<()>| {
            let status = Arc::clone(&status);
            async move {
                let delay = req
                    .headers()
                    .get("x-delay-s")
                    .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
                tokio::time::sleep(Duration::from_secs(delay)).await;
                let mut res = Response::new(Body::from("upstream"));
                *res.status_mut() = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    }

    fn slow(secs: u64) -> Request<()> {
        Request::get("/")
            .header("x-delay-s", secs.to_string())
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_from_before_it_opened_change_nothing_after() {
        let code = Arc::new(AtomicU16::new(500));
        let layer = breaker(1, 30);
        let svc = layer.layer(delaying(Arc::clone(&code)));
        // Two slow requests, admitted while closed: one fails at 20 s, one at 40 s.
        let late_20 = tokio::spawn(svc.clone().oneshot(slow(20)));
        let late_40 = tokio::spawn(svc.clone().oneshot(slow(40)));
        tokio::task::yield_now().await;
        // A fast failure opens it at t = 0.
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        // The first late failure (t = 20 s) does not restart the cooldown.
        assert_eq!(late_20.await.unwrap().unwrap().status(), 500);
        tokio::time::advance(Duration::from_secs(10)).await;
        code.store(200, Ordering::SeqCst);
        assert_eq!(
            status(&svc).await,
            200,
            "the probe goes 30 s after it opened"
        );
        assert_eq!(layer.state(), BreakerState::Closed);
        // The second (t = 40 s, answered 200 now, so make it fail) does not reopen the
        // breaker that closed after it was admitted.
        code.store(500, Ordering::SeqCst);
        assert_eq!(late_40.await.unwrap().unwrap().status(), 500);
        assert_eq!(
            layer.state(),
            BreakerState::Closed,
            "a failure from before stays there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_cooldown_a_stale_probe_still_cannot_close_it() {
        let code = Arc::new(AtomicU16::new(500));
        let layer = breaker(1, 0).probes(NonZeroU32::new(2).unwrap());
        let svc = layer.layer(delaying(Arc::clone(&code)));
        // Opened at t = 0, and half-open at once: one slow probe goes out.
        assert_eq!(status(&svc).await, 500);
        let stale = tokio::spawn(svc.clone().oneshot(slow(10)));
        tokio::task::yield_now().await;
        // The other probe fails, still at t = 0: open again, then half-open again with a
        // new probe, all within one reading of the clock.
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        let current = tokio::spawn(svc.clone().oneshot(slow(20)));
        tokio::task::yield_now().await;
        assert_eq!(layer.state(), BreakerState::HalfOpen);
        code.store(200, Ordering::SeqCst);
        assert_eq!(stale.await.unwrap().unwrap().status(), 200);
        assert_eq!(
            layer.state(),
            BreakerState::HalfOpen,
            "the probe from the first half-open period only gave its slot back"
        );
        assert_eq!(current.await.unwrap().unwrap().status(), 200);
        assert_eq!(layer.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_never_open_it() {
        let up = Upstream::answering(404);
        let layer = breaker(2, 30);
        let svc = layer.layer(up.service());
        for _ in 0..10 {
            assert_eq!(status(&svc).await, 404);
        }
        assert_eq!(layer.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_probe_closes_or_reopens_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let up = Upstream::answering(500);
        let layer = breaker(1, 30).on_state_change(move |t| record.lock().unwrap().push(t));
        let svc = layer.layer(up.service());
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);

        // The probe fails: open again, for a whole new cooldown.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(status(&svc).await, 503);

        // The next probe succeeds: closed.
        tokio::time::advance(Duration::from_secs(1)).await;
        up.status.store(200, Ordering::SeqCst);
        assert_eq!(status(&svc).await, 200);
        assert_eq!(layer.state(), BreakerState::Closed);
        assert_eq!(up.hits.load(Ordering::SeqCst), 3);

        use BreakerState::*;
        let changes: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            changes,
            [
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_of_fifty_through() {
        let (gate, up, layer, svc) = opened_then_cooled_down().await;
        up.status.store(200, Ordering::SeqCst);

        let mut tasks = Vec::new();
        for _ in 0..50 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move { status(&svc).await }));
        }
        // Let every request reach its decision; the probe waits at the upstream.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            2,
            "one probe besides the first failure"
        );
        gate.add_permits(1);
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1);
        assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 49);
        assert_eq!(layer.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_counts_as_a_failure_so_it_never_wedges() {
        let (gate, up, layer, svc) = opened_then_cooled_down().await;

        // The probe's client hangs up while the upstream is still thinking.
        let probe = tokio::spawn({
            let svc = svc.clone();
            async move { status(&svc).await }
        });
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.state(), BreakerState::HalfOpen);
        probe.abort();
        let _ = probe.await;
        assert_eq!(
            layer.state(),
            BreakerState::Open,
            "the lost probe reopened it"
        );

        // After another cooldown a new probe goes, and succeeds.
        tokio::time::advance(Duration::from_secs(30)).await;
        up.status.store(200, Ordering::SeqCst);
        gate.add_permits(10);
        assert_eq!(status(&svc).await, 200);
        assert_eq!(layer.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_breaker_and_classifiers_are_pluggable() {
        let up = Upstream::answering(429);
        let layer = breaker(2, 30).with_classifier(|res: &crate::classify::ResponseHead<'_>| {
            res.status() == StatusCode::TOO_MANY_REQUESTS
        });
        let a = layer.layer(up.service());
        let b = layer.clone().layer(up.service());
        assert_eq!(status(&a).await, 429);
        assert_eq!(status(&b).await, 429);
        assert_eq!(
            status(&a).await,
            503,
            "two failures across clones opened it"
        );
    }

    fn rate_breaker(rate: f64, window_secs: u64, min_calls: u32) -> CircuitBreakerLayer {
        let policy = FailureRate::new(
            rate,
            Duration::from_secs(window_secs),
            NonZeroU32::new(min_calls).unwrap(),
        )
        .unwrap();
        CircuitBreakerLayer::new(policy, Duration::from_secs(5))
    }

    /// Answers each status in turn, checking the breaker's state after each.
    async fn answer<S>(
        up: &Upstream,
        svc: &S,
        layer: &CircuitBreakerLayer,
        steps: &[(u16, BreakerState)],
    ) where
        S: tower::Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone,
    {
        for (i, &(code, state)) in steps.iter().enumerate() {
            up.status.store(code, Ordering::SeqCst);
            assert_eq!(status(svc).await, code, "step {i}");
            assert_eq!(layer.state(), state, "after step {i} ({code})");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_never_opens_below_min_calls() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.5, 10, 5);
        let svc = layer.layer(up.service());
        let four = [(500, Closed); 4];
        answer(&up, &svc, &layer, &four).await;
        answer(&up, &svc, &layer, &[(500, Open)]).await;
        assert_eq!(status(&svc).await, 503);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_opens_at_the_rate_however_failures_interleave() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.5, 10, 4);
        let svc = layer.layer(up.service());
        #[rustfmt::skip]
        answer(&up, &svc, &layer, &[
            (200, Closed), (200, Closed), (200, Closed),
            (500, Closed), // 1 of 4
            (500, Closed), // 2 of 5
            (200, Closed),
            (500, Closed), // 3 of 7
            (500, Open),   // 4 of 8: the rate
        ]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_forgets_failures_that_left_the_window() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.6, 10, 4);
        let svc = layer.layer(up.service());
        // A burst of failures, under min_calls.
        answer(&up, &svc, &layer, &[(500, Closed); 3]).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        // 2 of 4: were the burst still counted, 5 of 7 would have opened it.
        #[rustfmt::skip]
        answer(&up, &svc, &layer, &[
            (200, Closed), (200, Closed), (500, Closed), (500, Closed),
            (500, Open), // 3 of 5
        ]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_keeps_failures_until_they_leave_the_window() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.6, 10, 4);
        let svc = layer.layer(up.service());
        answer(&up, &svc, &layer, &[(500, Closed); 3]).await;
        // Nine tenths of the window later, the burst still counts: 4 of 5.
        tokio::time::advance(Duration::from_millis(9_900)).await;
        answer(&up, &svc, &layer, &[(200, Closed), (500, Open)]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_counts_client_errors_as_answered_calls() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.5, 10, 2);
        let svc = layer.layer(up.service());
        answer(&up, &svc, &layer, &[(404, Closed); 10]).await;
        // 4xx are calls that did not fail: ten failures more to reach half.
        answer(&up, &svc, &layer, &[(500, Closed); 9]).await;
        answer(&up, &svc, &layer, &[(500, Open)]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_counts_afresh_after_a_probe_closes_it() {
        use BreakerState::*;
        let up = Upstream::default();
        let layer = rate_breaker(0.5, 60, 2);
        let svc = layer.layer(up.service());
        answer(&up, &svc, &layer, &[(500, Closed), (500, Open)]).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        answer(&up, &svc, &layer, &[(200, Closed)]).await;
        // The two failures are still inside the 60 s window, yet no longer count: 1 call.
        answer(
            &up,
            &svc,
            &layer,
            &[(500, Closed), (200, Closed), (500, Open)],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_ignores_outcomes_from_before_it_opened() {
        let code = Arc::new(AtomicU16::new(500));
        let layer = rate_breaker(0.6, 60, 2);
        let svc = layer.layer(delaying(Arc::clone(&code)));
        let late = tokio::spawn(svc.clone().oneshot(slow(10)));
        tokio::task::yield_now().await;
        assert_eq!(status(&svc).await, 500);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(layer.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        code.store(200, Ordering::SeqCst);
        assert_eq!(status(&svc).await, 200, "the probe");
        assert_eq!(status(&svc).await, 200);
        assert_eq!(layer.state(), BreakerState::Closed);
        // Admitted before it opened, it fails after it closed: were it counted, the next
        // failure would make 2 of 3 calls.
        code.store(500, Ordering::SeqCst);
        assert_eq!(late.await.unwrap().unwrap().status(), 500);
        assert_eq!(status(&svc).await, 500);
        assert_eq!(
            layer.state(),
            BreakerState::Closed,
            "1 of 2: the late failure stayed in its own period"
        );
    }

    #[tokio::test]
    async fn works_alone_in_an_axum_router() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/", get(|| async { (StatusCode::BAD_GATEWAY, "down") }))
            .layer(breaker(1, 60));
        let req = || {
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(app.clone().oneshot(req()).await.unwrap().status(), 502);
        let res = app.oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "60");
    }
}
