//! The bulkhead through real sockets: in the gateway (a cap on what reaches the upstream at
//! once, streamed bodies counted until they end, slots back when a client hangs up) and
//! alone in axum.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::bulkhead::BulkheadLayer;

use common::gauge::{self, Answer, client, fetch, serve_gateway};
use common::upstream::{self, pattern};
use common::{raw_request, read_head, serve_axum};

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Checks everything a bulkhead `429` carries.
fn assert_bulkhead_full(res: &Answer) {
    assert_eq!(res.status, 429, "{}", res.text());
    assert!(
        res.headers.get("retry-after").is_none(),
        "no Retry-After: nobody knows when a slot frees up"
    );
    let p = res.problem();
    assert_eq!(p["status"], 429);
    assert!(p["correlation_id"].is_string(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_flood_never_has_more_than_the_cap_at_the_upstream() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 20;
    const CAP: usize = 4;
    let (up, seen) = gauge::start().await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(CAP))))
            .await;

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                let client = client();
                let (mut admitted, mut refused) = (0usize, 0usize);
                for i in 0..PER_TASK {
                    // Held 20 to 50 ms, varied so the requests overlap unevenly.
                    let ms = 20 + (task * 7 + i * 13) % 31;
                    let res = fetch(&client, gw, &format!("/api/hold?ms={ms}"), &[]).await;
                    match res.status.as_u16() {
                        200 => {
                            assert_eq!(res.text(), format!("held {ms}"));
                            admitted += 1;
                        }
                        429 => {
                            assert_bulkhead_full(&res);
                            refused += 1;
                            // A short pause, so the flood lasts and keeps overlapping.
                            tokio::time::sleep(Duration::from_millis(3 + (i % 4) as u64)).await;
                        }
                        other => panic!("unexpected {other}: {}", res.text()),
                    }
                }
                (admitted, refused)
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.unwrap();
        admitted += a;
        refused += r;
    }
    eprintln!(
        "{admitted} admitted, {refused} refused in {:?}; at most {} at the upstream at once",
        started.elapsed(),
        seen.peak()
    );
    assert_eq!(admitted + refused, TASKS * PER_TASK);
    assert!(seen.peak() <= CAP, "{} in flight at once", seen.peak());
    assert!(
        admitted >= 1 && refused >= 1,
        "{admitted} admitted, {refused} refused"
    );
    assert_eq!(
        seen.hits(),
        admitted,
        "a refused request never reaches the upstream"
    );
    assert_eq!(seen.in_flight(), 0);

    // Every slot came back: CAP requests at once all get through.
    let together: Vec<_> = (0..CAP)
        .map(|_| tokio::spawn(async move { fetch(&client(), gw, "/api/hold?ms=300", &[]).await }))
        .collect();
    for res in together {
        let res = res.await.unwrap();
        assert_eq!((res.status.as_u16(), res.text()), (200, "held 300"));
    }
    assert!(seen.peak() <= CAP, "{} in flight at once", seen.peak());
    assert_eq!(seen.hits(), admitted + CAP);
}

/// Reads a response head, one byte at a time, so nothing of the body is consumed.
/// Sends `GET {target}` on a connection of its own and reads the head and `body_bytes` bytes
/// of the body (chunked framing included); the stream stays open.
async fn start_download(gw: SocketAddr, target: &str, body_bytes: usize) -> TcpStream {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = vec![0u8; body_bytes];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body))
        .await
        .expect("the body starts flowing")
        .unwrap();
    stream
}

async fn get(gw: SocketAddr, target: &str) -> Answer {
    fetch(&client(), gw, target, &[]).await
}

/// Polls `target` until it is admitted (2 s at most); every answer before that must be the
/// bulkhead's 429. Returns how long it took.
async fn admitted_within_2s(gw: SocketAddr, target: &str) -> Duration {
    let started = Instant::now();
    loop {
        let res = get(gw, target).await;
        if res.status == 200 {
            return started.elapsed();
        }
        assert_bulkhead_full(&res);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the slot did not come back within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_holds_its_slot_until_the_client_hangs_up() {
    let (up, rec) = upstream::start(false).await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(1)))).await;

    // A streams 64 MiB but reads only the head and 64 KiB of it: its slot is taken.
    let a = start_download(gw, "/api/download?mib=64", 64 * 1024).await;
    for _ in 0..3 {
        assert_bulkhead_full(&get(gw, "/api/ping").await);
    }
    let raw = raw_request(
        gw,
        "GET /api/ping HTTP/1.1\nHost: gw\nConnection: close",
        b"",
    )
    .await;
    assert_eq!(raw.status, 429);
    assert!(raw.headers.get("retry-after").is_none());
    assert_eq!(
        rec.requests().len(),
        1,
        "the refused requests never reached the upstream"
    );
    let produced = rec.produced.load(Ordering::SeqCst);
    assert!(
        produced < 64 << 20,
        "the download is stalled, not finished: {produced}"
    );

    // A hangs up mid-stream: its slot comes back.
    drop(a);
    let took = admitted_within_2s(gw, "/api/ping").await;
    eprintln!("slot back {took:?} after the client hung up");
    assert!(
        rec.produced.load(Ordering::SeqCst) < 64 << 20,
        "the upstream stream was cut, not drained"
    );
    assert_eq!(rec.last().uri, "/ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_holds_its_slot_and_a_hang_up_cancels_it_upstream() {
    let (up, seen) = gauge::start().await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(1)))).await;

    // The upstream drips 8 bytes every 30 ms and never ends; A reads the first chunk.
    let a = start_download(gw, "/api/drip?ms=30", 8).await;
    assert_eq!(seen.in_flight(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_bulkhead_full(&get(gw, "/api/ping").await);
    assert_eq!(seen.hits(), 1);

    drop(a);
    let took = admitted_within_2s(gw, "/api/ping").await;
    eprintln!("slot back {took:?} after the client hung up");
    for _ in 0..100 {
        if seen.drips_dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen.drips_dropped.load(Ordering::SeqCst),
        1,
        "the upstream stream is cancelled"
    );
    assert_eq!(seen.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_the_answer_returns_its_slot() {
    let (up, seen) = gauge::start().await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(1)))).await;

    let mut a = TcpStream::connect(gw).await.unwrap();
    a.write_all(b"GET /api/hold?ms=10000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..250 {
        if seen.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.in_flight(), 1, "the upstream holds A's request");
    assert_bulkhead_full(&get(gw, "/api/ping").await);

    drop(a);
    admitted_within_2s(gw, "/api/ping").await;
    assert_eq!(seen.in_flight(), 0, "the upstream request was cancelled");
    assert_eq!(seen.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_rate_limit_too_a_full_bulkhead_answers_without_retry_after() {
    let (up, seen) = gauge::start().await;
    let quota = tower_gateway::rate_limit::Quota::new(10, Duration::from_secs(60)).unwrap();
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        Route::to([url(up)]).rate_limit(quota).bulkhead(nz(1)),
    ))
    .await;

    let a = start_download(gw, "/api/drip?ms=30", 8).await;
    let res = get(gw, "/api/ping").await;
    assert_bulkhead_full(&res);
    // The limiter runs first: the refused request spent a token and says so.
    assert_eq!(res.headers["ratelimit-policy"], "\"default\";q=10;w=60");
    let limit = res.headers["ratelimit"].to_str().unwrap();
    assert!(limit.starts_with("\"default\";r=8;t="), "{limit}");
    assert!(
        res.problem()["detail"]
            .as_str()
            .unwrap()
            .contains("in flight")
    );

    drop(a);
    admitted_within_2s(gw, "/api/ping").await;
    assert_eq!(seen.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_read_to_the_end_frees_its_slot_at_once() {
    let (up, rec) = upstream::start(false).await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(1)))).await;
    let client = client();

    for _ in 0..3 {
        let res = fetch(&client, gw, "/api/download?mib=2", &[]).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), 2 << 20);
        assert!(
            res.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(i as u64))
        );
        // The body ended before its last bytes left the gateway: the slot is free now, on
        // this connection and on a new one.
        let res = fetch(&client, gw, "/api/ping", &[]).await;
        assert_eq!((res.status.as_u16(), res.text()), (200, "pong /ping"));
        let res = get(gw, "/api/ping").await;
        assert_eq!((res.status.as_u16(), res.text()), (200, "pong /ping"));
    }
    assert_eq!(rec.requests().len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_alone_in_an_axum_router() {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let (gate, count) = (Arc::clone(&release), Arc::clone(&entered));
    let layer = BulkheadLayer::new(nz(1));
    let app = axum::Router::new()
        .route(
            "/held",
            axum::routing::get(move || {
                let (gate, count) = (Arc::clone(&gate), Arc::clone(&count));
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    "released"
                }
            }),
        )
        .layer(layer.clone());
    let addr = serve_axum(app).await;
    let get = |path: &'static str| async move {
        raw_request(
            addr,
            &format!("GET {path} HTTP/1.1\nHost: t\nConnection: close"),
            b"",
        )
        .await
    };

    let first = tokio::spawn(get("/held"));
    for _ in 0..250 {
        if entered.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "the first request is held"
    );
    assert_eq!(layer.in_flight(), 1);

    // Refused at once, while the first is still held: never queued behind it.
    let started = Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(2), get("/held"))
        .await
        .expect("a full bulkhead answers at once");
    let took = started.elapsed();
    assert_eq!(second.status, 429);
    assert!(second.headers.get("retry-after").is_none());
    assert_eq!(second.headers["content-type"], "application/problem+json");
    let p: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(
        (p["status"].as_u64(), p["instance"].as_str()),
        (Some(429), Some("/held"))
    );
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "the 429 never ran the handler"
    );
    assert!(!first.is_finished(), "the first is still held");
    eprintln!("429 after {took:?}");

    release.notify_one();
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the first finishes once released")
        .unwrap();
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"released"[..])
    );
    assert_eq!(layer.in_flight(), 0);

    // The slot is free again.
    release.notify_one(); // lets the next one through as soon as it arrives
    let third = get("/held").await;
    assert_eq!(
        (third.status, third.body.as_slice()),
        (200, &b"released"[..])
    );
    assert_eq!(entered.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_slot_until_the_tunnel_closes() {
    let (up, _rec) = upstream::start(false).await;
    let gw =
        serve_gateway(Gateway::builder().route("/api", Route::to([url(up)]).bulkhead(nz(1)))).await;

    let mut ws = TcpStream::connect(gw).await.unwrap();
    ws.write_all(
        b"GET /api/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The tunnel works: bytes come back.
    ws.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut echo))
        .await
        .expect("the tunnel echoes")
        .unwrap();
    assert_eq!(&echo, b"ping");

    // The 101's empty body has ended, but the tunnel still holds the only slot.
    for _ in 0..3 {
        assert_bulkhead_full(&get(gw, "/api/ping").await);
    }

    drop(ws);
    let took = admitted_within_2s(gw, "/api/ping").await;
    eprintln!("slot back {took:?} after the tunnel closed");
}
