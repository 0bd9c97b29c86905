//! Retry in the gateway, through real sockets: exact upstream hit counts for each method and
//! status, replayed bodies, per-attempt timeouts, unreachable upstreams, the circuit breaker
//! counting one outcome per client request, and `[routes.retry]` from a config file.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::config::Config;

use common::gauge::serve_gateway;
use common::serve_hyper;

/// What one attempt brought the upstream.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    body: Bytes,
    correlation_id: Option<String>,
    /// The request target and every header, as the upstream received them.
    head: String,
}

/// An upstream that answers the `n`th request (from 0) with `script(n)`: a status and a
/// delay, and records every request.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start<F>(script: F) -> Self
    where
        F: Fn(usize) -> (u16, Duration) + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let record = seen.clone();
        let script = Arc::new(script);
        let addr = serve_hyper(tower::service_fn(move |req: Request<Incoming>| {
            let record = record.clone();
            let script = script.clone();
            async move {
                let method = req.method().clone();
                let head = format!("{} {}\n{}", req.method(), req.uri(), {
                    let mut headers: Vec<String> = req
                        .headers()
                        .iter()
                        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                        .collect();
                    headers.sort();
                    headers.join("\n")
                });
                let correlation_id = req
                    .headers()
                    .get("x-correlation-id")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = {
                    let mut seen = record.lock().unwrap();
                    seen.push(Seen {
                        method,
                        body,
                        correlation_id,
                        head,
                    });
                    seen.len() - 1
                };
                let (status, delay) = script(n);
                tokio::time::sleep(delay).await;
                let mut res = Response::new(Full::new(Bytes::from(format!("attempt {n}"))));
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(res)
            }
        }))
        .await;
        Self { addr, seen }
    }

    /// Answers `status` to everything, at once.
    async fn always(status: u16) -> Self {
        Self::start(move |_| (status, Duration::ZERO)).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Retries with almost no wait, so the tests run fast.
/// A route to `upstream` that retries `max` times, after a short backoff so that tests run
/// fast.
fn retrying(upstream: String, max: u32) -> Route {
    Route::to([upstream])
        .retry(max)
        .retry_backoff(Duration::from_millis(2), Duration::from_millis(20))
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

async fn send(gw: SocketAddr, method: Method, path: &str, body: Bytes) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{gw}{path}"))
        .header("x-correlation-id", "retry-test")
        .body(Full::new(body))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        let res = client.request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer { status, body }
    })
    .await
    .expect("an answer within 20 s")
}

async fn get(gw: SocketAddr, path: &str) -> Answer {
    send(gw, Method::GET, path, Bytes::new()).await
}

#[tokio::test]
async fn a_get_to_an_always_500_upstream_reaches_it_three_times_and_gets_the_500() {
    let up = Upstream::always(500).await;
    let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;

    let res = get(gw, "/api/thing").await;
    assert_eq!(res.status, 500);
    assert_eq!(
        res.body, "attempt 2",
        "the last attempt's answer, passed through"
    );
    assert_eq!(up.hits(), 3);
    for seen in up.seen() {
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.correlation_id.as_deref(), Some("retry-test"));
    }
}

#[tokio::test]
async fn every_attempt_sends_the_same_head() {
    // The proxy hands each attempt's request back to the retry rather than the retry keeping
    // a copy: the head that comes back must be the client's, not the one the proxy sent
    // (whose X-Forwarded-For already had the peer appended and whose Host is the upstream's).
    let up = Upstream::always(503).await;
    let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{gw}/api/items?page=2&sort=desc"))
        .header("x-correlation-id", "same-head")
        .header("x-forwarded-for", "198.51.100.7")
        .header("accept", "application/json")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 503);

    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    let first = &seen[0].head;
    assert!(
        first.starts_with("GET /items?page=2&sort=desc\n"),
        "{first}"
    );
    for line in [
        "accept: application/json",
        "x-correlation-id: same-head",
        "x-custom: kept",
        "x-forwarded-for: 198.51.100.7, 127.0.0.1",
        "x-forwarded-proto: http",
        &format!("host: {}", up.addr),
        &format!("x-forwarded-host: {gw}"),
    ] {
        assert!(
            first.lines().any(|l| l == line),
            "{line:?} missing in\n{first}"
        );
    }
    for (n, attempt) in seen.iter().enumerate().skip(1) {
        assert_eq!(&attempt.head, first, "attempt {n}");
    }
}

#[tokio::test]
async fn post_patch_put_and_delete_reach_it_once() {
    for method in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE] {
        let up = Upstream::always(500).await;
        let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;
        let res = send(gw, method.clone(), "/api/orders", Bytes::from("order")).await;
        assert_eq!(res.status, 500, "{method}");
        assert_eq!(up.hits(), 1, "{method}");
        assert_eq!(up.seen()[0].body, "order", "{method}");
    }
}

#[tokio::test]
async fn head_and_options_are_retried() {
    for method in [Method::HEAD, Method::OPTIONS] {
        let up = Upstream::always(503).await;
        let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;
        let res = send(gw, method.clone(), "/api/thing", Bytes::new()).await;
        assert_eq!(res.status, 503, "{method}");
        assert_eq!(up.hits(), 3, "{method}");
    }
}

#[tokio::test]
async fn client_errors_reach_it_once() {
    for status in [400, 404, 429] {
        let up = Upstream::always(status).await;
        let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;
        let res = get(gw, "/api/thing").await;
        assert_eq!(res.status.as_u16(), status);
        assert_eq!(up.hits(), 1, "{status}");
    }
}

#[tokio::test]
async fn failing_twice_then_succeeding_answers_200() {
    let up = Upstream::start(|n| (if n < 2 { 500 } else { 200 }, Duration::ZERO)).await;
    let gw = serve_gateway(Gateway::builder().route("/api", retrying(up.url(), 2))).await;
    let res = get(gw, "/api/thing").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "attempt 2");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn each_attempt_has_its_own_timeout() {
    // The first two attempts are too slow for the 200 ms timeout; the third is quick.
    let up = Upstream::start(|n| {
        let delay = if n < 2 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        };
        (200, delay)
    })
    .await;
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        retrying(up.url(), 2).timeout(Duration::from_millis(200)),
    ))
    .await;
    let res = get(gw, "/api/thing").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "attempt 2");
    assert_eq!(up.hits(), 3);

    // Every attempt too slow: 504 after the retries.
    let slow = Upstream::start(|_| (200, Duration::from_secs(5))).await;
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        retrying(slow.url(), 1).timeout(Duration::from_millis(200)),
    ))
    .await;
    let res = get(gw, "/api/thing").await;
    assert_eq!(res.status, 504);
    assert_eq!(slow.hits(), 2);
}

#[tokio::test]
async fn an_upstream_that_drops_connections_is_retried_then_502() {
    // Accepts each connection and closes it at once: every attempt fails to get an answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let gw = serve_gateway(Gateway::builder().route("/api", retrying(format!("http://{addr}"), 2)))
        .await;
    let res = get(gw, "/api/thing").await;
    assert_eq!(res.status, 502);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Nothing listening at all: 502 after the retries, quickly.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let gw =
        serve_gateway(Gateway::builder().route("/api", retrying(format!("http://{nowhere}"), 2)))
            .await;
    assert_eq!(get(gw, "/api/thing").await.status, 502);
}

#[tokio::test]
async fn a_small_body_is_replayed_whole_and_a_large_one_is_sent_once() {
    let up = Upstream::always(503).await;
    let gw = serve_gateway(
        Gateway::builder().route("/api", retrying(up.url(), 2).retry_idempotent_writes(true)),
    )
    .await;
    let res = send(gw, Method::PUT, "/api/doc", Bytes::from("the document")).await;
    assert_eq!(res.status, 503);
    let bodies: Vec<_> = up.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["the document"; 3]);

    let up = Upstream::always(503).await;
    let gw = serve_gateway(
        Gateway::builder().route("/api", retrying(up.url(), 2).retry_idempotent_writes(true)),
    )
    .await;
    let large: Bytes = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let res = send(gw, Method::PUT, "/api/doc", large.clone()).await;
    assert_eq!(res.status, 503);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "over 64 KiB: not retried");
    assert_eq!(seen[0].body, large, "but sent whole");
}

#[tokio::test]
async fn the_breaker_counts_one_failure_per_client_request() {
    let up = Upstream::always(500).await;
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        retrying(up.url(), 2).circuit_breaker(NonZeroU32::new(3).unwrap(), Duration::from_secs(60)),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(get(gw, "/api/thing").await.status, 500);
    }
    assert_eq!(up.hits(), 9, "three requests, three attempts each");
    let res = get(gw, "/api/thing").await;
    assert_eq!(
        res.status, 503,
        "opened by three requests, not by three attempts"
    );
    assert_eq!(up.hits(), 9);
}

#[tokio::test]
async fn routes_retry_from_a_config_file() {
    let up = Upstream::always(502).await;
    let config = Config::from_toml_str(&format!(
        r#"
[[routes]]
prefix = "/api"
upstreams = ["{}"]

[routes.retry]
max_retries = 2
base_delay = "5ms"
"#,
        up.url()
    ))
    .unwrap();
    let gw = serve_gateway(config.gateway_builder().unwrap()).await;
    assert_eq!(get(gw, "/api/thing").await.status, 502);
    assert_eq!(up.hits(), 3);
    assert_eq!(
        send(gw, Method::POST, "/api/x", Bytes::new()).await.status,
        502
    );
    assert_eq!(up.hits(), 4, "the POST once");
}

#[tokio::test]
async fn max_retries_zero_in_a_config_file_is_no_retry() {
    let up = Upstream::always(502).await;
    let config = Config::from_toml_str(&format!(
        "[[routes]]\nprefix = \"/api\"\nupstreams = [\"{}\"]\n\n[routes.retry]\nmax_retries = 0\n",
        up.url()
    ))
    .unwrap();
    let gw = serve_gateway(config.gateway_builder().unwrap()).await;
    assert_eq!(get(gw, "/api/thing").await.status, 502);
    assert_eq!(up.hits(), 1, "a GET to a failing upstream, tried once");
}

#[tokio::test]
async fn a_route_without_retry_tries_once() {
    let up = Upstream::always(500).await;
    let gw = serve_gateway(Gateway::builder().route("/api", Route::to([up.url()]))).await;
    assert_eq!(get(gw, "/api/thing").await.status, 500);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_retried_request_holds_one_bulkhead_slot_through_its_wait() {
    // The first attempt gets a 503 asking for a 1 s wait; the retry then succeeds. While the
    // first request waits, its bulkhead slot stays taken: the bulkhead sits outside retry.
    let hits = Arc::new(AtomicUsize::new(0));
    let first_failed = Arc::new(tokio::sync::Notify::new());
    let (counter, notify) = (hits.clone(), first_failed.clone());
    let up = serve_hyper(tower::service_fn(move |_req: Request<Incoming>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let notify = notify.clone();
        async move {
            let mut res = Response::new(Full::new(Bytes::from(format!("attempt {n}"))));
            if n == 0 {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut()
                    .insert("retry-after", "1".parse().unwrap());
                notify.notify_one();
            }
            Ok::<_, Infallible>(res)
        }
    }))
    .await;
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        retrying(format!("http://{up}"), 1).bulkhead(std::num::NonZeroUsize::new(1).unwrap()),
    ))
    .await;

    let first = tokio::spawn(async move { get(gw, "/api/slow").await });
    first_failed.notified().await;
    let second = get(gw, "/api/other").await;
    assert_eq!(
        second.status, 429,
        "the slot is held through the retry's wait"
    );
    let first = first.await.unwrap();
    assert_eq!(
        (first.status, first.body),
        (StatusCode::OK, Bytes::from("attempt 1"))
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the 429 never reached the upstream"
    );
}

#[tokio::test]
async fn a_streamed_body_past_the_limit_is_sent_once_and_whole() {
    // No Content-Length: the gateway learns the body is too large only while it streams
    // (kept up to 64 KiB, then no more), so the failed attempt is not retried.
    use http_body_util::StreamBody;

    let up = Upstream::always(503).await;
    let gw = serve_gateway(
        Gateway::builder().route("/api", retrying(up.url(), 2).retry_idempotent_writes(true)),
    )
    .await;
    let chunks: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 2048])).collect();
    let whole: Bytes = chunks.concat().into();
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(c))),
    );
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::put(format!("http://{gw}/api/doc"))
        .body(StreamBody::new(frames))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 503);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "past 64 KiB: not retried");
    assert_eq!(seen[0].body, whole, "but sent whole");

    // A small streamed body is kept and sent whole by every attempt.
    let up = Upstream::always(503).await;
    let gw = serve_gateway(
        Gateway::builder().route("/api", retrying(up.url(), 2).retry_idempotent_writes(true)),
    )
    .await;
    let frames = futures_util::stream::iter(
        ["small ", "streamed ", "body"]
            .map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(c)))),
    );
    let req = Request::put(format!("http://{gw}/api/doc"))
        .body(StreamBody::new(frames))
        .unwrap();
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 503);
    let bodies: Vec<_> = up.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["small streamed body"; 3]);
}
