//! Rate limits shared in a real Redis (started by the test on a free loopback port) by
//! several gateway instances, each with its own connection, through real sockets: one
//! budget across instances, the failure policies while Redis is dead or stalled, and
//! sharing again once it is back.
//!
//! Without `redis-server` on the machine these tests skip with a loud notice, unless
//! `TOWER_GATEWAY_REQUIRE_REDIS=1` (as `.ci/run` sets), where they fail.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::extensions::Identity;
use tower_gateway::rate_limit::OnStoreError;
use tower_gateway::rate_limit::redis::RedisBackend;
use tower_gateway::rate_limit::{Check, ClientId, Decision, Quota, RateLimitStore};

use common::gauge::{self, Answer, HttpClient, client, fetch, serve_gateway};
use common::redis::{RedisServer, Reply};

/// The API keys every instance knows: `<id>-secret` for each id.
fn keys() -> KeySet {
    ["flood", "alice", "bob", "carol", "dave", "erin", "probe"]
        .into_iter()
        .fold(KeySet::new(), |keys, id| {
            keys.key(id, format!("{id}-secret"))
        })
}

fn key(id: &str) -> String {
    format!("{id}-secret")
}

/// The store timeout of the outage tests.
const SHORT: Duration = Duration::from_millis(100);

/// A backend as one gateway instance would make it: its own connection.
fn backend(redis: &RedisServer, on_error: OnStoreError, timeout: Duration) -> RedisBackend {
    RedisBackend::builder(redis.url())
        .timeout(timeout)
        .recheck(Duration::from_millis(100))
        .on_error(on_error)
        .key_prefix("test")
        .connect()
        .unwrap()
}

/// `instances` gateways on one upstream and one Redis, each with its own backend.
async fn instances(
    redis: &RedisServer,
    count: usize,
    quota: Quota,
    on_error: OnStoreError,
    timeout: Duration,
) -> (Vec<(SocketAddr, RedisBackend)>, Arc<gauge::Gauge>) {
    let (up, seen) = gauge::start().await;
    let mut gateways = Vec::new();
    for _ in 0..count {
        let backend = backend(redis, on_error, timeout);
        let addr = serve_gateway(
            Gateway::builder()
                .auth(keys())
                .rate_limit_store(backend.clone())
                .route(
                    "/api",
                    Route::to([format!("http://{up}")]).rate_limit(quota),
                ),
        )
        .await;
        gateways.push((addr, backend));
    }
    (gateways, seen)
}

/// The milliseconds until `key` expires in Redis.
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    match redis.query(&["PTTL", key]) {
        Reply::Integer(ttl) => ttl,
        other => panic!("PTTL {key}: {other:?}"),
    }
}

/// `r` of the response's `RateLimit` header.
fn remaining(res: &Answer) -> u32 {
    let value = res.headers["ratelimit"].to_str().unwrap();
    let (r, _t) = value
        .strip_prefix("\"default\";r=")
        .and_then(|rest| rest.split_once(";t="))
        .unwrap_or_else(|| panic!("RateLimit {value:?}"));
    r.parse().unwrap()
}

async fn get(client: &HttpClient, gw: SocketAddr, id: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let res = fetch(client, gw, "/api/ping", &[("x-api-key", &key(id))]).await;
    (res, started.elapsed())
}

/// Sends `id`'s requests round-robin over `gateways` until one is refused; returns how
/// many were admitted.
async fn spend(client: &HttpClient, gateways: &[(SocketAddr, RedisBackend)], id: &str) -> usize {
    for admitted in 0..1000 {
        let (gw, _) = gateways[admitted % gateways.len()];
        let (res, _) = get(client, gw, id).await;
        match res.status.as_u16() {
            200 => {}
            429 => return admitted,
            other => panic!("request {admitted} of {id}: {other} {}", res.text()),
        }
    }
    panic!("{id} was never limited");
}

/// Waits until every backend has made a decision in Redis again after an outage, sending
/// `probe`'s requests to drive the rechecks.
async fn until_shared_again(client: &HttpClient, gateways: &[(SocketAddr, RedisBackend)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (gw, backend) in gateways {
        loop {
            let before = backend.stats().decisions;
            let (res, _) = get(client, *gw, "probe").await;
            assert!(
                res.status == 200 || res.status == 503,
                "{} {}",
                res.status,
                res.text()
            );
            if backend.stats().decisions > before {
                break;
            }
            assert!(Instant::now() < deadline, "Redis was not picked up again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_one_budget_under_ten_thousand_concurrent_requests() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const REQUESTS: usize = 10_000;
    const TASKS: usize = 100;
    const QUOTA: u32 = 500;
    // 500 an hour: one request back every 7.2 s.
    let quota = Quota::new(QUOTA, Duration::from_secs(3600)).unwrap();
    // A generous timeout: this test is about sharing, on a loaded 2-core machine.
    let (gateways, seen) =
        instances(&redis, 3, quota, OnStoreError::Deny, Duration::from_secs(2)).await;
    let gateways = Arc::new(gateways);

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let gateways = Arc::clone(&gateways);
            tokio::spawn(async move {
                let client = client();
                let (mut admitted, mut limited) = (0usize, 0usize);
                let mut slowest = Duration::ZERO;
                for i in 0..REQUESTS / TASKS {
                    let (gw, _) = gateways[(task + i) % gateways.len()];
                    let (res, took) = get(&client, gw, "flood").await;
                    slowest = slowest.max(took);
                    match res.status.as_u16() {
                        200 => {
                            assert_eq!(res.text(), "pong /ping");
                            assert!(remaining(&res) < QUOTA);
                            admitted += 1;
                        }
                        429 => {
                            assert_eq!(remaining(&res), 0);
                            let retry: u64 = res.headers["retry-after"]
                                .to_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            assert!((1..=8).contains(&retry), "Retry-After {retry}");
                            limited += 1;
                        }
                        other => panic!("unexpected {other}: {}", res.text()),
                    }
                }
                (admitted, limited, slowest)
            })
        })
        .collect();
    let (mut admitted, mut limited, mut slowest) = (0, 0, Duration::ZERO);
    for task in tasks {
        let (a, l, s) = task.await.unwrap();
        admitted += a;
        limited += l;
        slowest = slowest.max(s);
    }
    let elapsed = started.elapsed();
    let errors: u64 = gateways.iter().map(|(_, b)| b.stats().errors).sum();
    eprintln!(
        "{REQUESTS} requests over 3 instances in {elapsed:?}: {admitted} admitted, {limited} \
         limited (bound {}), slowest {slowest:?}, store errors {errors}",
        common::budget_bound(quota, elapsed)
    );
    assert_eq!(admitted + limited, REQUESTS);
    assert_eq!(errors, 0, "Redis answered every decision");
    // One budget across the three instances.
    common::assert_one_budget(admitted, quota, elapsed);
    assert_eq!(
        seen.hits(),
        admitted,
        "the upstream saw exactly the admitted"
    );
    let decisions: u64 = gateways.iter().map(|(_, b)| b.stats().decisions).sum();
    assert_eq!(decisions, REQUESTS as u64);
    // The budget lives in Redis, under the prefix, the route and the identity, and expires.
    assert_eq!(
        redis.command(&["EXISTS", "test:/api:id:flood"]),
        ":1\r\n",
        "{}",
        redis.command(&["KEYS", "*"])
    );
    let ttl = pttl(&redis, "test:/api:id:flood");
    assert!(ttl > 0 && ttl <= 3_600_000, "PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_while_redis_is_dead_then_one_budget_again_after_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let quota = Quota::new(5, Duration::from_secs(3600)).unwrap();
    let (gateways, seen) = instances(&redis, 3, quota, OnStoreError::Allow, SHORT).await;
    let client = client();

    assert_eq!(
        spend(&client, &gateways, "alice").await,
        5,
        "one budget of 5"
    );

    redis.kill();
    // Alice is over her limit, but with Redis gone every instance admits, and no request
    // waits past the store's timeout (100 ms) by much.
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let (gw, _) = gateways[i % 3];
        let (res, took) = get(&client, gw, "alice").await;
        assert_eq!(res.status, 200, "fail open: {}", res.text());
        slowest = slowest.max(took);
    }
    eprintln!("slowest answer with Redis dead: {slowest:?}");
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    for (_, backend) in &gateways {
        let stats = backend.stats();
        assert!(stats.errors >= 1 && stats.fallbacks >= 20, "{stats:?}");
        assert!(!stats.healthy);
    }
    assert_eq!(seen.hits(), 5 + 60);

    redis.restart();
    until_shared_again(&client, &gateways).await;
    // A fresh Redis: Bob's budget is one again across the three instances.
    assert_eq!(spend(&client, &gateways, "bob").await, 5);
    for (gw, _) in &gateways {
        assert_eq!(get(&client, *gw, "bob").await.0.status, 429);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_within_the_timeout_while_redis_is_stalled() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let quota = Quota::new(100, Duration::from_secs(3600)).unwrap();
    let (gateways, seen) = instances(&redis, 2, quota, OnStoreError::Deny, SHORT).await;
    let client = client();
    assert_eq!(get(&client, gateways[0].0, "carol").await.0.status, 200);

    // SIGSTOP: the connection stays open and nothing answers.
    redis.pause();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (res, took) = get(&client, gateways[i % 2].0, "carol").await;
        assert_eq!(res.status, 503, "fail closed: {}", res.text());
        assert_eq!(
            res.headers["content-type"], "application/problem+json",
            "a problem answer"
        );
        assert_eq!(res.problem()["status"], 503);
        slowest = slowest.max(took);
    }
    eprintln!("slowest 503 with Redis stalled: {slowest:?}");
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    assert_eq!(
        seen.hits(),
        1,
        "a refused request never reaches the upstream"
    );

    redis.resume();
    until_shared_again(&client, &gateways).await;
    let (res, _) = get(&client, gateways[1].0, "carol").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(remaining(&res) < 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_limits_each_instance_alone_while_redis_is_dead() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let quota = Quota::new(3, Duration::from_secs(3600)).unwrap();
    let (gateways, _seen) = instances(&redis, 2, quota, OnStoreError::Local, SHORT).await;
    let client = client();
    assert_eq!(spend(&client, &gateways, "dave").await, 3);

    redis.kill();
    // Each instance now enforces the whole quota on its own.
    for (gw, _) in &gateways {
        for n in 0..3 {
            let (res, _) = get(&client, *gw, "erin").await;
            assert_eq!(res.status, 200, "request {n}: {}", res.text());
            assert_eq!(remaining(&res), 2 - n);
        }
        let (res, took) = get(&client, *gw, "erin").await;
        assert_eq!(res.status, 429, "{}", res.text());
        assert!(took < Duration::from_millis(1000));
    }
}

#[tokio::test]
async fn the_script_decides_like_the_local_store() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 3 per 3 s: one back a second.
    let quota = Quota::new(3, Duration::from_secs(3)).unwrap();
    let store = backend(&redis, OnStoreError::Deny, Duration::from_secs(2))
        .store::<ClientId>("unit", quota);
    let client = ClientId::Identity(Identity::new("frank"));
    assert_eq!(store.key_name(Some(&client)), b"test:unit:id:frank");
    let decide = async || match store.check(Some(&client), true) {
        Check::Pending(decision) => decision.await,
        Check::Ready(decision) => panic!("Redis decides asynchronously: {decision:?}"),
    };
    for left in [2, 1, 0] {
        let Decision::Allow { remaining, reset } = decide().await else {
            panic!("admitted");
        };
        assert_eq!(remaining, left);
        // The quota is whole again after (3 - left) seconds, less what already passed.
        let whole = Duration::from_secs(3 - u64::from(left));
        assert!(
            reset <= whole && reset > whole - Duration::from_millis(500),
            "{reset:?}"
        );
    }
    let Decision::Deny { retry_after, reset } = decide().await else {
        panic!("refused");
    };
    assert!(
        retry_after <= Duration::from_secs(1) && retry_after > Duration::from_millis(500),
        "{retry_after:?}"
    );
    assert!(reset <= Duration::from_secs(3) && reset > Duration::from_millis(2500));
    let ttl = pttl(&redis, "test:unit:id:frank");
    assert!(
        (2500..=3000).contains(&ttl),
        "the key expires when whole: {ttl}"
    );
    // A request with no key counts in one budget of its own.
    assert!(matches!(store.check(None, true), Check::Pending(_)));
    assert_eq!(store.key_name(None), b"test:unit:-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_from_one_config_file_share_a_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (up, seen) = gauge::start().await;
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"

        [auth]
        [[auth.keys]]
        id = "alice"
        key = "alice-secret"

        [rate_limit_store]
        url = "{url}"
        timeout = "2s"
        on_error = "deny"
        key_prefix = "from-config"

        [[routes]]
        prefix = "/api"
        upstreams = ["http://{up}"]

        [routes.rate_limit]
        requests = 4
        window = "1h"
        "#,
        url = redis.url()
    );
    let config = tower_gateway::config::Config::from_toml_str(&toml).unwrap();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        gateways.push(serve_gateway(config.gateway_builder().unwrap()).await);
    }
    let client = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            get(&client, gateways[i % 2], "alice")
                .await
                .0
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    assert_eq!(seen.hits(), 4);
    assert_eq!(
        redis.command(&["EXISTS", "from-config:/api:id:alice"]),
        ":1\r\n"
    );

    for (section, message) in [
        (
            "on_error = \"maybe\"",
            "rate_limit_store.on_error: unknown variant `maybe`, expected one of `allow`, `deny`, `local`",
        ),
        (
            "key_prefix = \"\"",
            "rate_limit_store.key_prefix: must not be empty",
        ),
    ] {
        let toml = format!(
            "[rate_limit_store]\nurl = \"{}\"\n{section}\n[[routes]]\nprefix = \"/\"\nupstreams = [\"http://{up}\"]\n",
            redis.url()
        );
        let error = tower_gateway::config::Config::from_toml_str(&toml).unwrap_err();
        assert_eq!(error.to_string(), message);
    }
}
