//! Tail latency of `round_robin` against `least_in_flight` (and `least_in_flight` weighted by
//! peak-EWMA latency, the library's option) with one slow endpoint of three.
//!
//! Three upstreams on loopback: two answer after `FAST_MS`, one after `SLOW_MS`. The gateway
//! has one route per policy over the same three. A closed-loop load generator keeps
//! `CONCURRENCY` requests in flight and sends `REQUESTS` per policy, one policy after the
//! other (after a warm-up), and prints p50, p90, p99 and the slow endpoint's share. Everything
//! runs in this process on loopback, so the figures compare the policies with each other, not
//! with other gateways.
//!
//! Run with `cargo bench --bench tail_latency` (about 20 s); set `REQUESTS`, `CONCURRENCY`,
//! `FAST_MS` and `SLOW_MS` in the environment to change the shape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::server::Server;
use tower_gateway::upstream::{LeastInFlight, Policy};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// An upstream that answers `ok` after `delay`, counting its requests.
async fn upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let hits = Arc::clone(&counted);
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                hits.fetch_add(1, Ordering::Relaxed);
                async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// Sends `total` GETs to `url`, `concurrency` at a time; every latency, sorted.
async fn run(url: &str, total: usize, concurrency: usize) -> Vec<Duration> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), Arc::clone(&next), url.to_owned());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let started = Instant::now();
                let res = client
                    .request(Request::get(&url).body(Empty::new()).unwrap())
                    .await
                    .expect("the gateway answers");
                assert!(res.status().is_success(), "{}", res.status());
                res.into_body().collect().await.unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(latencies) = workers.join_next().await {
        all.extend(latencies.unwrap());
    }
    all.sort_unstable();
    all
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let requests = setting("REQUESTS", 4000) as usize;
    let concurrency = setting("CONCURRENCY", 32) as usize;
    let fast = Duration::from_millis(setting("FAST_MS", 1));
    let slow = Duration::from_millis(setting("SLOW_MS", 50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (slow_addr, slow_hits) = upstream(slow).await;
        let (a, _) = upstream(fast).await;
        let (b, _) = upstream(fast).await;
        let urls = [slow_addr, a, b].map(|addr| format!("http://{addr}"));
        let gateway = Gateway::builder()
            .route("/round_robin", Route::to(urls.clone()))
            .route(
                "/least_in_flight",
                Route::to(urls.clone()).balance(Policy::LeastInFlight(LeastInFlight::new())),
            )
            .route(
                "/least_in_flight+ewma",
                Route::to(urls).balance(Policy::LeastInFlight(
                    LeastInFlight::new()
                        .latency_weighted(Duration::from_millis(30), Duration::from_secs(10)),
                )),
            )
            .build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(Server::new().serve(listener, gateway, std::future::pending()));

        println!(
            "three upstreams (two answer in {fast:?}, one in {slow:?}), {concurrency} in flight, \
             {requests} requests per policy"
        );
        println!(
            "{:<21} {:>9} {:>9} {:>9} {:>9} {:>11}",
            "policy", "p50 ms", "p90 ms", "p99 ms", "max ms", "slow share"
        );
        for policy in ["round_robin", "least_in_flight", "least_in_flight+ewma"] {
            let url = format!("http://{addr}/{policy}/x");
            run(&url, requests / 10, concurrency).await; // warm-up: connections, estimates
            let before = slow_hits.load(Ordering::Relaxed);
            let latencies = run(&url, requests, concurrency).await;
            let share = (slow_hits.load(Ordering::Relaxed) - before) as f64 / requests as f64;
            println!(
                "{:<21} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.1}%",
                policy,
                quantile(&latencies, 0.50),
                quantile(&latencies, 0.90),
                quantile(&latencies, 0.99),
                quantile(&latencies, 1.0),
                share * 100.0
            );
        }
    });
}
