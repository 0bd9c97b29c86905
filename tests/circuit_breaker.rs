//! The circuit breaker in the gateway, through real sockets: upstream 5xx and unreachable
//! upstreams open it, 4xx never do, a success resets the count, an open circuit answers
//! without the upstream, and after the cooldown one probe decides (a lost probe included).
//! (The finer points of cooldowns and probes run on tokio's paused clock in the module's
//! unit tests.)

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower_gateway::builder::{Gateway, Route};

use common::gauge::{client, fetch, serve_gateway};
use common::switch::{self, Switch, eventually, retry_until};
use common::{read_head, serve_hyper};

/// An upstream answering the status in `status`, counting its hits.
async fn upstream(status: Arc<AtomicU16>, hits: Arc<AtomicUsize>) -> SocketAddr {
    serve_hyper(tower::service_fn(move |_req: Request<Incoming>| {
        let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = Response::new(Full::new(Bytes::from("upstream")));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    }))
    .await
}

/// A gateway whose one route, `/api`, opens its breaker after three failures for a minute,
/// in front of an upstream answering `status` (which the test may change), counting hits.
async fn guarded(status: u16) -> (Arc<AtomicU16>, Arc<AtomicUsize>, SocketAddr) {
    let status = Arc::new(AtomicU16::new(status));
    let hits = Arc::new(AtomicUsize::new(0));
    let up = upstream(status.clone(), hits.clone()).await;
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([format!("http://{up}")])
                .circuit_breaker(three_failures(), Duration::from_secs(60)),
        ),
    )
    .await;
    (status, hits, gw)
}

fn three_failures() -> NonZeroU32 {
    NonZeroU32::new(3).unwrap()
}

#[tokio::test]
async fn upstream_5xx_open_it_4xx_never_do_and_open_answers_without_the_upstream() {
    let (status, hits, gw) = guarded(404).await;
    let client = client();

    for _ in 0..5 {
        assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 404);
    }
    status.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        let res = fetch(&client, gw, "/api/x", &[]).await;
        assert_eq!(
            (res.status.as_u16(), res.text()),
            (500, "upstream"),
            "passed through"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 8);

    let res = fetch(&client, gw, "/api/x", &[("x-correlation-id", "cb-1")]).await;
    assert_eq!(res.status, 503);
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    let problem = res.problem();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["correlation_id"], "cb-1");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        8,
        "open: the upstream is not contacted"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_opens_it() {
    // A port nobody listens on: every attempt is a 502.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([format!("http://{addr}")])
                .circuit_breaker(three_failures(), Duration::from_secs(60)),
        ),
    )
    .await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 502);
    }
    assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 503);
}

#[tokio::test]
async fn a_failure_rate_from_the_config_opens_it_over_its_window() {
    // Half of the calls fail, interleaved, so consecutive failures never exceed one: only
    // the rate (0.5 over at least 6 calls) can open it.
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let up = upstream(status.clone(), hits.clone()).await;
    let config = tower_gateway::config::Config::from_toml_str(&format!(
        r#"
[[routes]]
prefix = "/api"
upstreams = ["http://{up}"]

[routes.circuit_breaker]
failure_rate = 0.5
window = "1m"
min_calls = 6
cooldown = "1m"
"#
    ))
    .unwrap();
    let gw = serve_gateway(config.gateway_builder().unwrap()).await;
    let client = client();
    for i in 0..5 {
        let code = if i % 2 == 0 { 500 } else { 200 };
        status.store(code, Ordering::SeqCst);
        assert_eq!(
            fetch(&client, gw, "/api/x", &[]).await.status.as_u16(),
            code
        );
    }
    // 3 failures in 5 calls: over the rate, but under the minimum of calls.
    status.store(404, Ordering::SeqCst);
    assert_eq!(
        fetch(&client, gw, "/api/x", &[]).await.status,
        404,
        "a 4xx is a success"
    );
    // 3 of 6 failed, but the rate is only checked when a failure is recorded.
    status.store(500, Ordering::SeqCst);
    assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 500);
    // 4 of 7: open.
    assert_eq!(hits.load(Ordering::SeqCst), 7);
    assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 503);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        7,
        "open: the upstream is not contacted"
    );
}

#[tokio::test]
async fn a_success_resets_the_count_of_consecutive_failures() {
    let (status, hits, gw) = guarded(500).await;
    let client = client();

    // 500, 500, 200, 500, 500: never three failures in a row.
    for code in [500, 500, 200, 500, 500] {
        status.store(code, Ordering::SeqCst);
        let res = fetch(&client, gw, "/api/x", &[]).await;
        assert_eq!((res.status.as_u16(), res.text()), (code, "upstream"));
    }
    // The third in a row opens it.
    let res = fetch(&client, gw, "/api/x", &[]).await;
    assert_eq!(res.status, 500);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

/// Sends `GET /api/held` on connections of its own until one is not answered at once with
/// the breaker's 503 but held by the upstream: the probe. Returns its connection, open.
async fn held_probe(gw: SocketAddr, upstream: &Switch) -> TcpStream {
    loop {
        let mut stream = TcpStream::connect(gw).await.unwrap();
        stream
            .write_all(b"GET /api/held HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        tokio::select! {
            head = read_head(&mut stream) => {
                assert!(head.starts_with("HTTP/1.1 503"), "{head}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            () = eventually(|| upstream.held() == 1, "the probe is held") => return stream,
        }
    }
}

#[tokio::test]
async fn after_the_cooldown_one_probe_goes_through_and_a_lost_probe_does_not_wedge_it() {
    let cooldown = Duration::from_secs(1);
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(Gateway::builder().route(
        "/api",
        Route::to([format!("http://{up}")]).circuit_breaker(NonZeroU32::new(1).unwrap(), cooldown),
    ))
    .await;
    let client = client();
    upstream.set_status(500);
    assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 500);

    // After the cooldown, one probe: held by the upstream while everyone else gets 503,
    // without Retry-After (nobody knows when the probe answers).
    let probe = held_probe(gw, &upstream).await;
    for _ in 0..5 {
        let res = fetch(&client, gw, "/api/x", &[]).await;
        assert_eq!(res.status, 503);
        assert!(
            res.headers.get("retry-after").is_none(),
            "{:?}",
            res.headers
        );
        assert_eq!(res.problem()["status"], 503);
    }
    assert_eq!(upstream.hits(), 2, "the first failure and the probe");

    // The probe's client hangs up: that counts as a failure and reopens the breaker for a
    // cooldown; it does not leave it half-open, refusing everyone for good.
    drop(probe);
    eventually(|| upstream.held() == 0, "the probe is cancelled upstream").await;
    upstream.set_status(200);
    let res = retry_until(
        || fetch(&client, gw, "/api/x", &[]),
        |res| {
            if res.status == 503 {
                assert!(
                    res.headers.contains_key("retry-after"),
                    "open again, with a cooldown: {:?}",
                    res.headers
                );
            }
            res.status != 503
        },
    )
    .await;
    // A new probe, which succeeds and closes it.
    assert_eq!((res.status.as_u16(), res.text()), (200, "upstream /x"));
    for _ in 0..3 {
        assert_eq!(fetch(&client, gw, "/api/x", &[]).await.status, 200);
    }
    assert_eq!(upstream.hits(), 6);
}
