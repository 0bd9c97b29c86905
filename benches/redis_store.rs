//! A rate-limit decision in Redis against one in-process, per decision.
//!
//! Starts its own `redis-server` on a free loopback port (and stops it); without one on
//! `PATH` it says so and measures nothing. Rows:
//! - `local`: [`LocalStore::check`], the in-process default.
//! - `redis_sequential`: one [`RedisStore`] decision at a time, awaited: the round trip a
//!   request waits for.
//! - `redis_concurrent_64`: 64 tasks deciding at once over the backend's one multiplexed
//!   connection, which pipelines them; time per decision (the inverse of throughput).
//!
//! Keys rotate over 10,000 clients, so every decision reads and writes a key. Run with
//! `cargo bench --bench redis_store`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use tower_gateway::rate_limit::OnStoreError;
use tower_gateway::rate_limit::redis::{RedisBackend, RedisStore};
use tower_gateway::rate_limit::{Check, ClientId, Decision, LocalStore, Quota, RateLimitStore};

const KEYS: u32 = 10_000;
const CONCURRENCY: u64 = 64;

/// A `redis-server` child on a free port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { child, port };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(i: u32) -> ClientId {
    ClientId::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i % KEYS))))
}

async fn decide<St: RateLimitStore<ClientId>>(store: &St, key: &ClientId) -> Decision {
    match store.check(Some(key), true) {
        Check::Ready(decision) => decision,
        Check::Pending(decision) => decision.await,
    }
}

fn redis_store(c: &mut Criterion) {
    let Some(server) = Server::start() else {
        eprintln!("redis_store: no redis-server on PATH; nothing measured");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Plenty: nothing is refused during the run.
    let quota = Quota::new(1_000_000_000, Duration::from_secs(60)).unwrap();
    let redis: RedisStore<ClientId> = {
        let _entered = runtime.enter();
        RedisBackend::builder(format!("redis://127.0.0.1:{}", server.port))
            .timeout(Duration::from_secs(1))
            .on_error(OnStoreError::Deny)
            .connect()
            .unwrap()
            .store("bench", quota)
    };
    let local = LocalStore::<ClientId>::new(quota);
    // Connect and load the script before measuring.
    assert!(matches!(
        runtime.block_on(decide(&redis, &client(0))),
        Decision::Allow { .. }
    ));

    let mut group = c.benchmark_group("rate_limit_decision");
    group.measurement_time(Duration::from_secs(5));
    let mut i = 0u32;
    group.bench_function("local", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(local.decide(Some(&client(i)), true))
        })
    });
    group.bench_function("redis_sequential", |b| {
        b.to_async(&runtime).iter(|| {
            i = i.wrapping_add(1);
            let key = client(i);
            let redis = &redis;
            async move {
                let decision = decide(redis, &key).await;
                assert!(matches!(decision, Decision::Allow { .. }), "{decision:?}");
            }
        })
    });
    let redis = std::sync::Arc::new(redis);
    group.bench_function("redis_concurrent_64", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(CONCURRENCY);
            runtime.block_on(async {
                let started = Instant::now();
                let tasks: Vec<_> = (0..CONCURRENCY)
                    .map(|task| {
                        let redis = std::sync::Arc::clone(&redis);
                        tokio::spawn(async move {
                            for n in 0..per_task {
                                let key = client((task * per_task + n) as u32);
                                let decision = decide(&*redis, &key).await;
                                assert!(matches!(decision, Decision::Allow { .. }));
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                // Per decision made, scaled to the `iters` criterion asked for.
                started
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * CONCURRENCY) as f64)
            })
        })
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, redis_store);
criterion_main!(benches);
