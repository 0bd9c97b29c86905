//! The gateway's metrics through a real Prometheus recorder and real sockets: after scripted
//! traffic every counter, histogram count and gauge is exact.
#![cfg(feature = "metrics")]

mod common;

use std::convert::Infallible;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::rate_limit::Quota;
use tower_gateway::server::Server;

use common::gauge::{client, fetch};
use common::{prometheus_sample, serve_hyper};

/// The one recorder of this test binary (a process has one).
fn recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0])
        .unwrap()
        .install_recorder()
        .expect("the only recorder of this test binary")
}

/// Sends `request` on a connection of its own and reads until the gateway closes it or
/// answers (5 s at most): what came back.
async fn raw(gw: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// An upstream that answers `status` after `delay`, counting its hits.
async fn upstream(status: u16, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let addr = serve_hyper(tower::service_fn(move |req: Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = req.into_body().collect().await;
            tokio::time::sleep(delay).await;
            let mut res = Response::new(Full::new(Bytes::from_static(b"answer")));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }
    }))
    .await;
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn scripted_traffic_gives_exact_metrics() {
    let prometheus = recorder();
    let (ok, ok_hits) = upstream(200, Duration::ZERO).await;
    let (fail, fail_hits) = upstream(500, Duration::ZERO).await;
    let (reads_body, _) = upstream(200, Duration::ZERO).await;
    let (slow, slow_hits) = upstream(200, Duration::from_secs(30)).await;
    let builder = || {
        Gateway::builder()
            .auth(KeySet::new().key("alice", "alice-secret"))
            .route(
                "/m/ok",
                Route::to([ok.clone()])
                    .rate_limit(Quota::new(4, Duration::from_secs(3600)).unwrap())
                    .bulkhead(NonZeroUsize::new(8).unwrap()),
            )
            .route(
                "/m/fail",
                Route::to([fail.clone()])
                    .retry(2)
                    .retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
                    .circuit_breaker(NonZeroU32::new(2).unwrap(), Duration::from_secs(600)),
            )
            .route(
                "/m/slow",
                Route::to([slow.clone()]).bulkhead(NonZeroUsize::new(8).unwrap()),
            )
            .route("/m/body", Route::to([reads_body.clone()]).anonymous("/"))
            .request_body_timeout(Duration::from_millis(300))
    };
    let first = builder().build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(Server::new().serve(listener, first.clone(), std::future::pending()));
    let http = client();
    let key = [("x-api-key", "alice-secret")];
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        async move { fetch(&http, gw, path, headers).await.status }
    };
    const KEY: &[(&str, &str)] = &[("x-api-key", "alice-secret")];

    // /m/ok: three GETs and a POST within the quota of four, then one over it; two without
    // a key, which spend nothing.
    for _ in 0..3 {
        assert_eq!(get("/m/ok/x", KEY).await, 200);
    }
    let post = Request::post(format!("http://{gw}/m/ok/x"))
        .header(key[0].0, key[0].1)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = http.request(post).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert_eq!(get("/m/ok/x", KEY).await, 429);
    for _ in 0..2 {
        assert_eq!(get("/m/ok/x", &[]).await, 401);
    }
    // /m/fail: two requests of three attempts each open the breaker; the third gets 503.
    for _ in 0..2 {
        assert_eq!(get("/m/fail/x", KEY).await, 500);
    }
    assert_eq!(get("/m/fail/x", KEY).await, 503);
    // No route.
    for _ in 0..2 {
        assert_eq!(get("/nowhere", KEY).await, 404);
    }
    // /m/body: the client's faults: a malformed chunk (400), a stalled body (408), a reset
    // in the middle of an upload (499).
    let chunked = "POST /m/body/x HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n";
    let answer = raw(gw, &format!("{chunked}3\r\nabc\r\nzz\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let stalled = "POST /m/body/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n0123456789";
    let answer = raw(gw, stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let mut upload = tokio::net::TcpStream::connect(gw).await.unwrap();
    let head = "POST /m/body/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 1048576\r\n\r\n";
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    #[allow(
        deprecated,
        reason = "a zero linger never blocks: the close is a reset"
    )]
    upload.set_linger(Some(Duration::ZERO)).unwrap();
    drop(upload);

    // /m/slow: a request in flight holds a bulkhead slot; its client gives up.
    let waiting = tokio::spawn({
        let http = http.clone();
        async move { fetch(&http, gw, "/m/slow/x", KEY).await }
    });
    while slow_hits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let during = prometheus.render();
    waiting.abort();
    let _ = waiting.await;

    assert_eq!(ok_hits.load(Ordering::SeqCst), 4);
    assert_eq!(fail_hits.load(Ordering::SeqCst), 6);
    let in_flight =
        |text: &str| prometheus_sample(text, "gateway_bulkhead_in_flight", &[("route", "/m/slow")]);
    assert_eq!(in_flight(&during), Some(1.0), "{during}");

    // The hung-up request is counted as 499 once the gateway sees the connection close.
    let mut text = prometheus.render();
    for _ in 0..200 {
        if in_flight(&text) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = prometheus.render();
    }
    assert_eq!(in_flight(&text), Some(0.0), "the slot came back: {text}");

    let requests = |route: &str, method: &str, status: &str| {
        prometheus_sample(
            &text,
            "gateway_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/m/ok", "GET", "200"), Some(3.0), "{text}");
    assert_eq!(requests("/m/ok", "POST", "200"), Some(1.0));
    assert_eq!(requests("/m/ok", "GET", "429"), Some(1.0));
    assert_eq!(requests("/m/ok", "GET", "401"), Some(2.0));
    assert_eq!(requests("/m/fail", "GET", "500"), Some(2.0));
    assert_eq!(requests("/m/fail", "GET", "503"), Some(1.0));
    assert_eq!(requests("", "GET", "404"), Some(2.0));
    assert_eq!(requests("/m/slow", "GET", "499"), Some(1.0));
    assert_eq!(requests("/m/body", "POST", "400"), Some(1.0));
    assert_eq!(requests("/m/body", "POST", "408"), Some(1.0));
    assert_eq!(requests("/m/body", "POST", "499"), Some(1.0), "{text}");

    let rejections = |route: &str, reason: &str| {
        prometheus_sample(
            &text,
            "gateway_rejections_total",
            &[("route", route), ("reason", reason)],
        )
    };
    assert_eq!(rejections("/m/ok", "rate_limit"), Some(1.0));
    assert_eq!(rejections("/m/ok", "auth"), Some(2.0));
    assert_eq!(rejections("/m/fail", "circuit_breaker"), Some(1.0));
    assert_eq!(rejections("", "no_route"), Some(2.0));
    assert_eq!(rejections("/m/body", "bad_request"), Some(1.0));
    assert_eq!(rejections("/m/body", "request_body_timeout"), Some(1.0));
    assert_eq!(
        rejections("/m/body", "upstream"),
        None,
        "never the upstream's"
    );
    assert_eq!(
        rejections("/m/fail", "upstream"),
        None,
        "the upstream's own 500s are no rejection"
    );

    let route = |name: &str, route: &str| prometheus_sample(&text, name, &[("route", route)]);
    assert_eq!(route("gateway_retries_total", "/m/fail"), Some(4.0));
    assert_eq!(route("gateway_circuit_breaker_state", "/m/fail"), Some(1.0));
    assert_eq!(route("gateway_bulkhead_in_flight", "/m/ok"), Some(0.0));
    // One sample per client request at the route, per attempt at the upstream.
    let requests_timed = |r: &str| route("gateway_request_duration_seconds_count", r);
    assert_eq!(requests_timed("/m/ok"), Some(7.0));
    assert_eq!(requests_timed("/m/fail"), Some(3.0));
    let attempts_timed = |r: &str| route("gateway_upstream_duration_seconds_count", r);
    assert_eq!(attempts_timed("/m/ok"), Some(4.0));
    assert_eq!(attempts_timed("/m/fail"), Some(6.0));
    // A reload that keeps the breaker's state keeps its gauge; a fresh breaker is closed.
    let state = || {
        prometheus_sample(
            &prometheus.render(),
            "gateway_circuit_breaker_state",
            &[("route", "/m/fail")],
        )
    };
    let _reloaded = builder().keep_state_of(&first).build().unwrap();
    assert_eq!(state(), Some(1.0));
    let _fresh = builder().build().unwrap();
    assert_eq!(state(), Some(0.0));
    // Nothing keyed by anything a client chose.
    assert!(!text.contains("alice"), "{text}");
    assert!(!text.contains("nowhere"), "{text}");
}
