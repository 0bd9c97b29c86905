//! The circuit breaker in the gateway, through real sockets: upstream 5xx and unreachable
//! upstreams open it, 4xx never do, and an open circuit answers without the upstream.
//! (Cooldowns and probes run on tokio's paused clock in the module's unit tests.)

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
use tower_gateway::builder::{Gateway, Route};

use common::gauge::{client, fetch, serve_gateway};
use common::serve_hyper;

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

fn three_failures() -> NonZeroU32 {
    NonZeroU32::new(3).unwrap()
}

#[tokio::test]
async fn upstream_5xx_open_it_4xx_never_do_and_open_answers_without_the_upstream() {
    let status = Arc::new(AtomicU16::new(404));
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
