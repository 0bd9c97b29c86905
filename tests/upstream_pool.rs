//! Upstream pools through real sockets: outlier ejection, active health checks, the
//! balancing policies, failing open and closed, retries to another endpoint, and state kept
//! over a reload.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::server::Server;
use tower_gateway::upstream::{
    ActiveHealth, HashKey, LeastInFlight, PassiveHealth, Policy, WhenNoneHealthy,
};

use common::gauge::{HttpClient, client, fetch};
use common::switch::eventually;

/// The order requests reach any backend of a test, across backends.
#[derive(Default)]
struct Ledger {
    next: AtomicU64,
    log: Mutex<Vec<(u64, usize)>>,
}

/// A test upstream that can be killed (its port then refuses connections, and its open
/// connections close) and started again on the same port.
struct Backend {
    id: usize,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    health: Arc<AtomicU16>,
    delay: Duration,
    ledger: Arc<Ledger>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Backend {
    async fn start(id: usize, ledger: &Arc<Ledger>) -> Arc<Self> {
        Self::start_slow(id, ledger, Duration::ZERO).await
    }

    /// `count` backends, with the ids 0 to `count - 1`.
    async fn start_all(count: usize, ledger: &Arc<Ledger>) -> Vec<Arc<Self>> {
        let mut backends = Vec::with_capacity(count);
        for id in 0..count {
            backends.push(Self::start(id, ledger).await);
        }
        backends
    }

    async fn start_slow(id: usize, ledger: &Arc<Ledger>, delay: Duration) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Arc::new(Self {
            id,
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            health: Arc::new(AtomicU16::new(200)),
            delay,
            ledger: Arc::clone(ledger),
            tasks: Mutex::new(None),
        });
        backend.serve(listener);
        backend
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let me = Arc::clone(self);
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let me = Arc::clone(&me);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let me = Arc::clone(&me);
                    async move { Ok::<_, Infallible>(me.answer(req).await) }
                });
                // Dropped with this task: a killed backend's connections close.
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.tasks.lock().unwrap() = Some(tasks);
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/health" {
            let mut res = Response::new(Full::from("health"));
            *res.status_mut() = StatusCode::from_u16(self.health.load(Ordering::SeqCst)).unwrap();
            return res;
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        let seq = self.ledger.next.fetch_add(1, Ordering::SeqCst);
        self.ledger.log.lock().unwrap().push((seq, self.id));
        let _ = req.into_body().collect().await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut res = Response::new(Full::from(format!("backend {}", self.id)));
        *res.status_mut() = StatusCode::from_u16(self.status.load(Ordering::SeqCst)).unwrap();
        res
    }

    /// Stops it: the port refuses connections and open ones close.
    fn kill(&self) {
        drop(self.tasks.lock().unwrap().take());
    }

    /// Serves again on the same port.
    async fn restart(self: &Arc<Self>) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        self.serve(listener);
    }
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn serve(gateway: Gateway) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new().serve(listener, gateway, std::future::pending()));
    addr
}

async fn post(client: &HttpClient, addr: SocketAddr, target: &str) -> StatusCode {
    let req = Request::post(format!("http://{addr}{target}"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let status = res.status();
    let _ = res.into_body().collect().await;
    status
}

fn state_of(gateway: &Gateway, url: &str) -> String {
    let (_, pool) = gateway.pools().next().unwrap();
    pool.status()
        .endpoints
        .into_iter()
        .find(|endpoint| endpoint.url == url)
        .unwrap()
        .state
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_keeps_the_breaker_closed_and_comes_back() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(3, &ledger).await;
    let threshold = 3;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to(backends.iter().map(|b| b.url()))
                .passive_health(
                    PassiveHealth::new()
                        .consecutive_failures(threshold)
                        .base_ejection(Duration::from_secs(2))
                        .max_ejection(Duration::from_secs(5)),
                )
                .circuit_breaker(NonZeroU32::new(5).unwrap(), Duration::from_secs(30))
                .retry(2),
        )
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let client = client();
    for _ in 0..9 {
        assert_eq!(post(&client, addr, "/api/x").await, StatusCode::OK);
    }
    backends[1].kill();
    // Mid-run: POSTs are not retried, so each attempt on the dead one is a 502 ...
    let mut failed = 0;
    for _ in 0..60 {
        let status = post(&client, addr, "/api/x").await;
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_GATEWAY,
            "{status}: never a 503, the breaker stays closed"
        );
        failed += usize::from(status == StatusCode::BAD_GATEWAY);
    }
    // ... and it is ejected after `threshold` of them: no request goes to it after that.
    assert_eq!(
        failed, threshold as usize,
        "POSTs fail exactly the threshold's times"
    );
    assert_eq!(state_of(&gateway, &backends[1].url()), "ejected");
    // GETs are retried elsewhere; none fails.
    for _ in 0..20 {
        assert_eq!(
            fetch(&client, addr, "/api/x", &[]).await.status,
            StatusCode::OK
        );
    }
    // Back after its ejection: it takes traffic again.
    backends[1].restart().await;
    let before = backends[1].hits();
    eventually(
        || state_of(&gateway, &backends[1].url()) != "ejected",
        "the ejection ends",
    )
    .await;
    for _ in 0..9 {
        assert_eq!(post(&client, addr, "/api/x").await, StatusCode::OK);
    }
    assert!(
        backends[1].hits() >= before + 2,
        "the restarted endpoint gets its share again"
    );
    assert_eq!(state_of(&gateway, &backends[1].url()), "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failure_on_probation_ejects_again_for_longer() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(2, &ledger).await;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to(backends.iter().map(|b| b.url())).passive_health(
                PassiveHealth::new()
                    .consecutive_failures(2)
                    .base_ejection(Duration::from_secs(1))
                    .max_ejection(Duration::from_secs(10)),
            ),
        )
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let client = client();
    backends[0].status.store(503, Ordering::SeqCst);
    let mut failed = 0;
    for _ in 0..10 {
        failed += usize::from(post(&client, addr, "/api").await == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(failed, 2, "two 503s in a row eject it");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // Back on probation: the first failure ejects it at once, now for 2 x 1 s.
    let mut failed = 0;
    for _ in 0..10 {
        failed += usize::from(post(&client, addr, "/api").await == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(failed, 1, "one failure on probation ejects it");
    let (_, pool) = gateway.pools().next().unwrap();
    let status = &pool.status().endpoints[0];
    assert_eq!(status.state, "ejected");
    assert_eq!(status.ejections, 2);
    let left = status.ejected_for_secs.unwrap();
    assert!(
        left > 1.0 && left <= 2.0,
        "the second ejection is longer: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_check_marks_a_dead_endpoint_before_any_request() {
    let ledger = Arc::new(Ledger::default());
    let alive = Backend::start(0, &ledger).await;
    let dead = format!("http://{}", dead_addr().await);
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([alive.url(), dead.clone()]).active_health(
                ActiveHealth::new("/health")
                    .interval(Duration::from_millis(50))
                    .unhealthy_threshold(2),
            ),
        )
        .build()
        .unwrap();
    eventually(
        || state_of(&gateway, &dead) == "unhealthy",
        "the probes mark the dead endpoint",
    )
    .await;
    assert_eq!(state_of(&gateway, &alive.url()), "healthy");
    let addr = serve(gateway.clone()).await;
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            post(&client, addr, "/api").await,
            StatusCode::OK,
            "never the dead one"
        );
    }
    assert_eq!(alive.hits(), 20);
    let (_, pool) = gateway.pools().next().unwrap();
    assert!(pool.status().endpoints[1].probe_failures >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_probe_brings_an_endpoint_back() {
    let ledger = Arc::new(Ledger::default());
    let backend = Backend::start(0, &ledger).await;
    let other = Backend::start(1, &ledger).await;
    backend.health.store(500, Ordering::SeqCst);
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([backend.url(), other.url()]).active_health(
                ActiveHealth::new("/health")
                    .interval(Duration::from_millis(50))
                    .healthy_threshold(2)
                    .unhealthy_threshold(1),
            ),
        )
        .build()
        .unwrap();
    eventually(
        || state_of(&gateway, &backend.url()) == "unhealthy",
        "unhealthy",
    )
    .await;
    backend.health.store(204, Ordering::SeqCst);
    eventually(
        || state_of(&gateway, &backend.url()) == "healthy",
        "healthy again",
    )
    .await;
}

/// Sends `total` GETs to `target`, `concurrency` at a time.
async fn load(addr: SocketAddr, target: &str, total: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        let target = target.to_owned();
        workers.spawn(async move {
            let client = client();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let answer = fetch(&client, addr, &target, &[]).await;
                assert_eq!(answer.status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_sends_little_to_a_slow_endpoint_round_robin_a_third() {
    let ledger = Arc::new(Ledger::default());
    let slow = Backend::start_slow(0, &ledger, Duration::from_millis(200)).await;
    let fast = [
        Backend::start(1, &ledger).await,
        Backend::start(2, &ledger).await,
    ];
    let urls = [slow.url(), fast[0].url(), fast[1].url()];
    let gateway = Gateway::builder()
        .route(
            "/lif",
            Route::to(urls.clone()).balance(Policy::LeastInFlight(LeastInFlight::new())),
        )
        .route("/rr", Route::to(urls))
        .build()
        .unwrap();
    let addr = serve(gateway).await;
    load(addr, "/lif/x", 2000, 32).await;
    let share = slow.hits() as f64 / 2000.0;
    assert!(share < 0.10, "least_in_flight: the slow one got {share:.3}");
    let before = slow.hits();
    load(addr, "/rr/x", 2000, 32).await;
    let share = (slow.hits() - before) as f64 / 2000.0;
    assert!(
        (0.30..=0.37).contains(&share),
        "round_robin: the slow one got {share:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_the_weights_without_bursts() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(3, &ledger).await;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to_weighted([
                (backends[0].url(), 3),
                (backends[1].url(), 1),
                (backends[2].url(), 1),
            ])
            .balance(Policy::Weighted),
        )
        .build()
        .unwrap();
    let addr = serve(gateway).await;
    // One at a time, so the order the backends see is the order of the picks.
    let client = client();
    for _ in 0..500 {
        assert_eq!(
            fetch(&client, addr, "/api", &[]).await.status,
            StatusCode::OK
        );
    }
    let order: Vec<usize> = {
        let mut log = ledger.log.lock().unwrap().clone();
        log.sort_unstable();
        log.into_iter().map(|(_, id)| id).collect()
    };
    assert!(
        order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "never three in a row to one endpoint"
    );
    load(addr, "/api", 4500, 8).await;
    let total: usize = backends.iter().map(|b| b.hits()).sum();
    assert_eq!(total, 5000);
    for (backend, expected) in backends.iter().zip([0.6, 0.2, 0.2]) {
        let share = backend.hits() as f64 / total as f64;
        assert!(
            (share - expected).abs() <= 0.02,
            "backend {} got {share:.3}, expected {expected}",
            backend.id
        );
    }
}

/// Which backend each of `keys` lands on (by the body `backend N`), 16 at a time.
async fn placement(addr: SocketAddr, keys: usize) -> Vec<usize> {
    let mut workers = JoinSet::new();
    let chunk = keys.div_ceil(16);
    for worker in 0..16 {
        workers.spawn(async move {
            let client = client();
            let mut seen = Vec::new();
            for key in worker * chunk..((worker + 1) * chunk).min(keys) {
                let id = format!("user-{key}");
                let answer = fetch(&client, addr, "/api", &[("x-user-id", &id)]).await;
                assert_eq!(answer.status, StatusCode::OK);
                let backend: usize = answer.text()["backend ".len()..].parse().unwrap();
                seen.push((key, backend));
            }
            seen
        });
    }
    let mut placed = vec![usize::MAX; keys];
    while let Some(seen) = workers.join_next().await {
        for (key, backend) in seen.unwrap() {
            placed[key] = backend;
        }
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_each_key_on_one_endpoint_and_moves_only_the_keys_of_one_that_leaves() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(5, &ledger).await;
    let route = |backends: &[Arc<Backend>]| {
        Route::to(backends.iter().map(|b| b.url())).balance(Policy::Hash(HashKey::Header(
            http::HeaderName::from_static("x-user-id"),
        )))
    };
    let keys = 10_000;
    let gateway = Gateway::builder()
        .route("/api", route(&backends))
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let first = placement(addr, keys).await;
    let again = placement(addr, keys).await;
    assert_eq!(
        first, again,
        "the same key always lands on the same endpoint"
    );
    for id in 0..5 {
        let share = first.iter().filter(|&&b| b == id).count() as f64 / keys as f64;
        assert!(
            (0.1..0.3).contains(&share),
            "backend {id} holds {share:.3} of the keys"
        );
    }
    // One of five leaves (removed on a reload): only its keys move.
    let removed = 3;
    let rest: Vec<Arc<Backend>> = backends
        .iter()
        .filter(|b| b.id != removed)
        .cloned()
        .collect();
    let smaller = Gateway::builder()
        .route("/api", route(&rest))
        .keep_state_of(&gateway)
        .build()
        .unwrap();
    let addr = serve(smaller).await;
    let after = placement(addr, keys).await;
    for key in 0..keys {
        if first[key] == removed {
            assert_ne!(after[key], removed);
        } else {
            assert_eq!(after[key], first[key], "key {key} stayed where it was");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_sends_the_keys_of_an_ejected_endpoint_to_the_next_and_back_when_it_returns() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(5, &ledger).await;
    // A long ejection that only a passing probe ends, so no timing decides the test: the
    // probes of backend 2 fail (without ever making it unhealthy) until it is let back.
    backends[2].health.store(500, Ordering::SeqCst);
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to(backends.iter().map(|b| b.url()))
                .balance(Policy::Hash(HashKey::Header(
                    http::HeaderName::from_static("x-user-id"),
                )))
                .passive_health(
                    PassiveHealth::new()
                        .consecutive_failures(1)
                        .base_ejection(Duration::from_secs(60)),
                )
                .active_health(
                    ActiveHealth::new("/health")
                        .interval(Duration::from_millis(50))
                        .unhealthy_threshold(1_000_000),
                ),
        )
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let keys = 2_000;
    let first = placement(addr, keys).await;
    // Backend 2 answers 500 once and is ejected.
    backends[2].status.store(500, Ordering::SeqCst);
    let key = first.iter().position(|&b| b == 2).unwrap();
    let client = client();
    let answer = fetch(
        &client,
        addr,
        "/api",
        &[("x-user-id", &format!("user-{key}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    backends[2].status.store(200, Ordering::SeqCst);
    assert_eq!(state_of(&gateway, &backends[2].url()), "ejected");
    let during = placement(addr, keys).await;
    for key in 0..keys {
        if first[key] == 2 {
            assert_ne!(during[key], 2);
        } else {
            assert_eq!(
                during[key], first[key],
                "only the ejected endpoint's keys move"
            );
        }
    }
    assert_eq!(state_of(&gateway, &backends[2].url()), "ejected");
    backends[2].health.store(200, Ordering::SeqCst);
    eventually(
        || state_of(&gateway, &backends[2].url()) == "healthy",
        "a passing probe ends the ejection",
    )
    .await;
    let back = placement(addr, keys).await;
    assert_eq!(back, first, "its keys come back when it returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_down_open_uses_them_all_and_closed_answers_503() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(2, &ledger).await;
    for backend in &backends {
        backend.health.store(500, Ordering::SeqCst);
    }
    let checks = || {
        ActiveHealth::new("/health")
            .interval(Duration::from_millis(50))
            .unhealthy_threshold(1)
    };
    let urls = [backends[0].url(), backends[1].url()];
    let gateway = Gateway::builder()
        .route("/open", Route::to(urls.clone()).active_health(checks()))
        .route(
            "/closed",
            Route::to(urls)
                .active_health(checks())
                .when_none_healthy(WhenNoneHealthy::Closed),
        )
        .build()
        .unwrap();
    eventually(
        || {
            gateway.pools().all(|(_, pool)| {
                pool.status()
                    .endpoints
                    .iter()
                    .all(|endpoint| endpoint.state == "unhealthy")
            })
        },
        "every endpoint unhealthy",
    )
    .await;
    let addr = serve(gateway).await;
    let client = client();
    let before: usize = backends.iter().map(|b| b.hits()).sum();
    for _ in 0..4 {
        let answer = fetch(&client, addr, "/open", &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "fail open: used as if healthy"
        );
    }
    assert_eq!(backends.iter().map(|b| b.hits()).sum::<usize>(), before + 4);
    let answer = fetch(&client, addr, "/closed", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let problem = answer.problem();
    assert_eq!(problem["detail"], "no healthy upstream");
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        backends.iter().map(|b| b.hits()).sum::<usize>(),
        before + 4,
        "fail closed: nothing sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(3, &ledger).await;
    backends[0].status.store(500, Ordering::SeqCst);
    // Hashing sends the key to the same endpoint every time: only the retry's choice of
    // another one can save the request.
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to(backends.iter().map(|b| b.url()))
                .balance(Policy::Hash(HashKey::Header(
                    http::HeaderName::from_static("x-user-id"),
                )))
                .passive_health(None)
                .retry(1),
        )
        .build()
        .unwrap();
    let addr = serve(gateway).await;
    let client = client();
    let mut on_bad = 0;
    for key in 0..200 {
        let id = format!("user-{key}");
        let before = backends[0].hits();
        let answer = fetch(&client, addr, "/api", &[("x-user-id", &id)]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "key {key}: the retry went elsewhere"
        );
        on_bad += backends[0].hits() - before;
    }
    assert!(
        on_bad > 20,
        "some keys map to the failing endpoint: {on_bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_ejection() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(2, &ledger).await;
    let route = || {
        Route::to(backends.iter().map(|b| b.url())).passive_health(
            PassiveHealth::new()
                .consecutive_failures(1)
                .base_ejection(Duration::from_secs(30)),
        )
    };
    let old = Gateway::builder().route("/api", route()).build().unwrap();
    let addr = serve(old.clone()).await;
    let client = client();
    backends[0].status.store(502, Ordering::SeqCst);
    while state_of(&old, &backends[0].url()) != "ejected" {
        post(&client, addr, "/api").await;
    }
    backends[0].status.store(200, Ordering::SeqCst);
    let new = Gateway::builder()
        .route("/api", route())
        .keep_state_of(&old)
        .build()
        .unwrap();
    assert_eq!(state_of(&new, &backends[0].url()), "ejected");
    let (_, pool) = new.pools().next().unwrap();
    assert_eq!(pool.status().endpoints[0].ejections, 1);
    let addr = serve(new).await;
    let before = backends[0].hits();
    for _ in 0..10 {
        assert_eq!(post(&client, addr, "/api").await, StatusCode::OK);
    }
    assert_eq!(backends[0].hits(), before, "still ejected after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fault_never_ejects_an_endpoint() {
    let ledger = Arc::new(Ledger::default());
    let backends = Backend::start_all(2, &ledger).await;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to(backends.iter().map(|b| b.url()))
                .passive_health(PassiveHealth::new().consecutive_failures(1)),
        )
        .request_body_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    // Bodies cut short and malformed: 400s, the client's fault, on every endpoint.
    for _ in 0..6 {
        // Half-closed after 5 of the 100 bytes it announced.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let res = common::parse_response(&raw);
        assert_eq!(res.status, 400);
        let res = common::raw_request(
            addr,
            "POST /api HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nConnection: close",
            b"zz\r\njunk\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(res.status, 400);
    }
    // Bodies that stall (408) and bodies whose client resets mid-upload (499, read by nobody).
    for _ in 0..3 {
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
            .await
            .unwrap();
        let head = common::read_head(&mut stalled).await;
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        let mut reset = tokio::net::TcpStream::connect(addr).await.unwrap();
        reset
            .write_all(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A zero linger never blocks: the close sends a reset at once.
        #[allow(deprecated)]
        reset.set_linger(Some(Duration::ZERO)).unwrap();
        drop(reset);
    }
    eventually(
        || {
            let (_, pool) = gateway.pools().next().unwrap();
            pool.status().endpoints.iter().all(|e| e.in_flight == 0)
        },
        "every attempt has ended",
    )
    .await;
    for backend in &backends {
        assert_eq!(state_of(&gateway, &backend.url()), "healthy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_counts_against_the_endpoint() {
    let ledger = Arc::new(Ledger::default());
    let slow = Backend::start_slow(0, &ledger, Duration::from_secs(2)).await;
    let fast = Backend::start(1, &ledger).await;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([slow.url(), fast.url()])
                .timeout(Duration::from_millis(100))
                .passive_health(PassiveHealth::new().consecutive_failures(2)),
        )
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let client = client();
    let mut timeouts = 0;
    for _ in 0..12 {
        let status = post(&client, addr, "/api").await;
        timeouts += usize::from(status == StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(timeouts, 2, "two timeouts in a row eject the slow one");
    assert_eq!(state_of(&gateway, &slow.url()), "ejected");
}

fn in_flight_of(gateway: &Gateway) -> usize {
    let (_, pool) = gateway.pools().next().unwrap();
    pool.status().endpoints[0].in_flight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_counts_in_flight_until_its_response_body_ends() {
    let (upstream, switch) = common::switch::start().await;
    let gateway = Gateway::builder()
        .route("/api", Route::to([format!("http://{upstream}")]))
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    let download = common::switch::open_stream(addr, "/api/stream", &[]).await;
    assert_eq!(download.status, 200);
    assert_eq!(
        in_flight_of(&gateway),
        1,
        "the head is long gone; the body still flows"
    );
    assert_eq!(switch.streaming(), 1);
    drop(download);
    eventually(
        || in_flight_of(&gateway) == 0,
        "released when the body ends",
    )
    .await;
    let client = client();
    assert_eq!(
        fetch(&client, addr, "/api/x", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(in_flight_of(&gateway), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_is_not_the_endpoints_failure() {
    let ledger = Arc::new(Ledger::default());
    let slow = Backend::start_slow(0, &ledger, Duration::from_secs(1)).await;
    let other = Backend::start(1, &ledger).await;
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([slow.url(), other.url()])
                .passive_health(PassiveHealth::new().consecutive_failures(1)),
        )
        .build()
        .unwrap();
    let addr = serve(gateway.clone()).await;
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    }
    eventually(
        || in_flight_of(&gateway) == 0,
        "the hung-up requests are cancelled",
    )
    .await;
    assert!(slow.hits() >= 1);
    assert_eq!(state_of(&gateway, &slow.url()), "healthy");
}
