//! The rate limiter through real sockets: in the gateway (per client, after routing and auth,
//! keyed on identities or on client addresses behind trusted proxies) and alone in axum.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::forwarded::TrustedProxies;
use tower_gateway::rate_limit::{GlobalKey, Quota, RateLimitLayer};

use common::gauge::{self, Answer, client, fetch, serve_gateway};
use common::upstream::{self, pattern};
use common::{raw_request, serve_axum};

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn per_minute(requests: u32) -> Quota {
    Quota::new(requests, Duration::from_secs(60)).unwrap()
}

/// `r` and `t` of a `RateLimit: "default";r=<r>;t=<t>` value, checking its form.
fn parse_ratelimit(value: &str) -> (u32, u64) {
    let (r, t) = value
        .strip_prefix("\"default\";r=")
        .and_then(|rest| rest.split_once(";t="))
        .unwrap_or_else(|| panic!("RateLimit {value:?}"));
    (r.parse().unwrap(), t.parse().unwrap())
}

/// `r` and `t` of the response's one `RateLimit` header.
fn ratelimit(res: &Answer) -> (u32, u64) {
    let all: Vec<_> = res.headers.get_all("ratelimit").iter().collect();
    assert_eq!(all.len(), 1, "one RateLimit header: {all:?}");
    parse_ratelimit(all[0].to_str().unwrap())
}

fn retry_after(res: &Answer) -> u64 {
    res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks everything a rate-limit `429` carries; returns its `Retry-After`.
fn assert_rate_limited(res: &Answer, policy: &str) -> u64 {
    assert_eq!(res.status, 429, "{}", res.text());
    let retry = retry_after(res);
    let (r, t) = ratelimit(res);
    assert_eq!(r, 0, "a 429 leaves nothing");
    assert!(retry >= 1, "Retry-After {retry} is at least 1");
    assert!(retry <= t, "Retry-After {retry} must not pass t={t}");
    assert_eq!(res.headers["ratelimit-policy"], policy);
    let p = res.problem();
    assert_eq!(p["status"], 429);
    assert!(p["correlation_id"].is_string(), "{p}");
    assert_eq!(
        res.headers["x-correlation-id"].to_str().unwrap(),
        p["correlation_id"]
    );
    retry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_flood_from_one_client_gets_its_quota_and_no_more() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 150;
    const QUOTA: u32 = 200;
    let quota = per_minute(QUOTA);
    let (up, seen) = gauge::start().await;
    let gw = serve_gateway(
        Gateway::builder()
            .auth(KeySet::new().key("client", "client-secret"))
            .route("/api", Route::to([url(up)]).rate_limit(quota)),
    )
    .await;

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            tokio::spawn(async move {
                // Each task its own keep-alive connection.
                let client = client();
                let (mut admitted, mut limited) = (0usize, 0usize);
                for _ in 0..PER_TASK {
                    let res =
                        fetch(&client, gw, "/api/ping", &[("x-api-key", "client-secret")]).await;
                    match res.status.as_u16() {
                        200 => {
                            assert_eq!(res.text(), "pong /ping");
                            assert_eq!(res.headers["ratelimit-policy"], "\"default\";q=200;w=60");
                            let (r, t) = ratelimit(&res);
                            assert!(r < QUOTA && t <= 60, "r={r} t={t}");
                            admitted += 1;
                        }
                        429 => {
                            assert_rate_limited(&res, "\"default\";q=200;w=60");
                            limited += 1;
                        }
                        other => panic!("unexpected {other}: {}", res.text()),
                    }
                }
                (admitted, limited)
            })
        })
        .collect();
    let (mut admitted, mut limited) = (0, 0);
    for task in tasks {
        let (a, l) = task.await.unwrap();
        admitted += a;
        limited += l;
    }
    let elapsed = started.elapsed();

    // The burst, plus what refilled while the flood ran (one request per 300 ms).
    eprintln!(
        "{admitted} admitted, {limited} limited in {elapsed:?} (bound {})",
        common::budget_bound(quota, elapsed)
    );
    assert_eq!(admitted + limited, TASKS * PER_TASK);
    common::assert_one_budget(admitted, quota, elapsed);
    assert_eq!(
        seen.hits(),
        admitted,
        "the upstream saw every admitted request and nothing else"
    );
}

#[tokio::test]
async fn api_keys_have_separate_budgets_and_404_or_401_cost_nothing() {
    let (up, rec) = upstream::start(false).await;
    let gw = serve_gateway(
        Gateway::builder()
            .auth(
                KeySet::new()
                    .key("alice", "alice-secret")
                    .key("bob", "bob-secret"),
            )
            .route(
                "/api",
                Route::to([url(up)])
                    .rate_limit(per_minute(3))
                    .anonymous("/health"),
            ),
    )
    .await;
    let client = client();
    let alice = [("x-api-key", "alice-secret")];
    let bob = [("x-api-key", "bob-secret")];

    // Before any budget is spent: 401s (keyless requests would count against the address
    // 127.0.0.1 if the limiter ran before auth) and 404s.
    for headers in [
        &[][..],
        &[("x-api-key", "wrong")],
        &[],
        &[("x-api-key", "")],
        &[],
    ] {
        let res = fetch(&client, gw, "/api/ping", headers).await;
        assert_eq!(res.status, 401, "{}", res.text());
        assert_eq!(
            res.headers["www-authenticate"],
            "ApiKey header=\"x-api-key\""
        );
        assert!(res.headers.get("ratelimit").is_none());
        assert!(res.headers.get("retry-after").is_none());
        assert_eq!(res.problem()["status"], 401);
    }
    for _ in 0..4 {
        let res = fetch(&client, gw, "/nowhere", &alice).await;
        assert_eq!(res.status, 404);
        assert_eq!(res.problem()["status"], 404);
    }
    assert!(
        rec.requests().is_empty(),
        "nothing reached the upstream yet"
    );

    // Alice spends her whole budget, and her fourth request is refused.
    for left in [2, 1, 0] {
        let res = fetch(&client, gw, "/api/ping", &alice).await;
        assert_eq!((res.status.as_u16(), res.text()), (200, "pong /ping"));
        assert_eq!(ratelimit(&res).0, left);
        assert_eq!(res.headers["ratelimit-policy"], "\"default\";q=3;w=60");
    }
    let retry = assert_rate_limited(
        &fetch(&client, gw, "/api/ping", &alice).await,
        "\"default\";q=3;w=60",
    );
    assert!(
        (19..=20).contains(&retry),
        "one request back in 20 s: {retry}"
    );

    // With alice spent, a wrong key is still a 401 (auth answers first) and a 404 a 404.
    assert_eq!(
        fetch(&client, gw, "/api/ping", &[("x-api-key", "alice")])
            .await
            .status,
        401
    );
    assert_eq!(fetch(&client, gw, "/elsewhere", &alice).await.status, 404);

    // Bob has his own budget.
    for left in [2, 1, 0] {
        let res = fetch(&client, gw, "/api/ping", &bob).await;
        assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, left));
    }
    assert_rate_limited(
        &fetch(&client, gw, "/api/ping", &bob).await,
        "\"default\";q=3;w=60",
    );

    // Anonymous requests count against the address, whose budget the 401s left whole.
    for left in [2, 1, 0] {
        let res = fetch(&client, gw, "/api/health", &[]).await;
        assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, left));
    }
    assert_rate_limited(
        &fetch(&client, gw, "/api/health", &[]).await,
        "\"default\";q=3;w=60",
    );

    let seen = rec.requests();
    assert_eq!(seen.len(), 9, "3 for alice, 3 for bob, 3 anonymous");
    assert!(seen.iter().all(|s| !s.headers.contains_key("x-api-key")));
    assert_eq!(seen.iter().filter(|s| s.uri == "/health").count(), 3);
}

#[tokio::test]
async fn forged_x_forwarded_for_cannot_pick_the_budget_of_an_untrusted_peer() {
    let (up, rec) = upstream::start(false).await;
    let gw = serve_gateway(
        Gateway::builder().route("/api", Route::to([url(up)]).rate_limit(per_minute(2))),
    )
    .await;
    let client = client();
    let policy = "\"default\";q=2;w=60";

    // The peer is 127.0.0.1 whatever the header says: one budget.
    for (xff, left) in [("1.1.1.1", 1), ("2.2.2.2", 0)] {
        let res = fetch(&client, gw, "/api/ping", &[("x-forwarded-for", xff)]).await;
        assert_eq!(
            (res.status.as_u16(), ratelimit(&res).0),
            (200, left),
            "{xff}"
        );
        assert_eq!(
            rec.last().headers["x-forwarded-for"],
            format!("{xff}, 127.0.0.1"),
            "the peer is appended"
        );
    }
    for xff in ["3.3.3.3", "203.0.113.7, 198.51.100.1", "127.0.0.2"] {
        let res = fetch(&client, gw, "/api/ping", &[("x-forwarded-for", xff)]).await;
        assert_rate_limited(&res, policy);
    }
    assert_rate_limited(&fetch(&client, gw, "/api/ping", &[]).await, policy);
    assert_eq!(rec.requests().len(), 2);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_untrusted_address_is_the_client() {
    let (up, rec) = upstream::start(false).await;
    let gw = serve_gateway(
        Gateway::builder()
            .trusted_proxies(TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]))
            .route("/api", Route::to([url(up)]).rate_limit(per_minute(2))),
    )
    .await;
    let client = client();
    let policy = "\"default\";q=2;w=60";
    let xff = |value| [("x-forwarded-for", value)];

    // 203.0.113.7's budget; the forged left-most entry changes nothing.
    let res = fetch(&client, gw, "/api/ping", &xff("6.6.6.6, 203.0.113.7")).await;
    assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, 1));
    assert_eq!(
        rec.last().headers["x-forwarded-for"],
        "6.6.6.6, 203.0.113.7, 127.0.0.1",
        "a trusted peer's list is kept, and the peer appended"
    );
    let res = fetch(&client, gw, "/api/ping", &xff("1.1.1.1, 203.0.113.7")).await;
    assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, 0));
    assert_eq!(
        rec.last().headers["x-forwarded-for"],
        "1.1.1.1, 203.0.113.7, 127.0.0.1"
    );
    // Spent, however the list is written: alone, behind more trusted hops, or over two
    // header lines.
    for headers in [
        &xff("203.0.113.7")[..],
        &xff("9.9.9.9, 203.0.113.7, 127.0.0.9"),
        &[
            ("x-forwarded-for", "8.8.8.8"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    ] {
        assert_rate_limited(&fetch(&client, gw, "/api/ping", headers).await, policy);
    }

    // Another client behind the same proxy has its own budget.
    let res = fetch(&client, gw, "/api/ping", &xff("6.6.6.6, 203.0.113.8")).await;
    assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, 1));
    // And the proxy itself, naming nobody, is a client of its own.
    let res = fetch(&client, gw, "/api/ping", &[]).await;
    assert_eq!((res.status.as_u16(), ratelimit(&res).0), (200, 1));
    assert_eq!(rec.last().headers["x-forwarded-for"], "127.0.0.1");

    assert_eq!(rec.requests().len(), 4);
}

#[tokio::test]
async fn upstream_answers_carry_the_ratelimit_headers_and_pass_through_unchanged() {
    let (up, rec) = upstream::start(false).await;
    let gw = serve_gateway(
        Gateway::builder()
            .route("/api", Route::to([url(up)]).rate_limit(per_minute(5)))
            .route("/open", Route::to([url(up)])),
    )
    .await;
    let client = client();
    let policy = "\"default\";q=5;w=60";

    // One request back every 12 s: after k requests the quota is whole in 12k s.
    let res = fetch(&client, gw, "/api/ping?x=1", &[]).await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "pong /ping?x=1"));
    assert_eq!(res.headers["ratelimit-policy"], policy);
    assert_eq!(res.headers.get_all("ratelimit-policy").iter().count(), 1);
    let (r, t) = ratelimit(&res);
    assert_eq!(r, 4);
    assert!((1..=12).contains(&t), "t={t}");

    // The upstream's own headers survive next to the gateway's.
    let res = fetch(&client, gw, "/api/hop", &[]).await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "hop"));
    assert_eq!(res.headers["x-end-to-end"], "kept");
    let (r, t) = ratelimit(&res);
    assert_eq!(r, 3);
    assert!((13..=24).contains(&t), "t={t}");

    // A streamed body arrives intact, with the headers on its head.
    let res = fetch(&client, gw, "/api/download?mib=1", &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["ratelimit-policy"], policy);
    let (r, t) = ratelimit(&res);
    assert_eq!(r, 2);
    assert!((25..=36).contains(&t), "t={t}");
    assert_eq!(res.body.len(), 1 << 20);
    assert!(
        res.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i as u64)),
        "the body is the upstream's, byte for byte"
    );

    // A route without a limit carries none of the headers.
    let res = fetch(&client, gw, "/open/ping", &[]).await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "pong /ping"));
    assert!(res.headers.get("ratelimit").is_none());
    assert!(res.headers.get("ratelimit-policy").is_none());

    assert_eq!(rec.requests().len(), 4);
}

#[tokio::test]
async fn the_rate_limiter_alone_in_an_axum_router() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "hello" }
            }),
        )
        .route("/other", axum::routing::get(|| async { "other" }))
        .layer(RateLimitLayer::new(per_minute(2)).with_key(GlobalKey));
    let addr = serve_axum(app).await;
    let get = |path: &str| {
        let head = format!("GET {path} HTTP/1.1\nHost: t\nConnection: close");
        async move { raw_request(addr, &head, b"").await }
    };

    let res = get("/hello").await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(res.headers["ratelimit-policy"], "\"default\";q=2;w=60");
    let (r, t) = parse_ratelimit(res.headers["ratelimit"].to_str().unwrap());
    assert!(r == 1 && (25..=30).contains(&t), "r={r} t={t}");
    // One budget for the whole router: another route spends it too.
    let res = get("/other").await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"other"[..]));
    let (r, t) = parse_ratelimit(res.headers["ratelimit"].to_str().unwrap());
    assert!(r == 0 && (55..=60).contains(&t), "r={r} t={t}");

    let res = get("/hello").await;
    assert_eq!(res.status, 429);
    assert_eq!(res.headers["content-type"], "application/problem+json");
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (r, t) = parse_ratelimit(res.headers["ratelimit"].to_str().unwrap());
    assert!((25..=30).contains(&retry), "Retry-After {retry}");
    assert!(r == 0 && retry <= t, "Retry-After {retry}, r={r} t={t}");
    let p: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(
        (p["status"].as_u64(), p["instance"].as_str()),
        (Some(429), Some("/hello"))
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the 429 never ran the handler"
    );
}
