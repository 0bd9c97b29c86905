//! The gateway's proxy path through real sockets: routing, forwarding headers, failures,
//! timeouts and cancellation, hop-by-hop and correlation IDs end to end, upgrades, streaming
//! and bad input.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_gateway::builder::{Gateway, GatewayBuilder, Route};
use tower_gateway::forwarded::TrustedProxies;
use tower_gateway::proxy::{ProxyClientBuilder, ProxyError};
use tower_gateway::server::Server;

use common::upstream::{self, checksum, pattern};
use common::{RawResponse, raw_request, read_head};

/// Serves `builder`'s gateway on `listener`; returns its address.
async fn serve_on(listener: TcpListener, builder: GatewayBuilder) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let gateway = builder.build().unwrap();
    tokio::spawn(
        Server::new()
            .header_read_timeout(Duration::from_millis(800))
            .serve(listener, gateway, std::future::pending()),
    );
    addr
}

/// A test upstream behind a gateway with the one route `/api` to it.
/// Returns the gateway's address, the upstream's, and what the upstream records.
async fn one_route() -> (SocketAddr, SocketAddr, std::sync::Arc<upstream::Record>) {
    let (up, rec) = upstream::start(false).await;
    let gw = serve(Gateway::builder().route("/api", Route::to([url(up)]))).await;
    (gw, up, rec)
}

async fn serve(builder: GatewayBuilder) -> SocketAddr {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), builder).await
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn get(gw: SocketAddr, target: &str, extra: &str) -> RawResponse {
    let head = format!("GET {target} HTTP/1.1\nHost: gw.test\nConnection: close\n{extra}");
    raw_request(gw, &head, b"").await
}

fn body(res: &RawResponse) -> String {
    String::from_utf8(res.body.clone()).unwrap()
}

fn problem(res: &RawResponse) -> serde_json::Value {
    assert_eq!(res.headers["content-type"], "application/problem+json");
    serde_json::from_slice(&res.body).unwrap()
}

#[tokio::test]
async fn routes_by_longest_prefix_on_segment_boundaries_and_strips_with_query() {
    let (a, rec_a) = upstream::start(false).await;
    let (b, rec_b) = upstream::start(false).await;
    let gw = serve(
        Gateway::builder()
            .route("/api/a", Route::to([url(a)]))
            .route("/api", Route::to([url(b)]).strip_prefix(false)),
    )
    .await;

    let res = get(gw, "/api/a/ping?x=1&y=%20z", "").await;
    assert_eq!(
        (res.status, body(&res)),
        (200, "pong /ping?x=1&y=%20z".into())
    );
    assert_eq!(rec_a.last().uri, "/ping?x=1&y=%20z");

    let res = get(gw, "/api/a", "").await;
    assert_eq!(
        body(&res),
        "pong /",
        "the bare prefix reaches the upstream as /"
    );
    let res = get(gw, "/api/a?q=1", "").await;
    assert_eq!(body(&res), "pong /?q=1");

    let res = get(gw, "/api/ab/x", "").await;
    assert_eq!(body(&res), "pong /api/ab/x", "/api/ab is not under /api/a");
    assert_eq!(rec_b.last().uri, "/api/ab/x");

    let res = get(gw, "/nothing/here", "X-Correlation-Id: nf-1\n").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.headers["x-correlation-id"], "nf-1");
    let p = problem(&res);
    assert_eq!(
        (p["status"].as_u64(), p["correlation_id"].as_str()),
        (Some(404), Some("nf-1"))
    );
    assert_eq!(
        rec_a.requests().len() + rec_b.requests().len(),
        4,
        "a 404 reaches no upstream"
    );
}

#[tokio::test]
async fn several_upstreams_take_turns() {
    let (a, rec_a) = upstream::start(false).await;
    let (b, rec_b) = upstream::start(false).await;
    let gw = serve(Gateway::builder().route("/api", Route::to([url(a), url(b)]))).await;
    for _ in 0..6 {
        assert_eq!(get(gw, "/api/ping", "").await.status, 200);
    }
    assert_eq!((rec_a.requests().len(), rec_b.requests().len()), (3, 3));
}

#[tokio::test]
async fn host_and_forwarded_headers_reach_the_upstream() {
    let (gw, up, rec) = one_route().await;
    let res = get(
        gw,
        "/api/echo",
        "X-Forwarded-For: 198.51.100.7\nX-Forwarded-Proto: https\nX-Forwarded-Host: forged.test\n",
    )
    .await;
    assert_eq!(res.status, 200);
    let seen = rec.last().headers;
    assert_eq!(seen["host"], up.to_string());
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(
        seen["x-forwarded-proto"], "http",
        "an untrusted peer's proto is replaced"
    );
    assert_eq!(
        seen["x-forwarded-host"], "gw.test",
        "an untrusted peer's host is replaced"
    );
}

#[tokio::test]
async fn a_trusted_peer_keeps_its_forwarded_proto_and_host() {
    let (up, rec) = upstream::start(false).await;
    let trusted = TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]);
    let gw = serve(
        Gateway::builder()
            .trusted_proxies(trusted)
            .route("/api", Route::to([url(up)])),
    )
    .await;
    get(
        gw,
        "/api/echo",
        "X-Forwarded-Proto: https\nX-Forwarded-Host: public.test\n",
    )
    .await;
    let seen = rec.last().headers;
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "public.test");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn correlation_id_and_hop_by_hop_end_to_end() {
    let (gw, _, rec) = one_route().await;
    let res = get(
        gw,
        "/api/hop",
        "X-Correlation-Id: e2e-1\nConnection: close, x-client-hop\nX-Client-Hop: 1\nKeep-Alive: 5\nTE: gzip\nProxy-Authorization: Basic eA==\n",
    )
    .await;
    assert_eq!(res.status, 200);
    // The upstream's own correlation header is replaced; its hop-by-hop headers are gone.
    assert_eq!(res.headers["x-correlation-id"], "e2e-1");
    assert_eq!(res.headers["x-end-to-end"], "kept");
    for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!res.headers.contains_key(gone), "{gone} reached the client");
    }
    let seen = rec.last().headers;
    assert_eq!(seen["x-correlation-id"], "e2e-1");
    for gone in ["x-client-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    // hyper's own connection management header for the upstream hop is fine; the client's is gone.
    for value in seen.get_all("connection") {
        assert!(!value.to_str().unwrap().contains("x-client-hop"));
    }

    // A made-up ID goes upstream and comes back.
    get(gw, "/api/ping", "").await;
    let sent = rec.last().headers["x-correlation-id"].clone();
    assert_eq!(sent.len(), 36);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_with_a_proxy_error() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = serve(Gateway::builder().route("/api", Route::to([url(dead)]))).await;
    let res = get(gw, "/api/ping", "X-Correlation-Id: dead-1\n").await;
    assert_eq!(res.status, 502);
    let p = problem(&res);
    assert_eq!(p["correlation_id"], "dead-1");
    assert_eq!(p["detail"], "the upstream could not be reached");

    // In process, the typed error rides along.
    let gateway = Gateway::<Full<Bytes>>::builder()
        .route("/api", Route::to([url(dead)]))
        .build()
        .unwrap();
    let res = tower::ServiceExt::oneshot(
        gateway,
        Request::get("/api/x").body(Full::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 502);
    assert!(res.extensions().get::<ProxyError>().unwrap().is_connect());
}

#[tokio::test]
async fn a_slow_upstream_gets_504_and_sees_the_cancellation() {
    let (up, rec) = upstream::start(false).await;
    let gw = serve(Gateway::builder().route(
        "/api",
        Route::to([url(up)]).timeout(Duration::from_millis(300)),
    ))
    .await;
    let started = tokio::time::Instant::now();
    let res = get(gw, "/api/slow?ms=5000", "X-Correlation-Id: late-1\n").await;
    assert_eq!(res.status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(problem(&res)["correlation_id"], "late-1");
    // The path the client sent, before the prefix was stripped; never the query.
    assert_eq!(problem(&res)["instance"], "/api/slow");
    wait_for(
        || rec.cancelled.load(Ordering::SeqCst) == 1,
        "the upstream request is cancelled",
    )
    .await;
    assert_eq!(rec.completed.load(Ordering::SeqCst), 0);

    // In time: passes.
    let res = get(gw, "/api/slow?ms=10", "").await;
    assert_eq!((res.status, body(&res)), (200, "slow done".into()));
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_upstream_request() {
    let (gw, _, rec) = one_route().await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(b"GET /api/slow?ms=10000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    wait_for(
        || rec.requests().len() == 1,
        "the request reaches the upstream",
    )
    .await;
    drop(stream);
    wait_for(
        || rec.cancelled.load(Ordering::SeqCst) == 1,
        "the upstream request is cancelled",
    )
    .await;
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_two_way_tunnel() {
    let (gw, _, rec) = one_route().await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"GET /api/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    let seen = rec.last().headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

    // A masked WebSocket text frame "hello", then raw bytes: whatever goes in comes back.
    let frame = [
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    for message in [&frame[..], b"second message, any bytes"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("the echo comes back through the tunnel")
            .unwrap();
        assert_eq!(echoed, message);
    }
}

/// A client whose sockets have small kernel buffers, talking HTTP/1.1 to `addr`.
async fn small_buffer_client(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A gateway whose sockets (listener and upstream client) have small kernel buffers.
async fn small_buffer_gateway(up: SocketAddr) -> SocketAddr {
    let client = ProxyClientBuilder::new()
        .send_buffer_size(64 * 1024)
        .recv_buffer_size(64 * 1024);
    serve_on(
        upstream::bind(true),
        Gateway::builder()
            .client(client)
            .route("/api", Route::to([url(up)])),
    )
    .await
}

const STREAM_MIB: u64 = 64;
/// Bytes that may sit between the two ends: the kernel's (small) socket buffers on both
/// hops plus hyper's buffers. Far below the 64 MiB that cross.
const IN_FLIGHT_BOUND: u64 = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_download_streams_intact_without_piling_up_in_the_gateway() {
    let (up, rec) = upstream::start(true).await;
    let gw = small_buffer_gateway(up).await;
    let mut client = small_buffer_client(gw).await;
    let req = Request::get(format!("/api/download?mib={STREAM_MIB}"))
        .header("host", "gw")
        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (mut len, mut sum, mut expected_sum, mut worst_gap) = (0u64, 0u64, 0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        for (i, b) in data.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(len + i as u64),
                "byte {} is corrupt",
                len + i as u64
            );
        }
        checksum(&mut sum, len, &data);
        len += data.len() as u64;
        worst_gap = worst_gap.max(rec.produced.load(Ordering::SeqCst) - len);
        if len % (4 << 20) < data.len() as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await; // a slow reader
        }
    }
    checksum(
        &mut expected_sum,
        0,
        &(0..len).map(pattern).collect::<Vec<_>>(),
    );
    assert_eq!(len, STREAM_MIB << 20);
    assert_eq!(sum, expected_sum);
    eprintln!("download: at worst {worst_gap} bytes in flight");
    assert!(
        worst_gap < IN_FLIGHT_BOUND,
        "{worst_gap} bytes were in flight at worst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_upload_streams_intact_without_piling_up_in_the_gateway() {
    let (up, rec) = upstream::start(true).await;
    let gw = small_buffer_gateway(up).await;
    let mut client = small_buffer_client(gw).await;
    let total = STREAM_MIB << 20;
    let (worst_tx, mut worst_rx) = tokio::sync::watch::channel(0u64);
    let rec_chunks = std::sync::Arc::clone(&rec);
    let chunks = futures_util::stream::unfold(0u64, move |offset| {
        let rec = std::sync::Arc::clone(&rec_chunks);
        let worst_tx = worst_tx.clone();
        async move {
            if offset >= total {
                return None;
            }
            // How far the sender is ahead of what the upstream has read.
            let gap = offset - rec.consumed.load(Ordering::SeqCst);
            worst_tx.send_modify(|worst| *worst = (*worst).max(gap));
            let len = (64 * 1024).min(total - offset);
            let chunk: Vec<u8> = (offset..offset + len).map(pattern).collect();
            Some((Ok(Frame::data(Bytes::from(chunk))), offset + len))
        }
    });
    let req = Request::post("/api/upload")
        .header("host", "gw")
        .header("content-length", total)
        .body(StreamBody::new(chunks).boxed())
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let mut expected_sum = 0;
    checksum(
        &mut expected_sum,
        0,
        &(0..total).map(pattern).collect::<Vec<_>>(),
    );
    assert_eq!(answer["len"], total);
    assert_eq!(answer["sum"], expected_sum);
    let worst = *worst_rx.borrow_and_update();
    eprintln!("upload: at worst {worst} bytes in flight");
    assert!(
        worst < IN_FLIGHT_BOUND,
        "{worst} bytes were in flight at worst"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clean_4xx() {
    let (gw, _, rec) = one_route().await;

    for target in ["/api/../etc/passwd", "/api/%2e%2e/x", "/api/a/.%2E/b"] {
        let res = get(gw, target, "").await;
        assert_eq!(res.status, 400, "{target}");
        assert_eq!(problem(&res)["status"], 400);
    }
    // Request targets that are no path.
    assert_eq!(
        raw_request(gw, "OPTIONS * HTTP/1.1\nHost: gw\nConnection: close", b"")
            .await
            .status,
        400
    );

    // Malformed request line and header: hyper answers 400 before a request exists.
    assert_eq!(raw_request(gw, "GARBAGE\n", b"").await.status, 400);
    assert_eq!(
        raw_request(gw, "GET / HTTP/1.1\nHost: gw\nBad Header Name: x", b"")
            .await
            .status,
        400
    );

    // Over 64 KiB of headers, and over 100 of them: 431.
    let big = format!(
        "GET /api/ping HTTP/1.1\nHost: gw\nX-Big: {}",
        "a".repeat(70 * 1024)
    );
    assert_eq!(raw_request(gw, &big, b"").await.status, 431);
    let many: String = (0..101).map(|i| format!("X-H{i}: v\n")).collect();
    let res = raw_request(
        gw,
        &format!("GET /api/ping HTTP/1.1\nHost: gw\n{many}"),
        b"",
    )
    .await;
    assert_eq!(res.status, 431);
    // Just under both limits is fine.
    let ok: String = (0..90)
        .map(|i| format!("X-H{i}: {}\n", "v".repeat(500)))
        .collect();
    let res = get(gw, "/api/ping", &ok).await;
    assert_eq!(res.status, 200);

    // Junk correlation IDs are replaced, never echoed.
    let res = get(
        gw,
        "/api/ping",
        "X-Correlation-Id: <script>alert(1)</script> x\n",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-correlation-id"].len(), 36);

    assert!(
        rec.requests().iter().all(|seen| !seen.uri.contains("..")),
        "no traversal reached the upstream"
    );
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_read_timeout() {
    let (gw, _, _) = one_route().await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(b"GET /api/ping HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap(); // never finished
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the gateway closes a connection whose head never completes"
    );
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn the_gateway_mounts_in_an_axum_router() {
    let (up, rec) = upstream::start(false).await;
    let gateway = Gateway::<axum::body::Body>::builder()
        .route("/api", Route::to([url(up)]))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/local", axum::routing::get(|| async { "served by axum" }))
        .fallback_service(gateway);
    let addr = common::serve_axum(app).await;

    let res = get(addr, "/local", "").await;
    assert_eq!((res.status, body(&res)), (200, "served by axum".into()));
    let res = get(addr, "/api/ping?q=1", "X-Correlation-Id: axum-1\n").await;
    assert_eq!((res.status, body(&res)), (200, "pong /ping?q=1".into()));
    assert_eq!(res.headers["x-correlation-id"], "axum-1");
    assert_eq!(rec.last().headers["x-correlation-id"], "axum-1");
    let res = get(addr, "/elsewhere", "").await;
    assert_eq!(res.status, 404);
    assert_eq!(problem(&res)["status"], 404);
}

#[tokio::test]
async fn auth_in_the_gateway_runs_after_routing_and_opens_anonymous_sub_paths() {
    let (up, rec) = upstream::start(false).await;
    let keys = tower_gateway::api_key::KeySet::new().key("alice", "alice-secret");
    let gw = serve(
        Gateway::builder()
            .auth(keys)
            .route("/api/a", Route::to([url(up)]).anonymous("/health"))
            .route(
                "/full",
                Route::to([url(up)]).strip_prefix(false).anonymous("/open"),
            ),
    )
    .await;

    let res = get(gw, "/api/a/ping", "X-Correlation-Id: auth-1\n").await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.headers["www-authenticate"],
        "ApiKey header=\"x-api-key\""
    );
    assert_eq!(problem(&res)["correlation_id"], "auth-1");
    assert_eq!(
        get(gw, "/api/a/ping", "X-Api-Key: wrong\n").await.status,
        401
    );
    assert_eq!(
        get(gw, "/nowhere", "").await.status,
        404,
        "routing answers first"
    );
    assert!(
        rec.requests().is_empty(),
        "nothing unauthenticated reached the upstream"
    );

    let res = get(gw, "/api/a/ping", "X-Api-Key: alice-secret\n").await;
    assert_eq!((res.status, body(&res)), (200, "pong /ping".into()));
    assert!(
        !rec.last().headers.contains_key("x-api-key"),
        "the key is not forwarded"
    );

    // Anonymous sub-paths are relative to the route prefix, stripped or not.
    assert_eq!(body(&get(gw, "/api/a/health", "").await), "pong /health");
    assert_eq!(
        body(&get(gw, "/full/open/x", "").await),
        "pong /full/open/x"
    );
    assert_eq!(get(gw, "/full/closed", "").await.status, 401);
    assert_eq!(get(gw, "/api/a/healthz", "").await.status, 401);
}

#[tokio::test]
async fn a_slow_upload_that_keeps_flowing_outlives_the_timeout() {
    use futures_util::StreamExt as _;
    let (up, _rec) = upstream::start(false).await;
    let gw = serve(
        Gateway::builder()
            .request_body_timeout(Duration::from_millis(1000))
            .route(
                "/api",
                Route::to([url(up)]).timeout(Duration::from_millis(600)),
            ),
    )
    .await;
    // Ten chunks, 150 ms apart: 1.5 s of upload under a 600 ms timeout.
    let chunks = futures_util::stream::unfold(0u64, |sent| async move {
        if sent == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let chunk: Vec<u8> = (sent * 100..sent * 100 + 100).map(pattern).collect();
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(chunk))),
            sent + 1,
        ))
    });
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/api/upload")
        .header("host", "gw")
        .body(StreamBody::new(chunks))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let mut expected = 0;
    checksum(
        &mut expected,
        0,
        &(0..1000).map(pattern).collect::<Vec<_>>(),
    );
    assert_eq!(
        (answer["len"].as_u64(), answer["sum"].as_u64()),
        (Some(1000), Some(expected))
    );

    // A stalled upload is cut after the request-body timeout, as the client's fault: one
    // chunk, then nothing gets a 408, never a 504.
    let stalled = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
        Bytes::from_static(b"x"),
    ))])
    .chain(futures_util::stream::pending());
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/api/upload")
        .header("host", "gw")
        .body(StreamBody::new(stalled))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("the gateway answers a stalled upload")
        .unwrap();
    assert_eq!(res.status(), 408);
    let problem: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(problem["status"], 408);
}

#[tokio::test]
async fn a_slow_download_that_keeps_flowing_outlives_the_timeout() {
    let (up, gauge) = common::gauge::start().await;
    let gw = serve(Gateway::builder().route(
        "/api",
        Route::to([url(up)]).timeout(Duration::from_millis(300)),
    ))
    .await;
    let client = common::gauge::client();
    let req = Request::get(format!("http://{gw}/api/drip?ms=50"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let started = tokio::time::Instant::now();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // 8 bytes every 50 ms: 30 chunks take 1.5 s at least, five times the timeout.
    let mut body = res.into_body();
    let mut got = Vec::new();
    while got.len() < 30 * 8 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the body keeps flowing")
            .expect("the body is not cut")
            .unwrap();
        got.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(got.chunks(8).all(|chunk| chunk == b"drip...."));
    // The client hangs up: the upstream stream is dropped.
    drop(body);
    wait_for(
        || gauge.drips_dropped.load(Ordering::SeqCst) == 1,
        "the upstream stream is cancelled",
    )
    .await;
}

#[tokio::test]
async fn connect_gets_405_and_never_reaches_the_upstream() {
    let (gw, _, rec) = one_route().await;
    for target in ["/api/tunnel", "127.0.0.1:22", "/nowhere"] {
        let head = format!("CONNECT {target} HTTP/1.1\nHost: gw.test\nConnection: close");
        let res = raw_request(gw, &head, b"").await;
        assert_eq!(res.status, 405, "CONNECT {target}: {res:?}");
        assert_eq!(
            res.headers["allow"],
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"
        );
        assert_eq!(problem(&res)["status"], 405);
    }
    assert!(rec.requests().is_empty(), "no CONNECT went upstream");
}

#[tokio::test]
async fn an_absolute_form_target_names_the_forwarded_host() {
    let (gw, _, _) = one_route().await;
    // The target says real.example; the Host line says otherwise (RFC 9112 §3.2.2).
    let res = get(gw, "http://real.example:8080/api/echo?x=1", "").await;
    assert_eq!(res.status, 200, "{res:?}");
    let seen: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-host"][0], "real.example:8080");
    assert_eq!(seen["uri"], "/echo?x=1");
    // In origin form the Host line is the client's host, as before.
    let res = get(gw, "/api/echo", "").await;
    let seen: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-host"][0], "gw.test");

    // The same on a route with retry, whose proxy hands the request's head back.
    let (up, _) = upstream::start(false).await;
    let gw = serve(Gateway::builder().route("/api", Route::to([url(up)]).retry(1))).await;
    let res = get(gw, "http://real.example:8080/api/echo", "").await;
    let seen: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-host"][0], "real.example:8080");
}

#[tokio::test]
async fn an_upgrade_an_http_1_0_client_asks_for_is_not_forwarded() {
    // Upgrade is HTTP/1.1's: an HTTP/1.0 request that asks for one is sent as a plain
    // request, so the upstream never switches protocols on a client that cannot follow.
    let (gw, _, rec) = one_route().await;
    let res = raw_request(
        gw,
        "GET /api/ws HTTP/1.0\nHost: gw\nConnection: Upgrade\nUpgrade: websocket\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13",
        b"",
    )
    .await;
    assert_ne!(res.status, 101, "{res:?}");
    assert!(
        res.status < 500,
        "never a 5xx for the client's request: {res:?}"
    );
    assert!(!rec.last().headers.contains_key("upgrade"));
}
