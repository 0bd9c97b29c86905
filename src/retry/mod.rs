//! Retries safe requests whose attempt failed: a `5xx`, a timeout, an unreachable upstream.
//!
//! - **What is retried**: `GET`, `HEAD` and `OPTIONS`; `PUT` and `DELETE` only when you opt
//!   in with [`idempotent_writes`](RetryLayer::idempotent_writes); `POST` and `PATCH` never,
//!   nor upgrades (WebSocket). A request that is never retried passes straight through, with
//!   no copy made.
//! - **When**: an answer that the [`FailureClassifier`](crate::classify::FailureClassifier)
//!   calls a failure (default [`ServerErrors`](crate::classify::ServerErrors): every `5xx`,
//!   including the gateway's own `502` for an unreachable upstream and `504` for a timeout),
//!   or an error of the inner service. Never a `4xx`, whatever the classifier says. The
//!   last attempt's answer goes to the client as it is, so a `500` after the retries is the
//!   upstream's `500`.
//! - **How often**: at most `max_retries` times per request, and only while the
//!   [`RetryBudget`] lasts (by default 20 % of the last 10 s of requests plus 10 a second), so
//!   an upstream that is down sees about 1.2 times the traffic, not `1 + max_retries` times.
//! - **How long between**: a random wait up to `base_delay × 2^(n-1)` before retry `n`,
//!   capped at `max_delay` ("full jitter"). When the failed answer carries `Retry-After`, that
//!   wait is used instead, up to a cap; an answer asking for more is not retried.
//! - **Bodies**: an empty body is sent empty again. A body that may fit in 64 KiB
//!   ([`max_replay_body`](RetryLayer::max_replay_body)) streams to the first attempt as it
//!   arrives and is kept as it passes ([`RetryBody`]); if it turns out larger, it still
//!   streams whole, but the request is not retried. Nothing is buffered before the first
//!   attempt.
//!
//! - **What is kept**: a request that may be retried needs its head (method, URI, headers,
//!   extensions) again for the next attempt. By default the layer copies it before each
//!   attempt that may be followed by another. With [`hand_back`](RetryLayer::hand_back)
//!   (the gateway builder's setting) it copies nothing: the service inside, the
//!   [`ProxyService`](crate::proxy::ProxyService), sends a copy of the headers and hands the
//!   original head back through a [`HandBack`](crate::extensions::HandBack), so the
//!   extensions are moved rather than cloned and the one header copy is the one sent.
//!
//! The decisions are a [`RetryPolicy`], which also works as a tower
//! [`Policy`](tower::retry::Policy) in tower's own [`Retry`](tower::retry::Retry); the layer
//! runs its own loop so that it can take the head back instead of copying it. The budget is
//! our own, lock-free (tower's takes a lock on every request). The inner service is cloned
//! per request that may be retried and polled ready before every attempt after the first.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use bytes::Bytes;
//! use http::{Method, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::retry::RetryLayer;
//!
//! let hits = Arc::new(AtomicUsize::new(0));
//! let counted = hits.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(2))
//!     .service_fn(move |_req: Request<_>| {
//!         counted.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             let mut res = Response::new(Full::<Bytes>::from("down"));
//!             *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!             Ok::<_, std::convert::Infallible>(res)
//!         }
//!     });
//!
//! let get = Request::new(Full::<Bytes>::default());
//! assert_eq!(svc.clone().oneshot(get).await.unwrap().status(), 500);
//! assert_eq!(hits.swap(0, Ordering::SeqCst), 3, "the first attempt and two retries");
//!
//! let post = Request::builder().method(Method::POST).body(Full::from("order")).unwrap();
//! assert_eq!(svc.oneshot(post).await.unwrap().status(), 500);
//! assert_eq!(hits.load(Ordering::SeqCst), 1, "a POST is never retried");
//! # }
//! ```
//!
//! # Ordering
//! Inside the circuit breaker and the bulkhead, outside the timeout: the breaker counts one
//! outcome per client request (after its retries), a retried request holds one bulkhead
//! slot, and each attempt gets a fresh timeout. The service inside must be `Clone`, and it
//! sees request bodies as [`RetryBody`].
//!
//! # Rejections
//! None: the layer never answers on its own. Its `Retry-After` handling and
//! [`RetryBudget`] only decide whether the failed answer is retried or passed on.

mod budget;
mod future;
mod layer;
mod policy;
mod replay_body;

pub use budget::{BudgetError, RetryBudget};
pub use future::ResponseFuture;
pub use layer::{DEFAULT_BASE_DELAY, DEFAULT_REPLAY_LIMIT, Retry, RetryLayer};
pub use policy::{RetryPolicy, Retrying};
pub use replay_body::RetryBody;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::{Rejection, RejectionKind};
    use bytes::Bytes;
    use http::header::RETRY_AFTER;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt, service_fn};

    type Body = Full<Bytes>;

    /// A service answering `statuses` in turn (the last one from then on), recording what
    /// each attempt saw: (method, body, when).
    #[derive(Clone)]
    struct Scripted {
        statuses: Arc<Vec<u16>>,
        seen: Arc<Mutex<Vec<(Method, Bytes, Instant)>>>,
        headers: Arc<Vec<(&'static str, &'static str)>>,
    }

    impl Scripted {
        fn new(statuses: &[u16]) -> Self {
            Self {
                statuses: Arc::new(statuses.to_vec()),
                seen: Arc::default(),
                headers: Arc::default(),
            }
        }

        fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers = Arc::new(vec![(name, value)]);
            self
        }

        fn hits(&self) -> usize {
            self.seen.lock().unwrap().len()
        }

        fn bodies(&self) -> Vec<Bytes> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.1.clone())
                .collect()
        }

        fn times(&self) -> Vec<Instant> {
            self.seen.lock().unwrap().iter().map(|s| s.2).collect()
        }

        fn service(
            &self,
        ) -> impl tower::Service<
            Request<RetryBody<Body>>,
            Response = Response<Body>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send {
            let this = self.clone();
            service_fn(move |req: Request<RetryBody<Body>>| {
                let this = this.clone();
                async move {
                    let method = req.method().clone();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let n = {
                        let mut seen = this.seen.lock().unwrap();
                        seen.push((method, body, Instant::now()));
                        seen.len()
                    };
                    let status = this.statuses[(n - 1).min(this.statuses.len() - 1)];
                    let mut res = Response::new(Body::from(format!("attempt {n}")));
                    *res.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (name, value) in this.headers.iter() {
                        res.headers_mut().insert(*name, value.parse().unwrap());
                    }
                    Ok::<_, Infallible>(res)
                }
            })
        }
    }

    fn request(method: Method, body: &'static str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/thing")
            .body(Body::from(body))
            .unwrap()
    }

    async fn text(res: Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u32);

    /// Per attempt: the marker extension it arrived with, and how many `x-sent` headers.
    type Arrivals = Arc<Mutex<Vec<(Option<Marker>, usize)>>>;

    /// In front of `inner`, what the proxy does with a request that carries a `HandBack`:
    /// sends a copy of its head (here with a header of its own added, as the proxy adds the
    /// forwarding headers) and leaves the original parts in the `HandBack`. Records the
    /// marker extension and the `x-sent` headers each attempt arrived with.
    fn handing_back<S>(
        inner: S,
        arrived: Arrivals,
    ) -> impl tower::Service<
        Request<RetryBody<Body>>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    where
        S: tower::Service<
                Request<RetryBody<Body>>,
                Response = Response<Body>,
                Error = Infallible,
                Future: Send,
            > + Clone
            + Send,
    {
        service_fn(move |mut req: Request<RetryBody<Body>>| {
            arrived.lock().unwrap().push((
                req.extensions().get::<Marker>().cloned(),
                req.headers().get_all("x-sent").iter().count(),
            ));
            if let Some(slot) = req.extensions_mut().remove::<crate::extensions::HandBack>() {
                let (parts, body) = req.into_parts();
                let mut sent = Request::new(body);
                *sent.uri_mut() = parts.uri.clone();
                *sent.headers_mut() = parts.headers.clone();
                slot.put(parts);
                req = sent;
            }
            req.headers_mut().append("x-sent", "1".parse().unwrap());
            inner.clone().oneshot(req)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn with_hand_back_each_attempt_is_the_request_handed_back() {
        let upstream = Scripted::new(&[500, 502, 200]);
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let svc = RetryLayer::new(3)
            .hand_back(true)
            .layer(handing_back(upstream.service(), arrived.clone()));
        let mut req = request(Method::GET, "");
        req.extensions_mut().insert(Marker(7));
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(upstream.hits(), 3);
        // Every attempt has the client's extensions (moved, not copied) and none of what an
        // earlier attempt added to the head it sent.
        assert_eq!(*arrived.lock().unwrap(), vec![(Some(Marker(7)), 0); 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_hand_back_a_request_not_handed_back_is_not_retried() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(2).hand_back(true).layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(upstream.hits(), 1, "nothing came back to send again");
    }

    #[tokio::test(start_paused = true)]
    async fn with_hand_back_the_last_attempt_asks_for_nothing_back() {
        let upstream = Scripted::new(&[500]);
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let seen_slot = Arc::new(Mutex::new(Vec::new()));
        let record = seen_slot.clone();
        let inner = handing_back(upstream.service(), arrived);
        let svc = RetryLayer::new(1).hand_back(true).layer(service_fn(
            move |req: Request<RetryBody<Body>>| {
                record.lock().unwrap().push(
                    req.extensions()
                        .get::<crate::extensions::HandBack>()
                        .is_some(),
                );
                inner.clone().oneshot(req)
            },
        ));
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(*seen_slot.lock().unwrap(), vec![true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_always_failing_get_is_tried_one_plus_max_retries_times() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(2).layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(
            text(res).await,
            "attempt 3",
            "the last attempt's answer passes"
        );
        assert_eq!(upstream.hits(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn post_and_patch_are_tried_once() {
        for method in [Method::POST, Method::PATCH] {
            let upstream = Scripted::new(&[500]);
            let svc = RetryLayer::new(5).layer(upstream.service());
            let res = svc.oneshot(request(method.clone(), "x")).await.unwrap();
            assert_eq!(res.status(), 500);
            assert_eq!(upstream.hits(), 1, "{method}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn put_and_delete_only_when_opted_in() {
        for method in [Method::PUT, Method::DELETE] {
            let upstream = Scripted::new(&[503]);
            let svc = RetryLayer::new(2).layer(upstream.service());
            svc.oneshot(request(method.clone(), "")).await.unwrap();
            assert_eq!(upstream.hits(), 1, "{method} by default");

            let upstream = Scripted::new(&[503]);
            let svc = RetryLayer::new(2)
                .idempotent_writes(true)
                .layer(upstream.service());
            svc.oneshot(request(method.clone(), "")).await.unwrap();
            assert_eq!(upstream.hits(), 3, "{method} opted in");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn head_and_options_are_retried() {
        for method in [Method::HEAD, Method::OPTIONS] {
            let upstream = Scripted::new(&[502]);
            let svc = RetryLayer::new(1).layer(upstream.service());
            svc.oneshot(request(method.clone(), "")).await.unwrap();
            assert_eq!(upstream.hits(), 2, "{method}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_never_retried() {
        for status in [400, 404, 408, 429] {
            let upstream = Scripted::new(&[status]);
            let svc = RetryLayer::new(3).layer(upstream.service());
            let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(upstream.hits(), 1, "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_then_success_answers_the_success() {
        let upstream = Scripted::new(&[500, 503, 200]);
        let svc = RetryLayer::new(3).layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(text(res).await, "attempt 3");
        assert_eq!(upstream.hits(), 3, "no retry after the success");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_and_stay_under_their_ceilings() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(4)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(300))
            .layer(upstream.service());
        svc.oneshot(request(Method::GET, "")).await.unwrap();
        let times = upstream.times();
        assert_eq!(times.len(), 5);
        for (n, pair) in times.windows(2).enumerate() {
            let ceiling = [100, 200, 300, 300][n];
            let wait = pair[1] - pair[0];
            assert!(
                wait <= Duration::from_millis(ceiling),
                "retry {}: {wait:?}",
                n + 1
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_retry_after_is_honoured_within_the_cap() {
        let upstream = Scripted::new(&[503, 200]).with_header("retry-after", "2");
        let svc = RetryLayer::new(1)
            .retry_after_cap(Duration::from_secs(5))
            .layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 200);
        let times = upstream.times();
        assert_eq!(times[1] - times[0], Duration::from_secs(2));

        // Asking for longer than the cap: the 503 goes to the client, with its Retry-After.
        let upstream = Scripted::new(&[503, 200]).with_header("retry-after", "120");
        let svc = RetryLayer::new(3).layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[RETRY_AFTER], "120");
        assert_eq!(upstream.hits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_stops_retries() {
        let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(10)).unwrap());
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(3).budget(budget).layer(upstream.service());
        svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(upstream.hits(), 1, "no budget, no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_a_retry_storm() {
        // 20 % of requests plus a floor of 1 a second over 10 s: 100 failing requests with
        // up to 3 retries each make 100 + 30 attempts, not 400.
        let budget = Arc::new(RetryBudget::new(0.2, 1, Duration::from_secs(10)).unwrap());
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(3)
            .budget(budget.clone())
            .base_delay(Duration::ZERO)
            .layer(upstream.service());
        for _ in 0..100 {
            svc.clone().oneshot(request(Method::GET, "")).await.unwrap();
        }
        assert_eq!(upstream.hits(), 130);
        assert_eq!(budget.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_body_is_sent_whole_by_every_attempt() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(2)
            .idempotent_writes(true)
            .layer(upstream.service());
        svc.oneshot(request(Method::PUT, "the document"))
            .await
            .unwrap();
        assert_eq!(upstream.bodies(), ["the document"; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_replay_limit_is_sent_once_and_whole() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(2)
            .max_replay_body(4)
            .layer(upstream.service());
        svc.oneshot(request(Method::GET, "longer than four"))
            .await
            .unwrap();
        assert_eq!(upstream.bodies(), ["longer than four"]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_inner_service_are_retried() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let svc = RetryLayer::new(2).layer(service_fn(move |_req: Request<RetryBody<Body>>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err("connection refused")
                } else {
                    Ok(Response::new(Body::from("up")))
                }
            }
        }));
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[cfg(feature = "timeout")]
    #[tokio::test(start_paused = true)]
    async fn each_attempt_gets_its_own_timeout() {
        use crate::timeout::TimeoutLayer;

        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let slow_then_fast = service_fn(move |_req: Request<_>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, Infallible>(Response::new(Body::from("fast")))
            }
        });
        let svc = RetryLayer::new(2)
            .base_delay(Duration::ZERO)
            .layer(TimeoutLayer::new(Duration::from_secs(1)).layer(slow_then_fast));
        let started = Instant::now();
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "two timeouts of 1 s"
        );

        // Every attempt too slow: the last 504 is the answer.
        let svc = RetryLayer::new(1).base_delay(Duration::ZERO).layer(
            TimeoutLayer::new(Duration::from_secs(1)).layer(service_fn(|_req: Request<_>| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Infallible>(Response::new(Body::from("never")))
            })),
        );
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 504);
        let rejection = res.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.kind(), RejectionKind::GatewayTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_custom_classifier_decides_but_never_for_a_4xx() {
        let upstream = Scripted::new(&[200]).with_header("x-degraded", "true");
        let svc = RetryLayer::new(1)
            .with_classifier(|res: &crate::classify::ResponseHead<'_>| {
                res.headers().contains_key("x-degraded") || res.status() == 429
            })
            .layer(upstream.service());
        svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(upstream.hits(), 2, "a degraded 200 is retried");

        let upstream = Scripted::new(&[429]);
        let svc = RetryLayer::new(1)
            .with_classifier(|res: &crate::classify::ResponseHead<'_>| res.status() == 429)
            .layer(upstream.service());
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(
            upstream.hits(),
            1,
            "a 4xx never is, even when the classifier counts it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_retries_passes_through() {
        let upstream = Scripted::new(&[500]);
        let svc = RetryLayer::new(0).layer(upstream.service());
        svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(upstream.hits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_budget() {
        let upstream = Scripted::new(&[500]);
        let budget = Arc::new(RetryBudget::new(0.0, 1, Duration::from_secs(2)).unwrap());
        let svc = RetryLayer::new(5)
            .budget(budget)
            .base_delay(Duration::ZERO)
            .layer(upstream.service());
        svc.clone().oneshot(request(Method::GET, "")).await.unwrap();
        svc.clone().oneshot(request(Method::GET, "")).await.unwrap();
        // Two retries in the budget's window, shared by both requests: 3 hits for the first,
        // 1 for the second.
        assert_eq!(upstream.hits(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn works_inside_an_axum_router() {
        use axum::Router;
        use axum::routing::get;

        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new()
            .route(
                "/flaky",
                get(move || {
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            (StatusCode::BAD_GATEWAY, "down")
                        } else {
                            (StatusCode::OK, "up")
                        }
                    }
                }),
            )
            .layer(RetryLayer::new(2).base_delay(Duration::ZERO));
        let res = app
            .oneshot(
                Request::builder()
                    .uri("/flaky")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
