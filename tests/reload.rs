//! Hot reload through real sockets: a gateway swapped while clients hammer it loses no
//! request and serves the new routes at once; routes whose policies did not change keep
//! their rate-limit budgets, breaker state and bulkhead slots.
#![cfg(feature = "proxy")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower_gateway::builder::{Gateway, GatewayBuilder, Route};
use tower_gateway::rate_limit::Quota;
use tower_gateway::reload::{ReloadHandle, reloadable};
use tower_gateway::server::Server;

use common::gauge::{client, fetch};
use common::serve_hyper;

/// An upstream answering `status` with `name` after `delay`, counting its hits.
async fn upstream(name: &'static str, status: u16, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let addr = serve_hyper(tower::service_fn(move |_req: Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut res = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }
    }))
    .await;
    (format!("http://{addr}"), hits)
}

/// Serves `builder`'s gateway behind a reload handle.
async fn serve(builder: GatewayBuilder) -> (SocketAddr, ReloadHandle<Gateway>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (service, handle) = reloadable(builder.build().unwrap());
    tokio::spawn(Server::new().serve(listener, service, std::future::pending()));
    (addr, handle)
}

/// Builds `builder` as the successor of what `handle` serves and swaps it in.
fn reload(handle: &ReloadHandle<Gateway>, builder: GatewayBuilder) {
    handle.reload(builder.keep_state_of(&handle.current()).build().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_and_switch_at_once() {
    let (x, x_hits) = upstream("x", 200, Duration::ZERO).await;
    let (y, y_hits) = upstream("y", 200, Duration::ZERO).await;
    let to = |url: &str| Gateway::builder().route("/r", Route::to([url.to_owned()]));
    let (gw, handle) = serve(to(&x)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        loops.push(tokio::spawn(async move {
            let http = client();
            let mut answers = 0;
            // Bounded: 2,000 requests or until told to stop.
            while !stop.load(Ordering::SeqCst) && answers < 2_000 {
                let res = fetch(&http, gw, "/r/ping", &[]).await;
                assert_eq!(res.status, 200, "{}", res.text());
                assert!(matches!(res.text(), "x" | "y"), "{}", res.text());
                answers += 1;
            }
            answers
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        reload(&handle, to(if i % 2 == 0 { &y } else { &x }));
    }
    stop.store(true, Ordering::SeqCst);
    let mut answered = 0;
    for task in loops {
        answered += task.await.unwrap();
    }
    let (x_seen, y_seen) = (x_hits.load(Ordering::SeqCst), y_hits.load(Ordering::SeqCst));
    assert_eq!(x_seen + y_seen, answered, "every request answered once");
    assert!(x_seen > 0 && y_seen > 0, "x {x_seen}, y {y_seen}");

    // The last reload (i = 19) went to x: from now on, only x.
    let before = x_hits.load(Ordering::SeqCst);
    let http = client();
    for _ in 0..10 {
        assert_eq!(fetch(&http, gw, "/r/ping", &[]).await.text(), "x");
    }
    assert_eq!(x_hits.load(Ordering::SeqCst), before + 10);
    assert_eq!(y_hits.load(Ordering::SeqCst), y_seen);
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_old_gateway() {
    let (slow, _) = upstream("slow", 200, Duration::from_millis(300)).await;
    let (fast, _) = upstream("fast", 200, Duration::ZERO).await;
    let (gw, handle) = serve(Gateway::builder().route("/r", Route::to([slow]))).await;
    let in_flight = tokio::spawn(async move { fetch(&client(), gw, "/r/x", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    reload(&handle, Gateway::builder().route("/r", Route::to([fast])));
    assert_eq!(fetch(&client(), gw, "/r/x", &[]).await.text(), "fast");
    let old = in_flight.await.unwrap();
    assert_eq!((old.status.as_u16(), old.text()), (200, "slow"));
}

#[tokio::test]
async fn unchanged_policies_keep_their_state_and_changed_ones_start_anew() {
    let (ok, _) = upstream("ok", 200, Duration::ZERO).await;
    let (down, down_hits) = upstream("down", 500, Duration::ZERO).await;
    let (slow, _) = upstream("slow", 200, Duration::from_secs(30)).await;
    let quota = |n| Quota::new(n, Duration::from_secs(3600)).unwrap();
    let one = NonZeroUsize::new(1).unwrap();
    let gateway = |limit: u32, extra: bool| {
        let mut builder = Gateway::builder()
            .route("/limited", Route::to([ok.clone()]).rate_limit(quota(limit)))
            .route(
                "/breaker",
                Route::to([down.clone()])
                    .circuit_breaker(NonZeroU32::new(1).unwrap(), Duration::from_secs(600)),
            )
            .route("/one", Route::to([slow.clone()]).bulkhead(one));
        if extra {
            builder = builder.route("/extra", Route::to([ok.clone()]));
        }
        builder
    };
    let (gw, handle) = serve(gateway(3, false)).await;
    let http = client();

    // Spend two of three; open the breaker; hold the one bulkhead slot.
    for _ in 0..2 {
        assert_eq!(fetch(&http, gw, "/limited/x", &[]).await.status, 200);
    }
    assert_eq!(fetch(&http, gw, "/breaker/x", &[]).await.status, 500);
    assert_eq!(fetch(&http, gw, "/breaker/x", &[]).await.status, 503);
    let holding = tokio::spawn(async move { fetch(&client(), gw, "/one/x", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch(&http, gw, "/one/x", &[]).await.status, 429);

    // A reload that changes none of them (it adds a route): all three carry over.
    reload(&handle, gateway(3, true));
    assert_eq!(fetch(&http, gw, "/extra/x", &[]).await.status, 200);
    assert_eq!(fetch(&http, gw, "/limited/x", &[]).await.status, 200);
    assert_eq!(fetch(&http, gw, "/limited/x", &[]).await.status, 429);
    assert_eq!(fetch(&http, gw, "/breaker/x", &[]).await.status, 503);
    assert_eq!(
        down_hits.load(Ordering::SeqCst),
        1,
        "still open: no contact"
    );
    assert_eq!(
        fetch(&http, gw, "/one/x", &[]).await.status,
        429,
        "the old gateway's request still holds the slot"
    );

    // A reload that changes the quota: that budget starts anew; the rest still carry over.
    reload(&handle, gateway(5, true));
    for _ in 0..5 {
        assert_eq!(fetch(&http, gw, "/limited/x", &[]).await.status, 200);
    }
    assert_eq!(fetch(&http, gw, "/limited/x", &[]).await.status, 429);
    assert_eq!(fetch(&http, gw, "/breaker/x", &[]).await.status, 503);
    holding.abort();
}
