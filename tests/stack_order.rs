//! The order of the gateway's stack (CONTRACT.md §4, "Order"), through real sockets:
//! correlation ID, hop-by-hop stripping, routing, auth, rate limit, circuit breaker,
//! bulkhead, retry, timeout, proxy; outermost first (retry's place: tests/retry.rs).
//!
//! Each test puts two layers in conflict and checks which one answers: a request that two
//! layers would refuse is refused by the outer one, with the outer one's kind, and leaves no
//! trace in the inner one (no token spent, no upstream contacted). The gateway's own answers
//! carry the correlation ID and no hop-by-hop header, whichever layer gave them.

mod common;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Request};
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{BoxRoute, Gateway, Route};
use tower_gateway::extensions::CorrelationId;
use tower_gateway::rate_limit::Quota;

use common::gauge::{Answer, HttpClient, client, fetch, serve_gateway};
use common::raw_request;
use common::switch::{self, eventually, open, open_stream, retry_until};

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn per_minute(requests: u32) -> Quota {
    Quota::new(requests, Duration::from_secs(60)).unwrap()
}

fn threshold(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn slots(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

const MINUTE: Duration = Duration::from_secs(60);

const ALICE: [(&str, &str); 1] = [("x-api-key", "alice-secret")];

/// `r` of a `RateLimit: "default";r=<r>;t=<t>` value, checking its form.
fn remaining(value: &str) -> u32 {
    let (r, t) = value
        .strip_prefix("\"default\";r=")
        .and_then(|rest| rest.split_once(";t="))
        .unwrap_or_else(|| panic!("RateLimit {value:?}"));
    t.parse::<u64>().unwrap();
    r.parse().unwrap()
}

/// `r` of the answer's one `RateLimit` header.
fn left(res: &Answer) -> u32 {
    let all: Vec<_> = res.headers.get_all("ratelimit").iter().collect();
    assert_eq!(all.len(), 1, "one RateLimit header: {all:?}");
    remaining(all[0].to_str().unwrap())
}

/// Checks that `res` is the gateway's own answer of `kind` (a `RejectionKind` variant name)
/// with `status`, and returns its problem body.
fn own_answer(res: &Answer, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(res.status, status, "{kind}: {}", res.text());
    let p = res.problem();
    assert_eq!(p["status"], status, "{p}");
    let type_uri = p["type"].as_str().unwrap();
    assert!(
        type_uri.ends_with(&format!("#variant.{kind}")),
        "expected {kind}, got {type_uri}"
    );
    for member in ["title", "detail", "correlation_id"] {
        assert!(
            p[member].as_str().is_some_and(|s| !s.is_empty()),
            "{member}: {p}"
        );
    }
    p
}

/// The rate limiter's `429`: `Retry-After`, nothing left.
fn assert_rate_limited(res: &Answer) {
    own_answer(res, 429, "RateLimited");
    assert!(res.headers.contains_key("retry-after"), "{:?}", res.headers);
    assert_eq!(left(res), 0);
}

/// The bulkhead's `429`: no `Retry-After`.
fn assert_bulkhead_full(res: &Answer) {
    own_answer(res, 429, "ConcurrencyLimited");
    assert!(
        !res.headers.contains_key("retry-after"),
        "{:?}",
        res.headers
    );
}

/// The open breaker's `503`, with `Retry-After` inside the cooldown.
fn assert_circuit_open(res: &Answer, cooldown: Duration) {
    own_answer(res, 503, "CircuitOpen");
    let retry: u64 = res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=cooldown.as_secs()).contains(&retry),
        "Retry-After {retry}"
    );
}

async fn get(client: &HttpClient, gw: SocketAddr, target: &str) -> Answer {
    fetch(client, gw, target, &[]).await
}

#[tokio::test]
async fn a_404_a_401_and_a_400_spend_no_rate_limit_token() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder()
            .auth(KeySet::new().key("alice", "alice-secret"))
            .route(
                "/api",
                Route::to([url(up)])
                    .rate_limit(per_minute(5))
                    .anonymous("/health"),
            ),
    )
    .await;
    let client = client();

    let res = fetch(&client, gw, "/api/ping", &ALICE).await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "upstream /ping"));
    assert_eq!(left(&res), 4);

    // 100 refusals, 20 times the quota: routing and auth answer before the limiter.
    for _ in 0..20 {
        let res = fetch(&client, gw, "/nowhere", &ALICE).await;
        own_answer(&res, 404, "NotFound");
        assert!(!res.headers.contains_key("ratelimit"), "{:?}", res.headers);
        for target in ["/api/%2e%2e/ping", "/api/a/../ping"] {
            let res = fetch(&client, gw, target, &ALICE).await;
            own_answer(&res, 400, "BadRequest");
            assert!(!res.headers.contains_key("ratelimit"));
        }
        for key in [&[][..], &[("x-api-key", "alice-secre")]] {
            let res = fetch(&client, gw, "/api/ping", key).await;
            own_answer(&res, 401, "Unauthorized");
            assert!(!res.headers.contains_key("ratelimit"));
        }
    }
    // Without a key, a bad path is still a 400: routing comes before auth.
    own_answer(
        &get(&client, gw, "/api/%2e%2e/ping").await,
        400,
        "BadRequest",
    );
    assert_eq!(upstream.hits(), 1, "no refusal reached the upstream");

    // Alice spent one token since, not 61.
    let res = fetch(&client, gw, "/api/ping", &ALICE).await;
    assert_eq!(res.status, 200);
    assert_eq!(left(&res), 3);
    // The 41 keyless requests from this address spent nothing of its own budget either.
    let res = get(&client, gw, "/api/health").await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "upstream /health"));
    assert_eq!(left(&res), 4);
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn the_rate_limiter_answers_before_the_breaker_and_the_bulkhead() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder()
            .route(
                "/breaker",
                Route::to([url(up)])
                    .rate_limit(per_minute(2))
                    .circuit_breaker(threshold(1), MINUTE),
            )
            .route(
                "/bulkhead",
                Route::to([url(up)])
                    .rate_limit(per_minute(2))
                    .bulkhead(slots(1)),
            ),
    )
    .await;
    let client = client();

    // One upstream 500 opens the breaker.
    upstream.set_status(500);
    let res = get(&client, gw, "/breaker/x").await;
    assert_eq!((res.status.as_u16(), res.text()), (500, "upstream /x"));
    assert_eq!(left(&res), 1);
    // The limiter runs first: it spends a token, then the breaker refuses, and the limiter's
    // headers label the breaker's answer.
    let res = get(&client, gw, "/breaker/x").await;
    assert_circuit_open(&res, MINUTE);
    assert_eq!(left(&res), 0);
    // Out of tokens: the limiter refuses before the open breaker gets a say.
    for _ in 0..3 {
        assert_rate_limited(&get(&client, gw, "/breaker/x").await);
    }
    assert_eq!(upstream.hits(), 1);

    // A streamed answer holds the bulkhead's only slot.
    upstream.set_status(200);
    let held = open_stream(gw, "/bulkhead/stream", &[]).await;
    assert_eq!(held.status, 200);
    assert_eq!(remaining(held.header("ratelimit").unwrap()), 1);
    let res = get(&client, gw, "/bulkhead/x").await;
    assert_bulkhead_full(&res);
    assert_eq!(left(&res), 0, "the limiter ran before the bulkhead refused");
    // Out of tokens with the bulkhead still full: the limiter's 429, not the bulkhead's.
    for _ in 0..3 {
        assert_rate_limited(&get(&client, gw, "/bulkhead/x").await);
    }
    // With the slot free again, still the limiter's.
    drop(held);
    eventually(|| upstream.streaming() == 0, "the stream is cancelled").await;
    assert_rate_limited(&get(&client, gw, "/bulkhead/x").await);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn an_open_circuit_answers_before_the_bulkhead_and_contacts_no_upstream() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([url(up)])
                .circuit_breaker(threshold(1), MINUTE)
                .bulkhead(slots(2)),
        ),
    )
    .await;
    let client = client();

    // Two streamed answers take both slots: the (closed) breaker lets a third request through
    // to the bulkhead, which refuses it.
    let a = open_stream(gw, "/api/stream", &[]).await;
    let b = open_stream(gw, "/api/stream", &[]).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_bulkhead_full(&get(&client, gw, "/api/ping").await);
    assert_eq!(upstream.hits(), 2);

    // A's slot comes back and is taken by a streamed 500: its head opens the breaker, its
    // body holds the slot. (Polled: A's slot comes back once the gateway sees A hang up.)
    drop(a);
    upstream.set_status(500);
    let c = retry_until(|| open(gw, "/api/stream", &[]), |res| res.status != 429).await;
    assert_eq!(c.status, 500, "{}", c.head);
    eventually(|| upstream.streaming() == 2, "B and C stream").await;
    assert_eq!(upstream.hits(), 3);

    // The bulkhead is as full as before, and the breaker is open: the breaker answers, and
    // nothing reaches the bulkhead or the upstream.
    for _ in 0..5 {
        assert_circuit_open(&get(&client, gw, "/api/ping").await, MINUTE);
    }
    assert_eq!(upstream.hits(), 3);
    drop((b, c));
}

#[tokio::test]
async fn timeouts_inside_the_breaker_count_as_failures() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([url(up)])
                .timeout(Duration::from_millis(200))
                .circuit_breaker(threshold(2), MINUTE),
        ),
    )
    .await;
    let client = client();

    // `/held` never answers: each attempt runs into the per-attempt timeout, inside the
    // breaker, whose 504 the breaker counts.
    for _ in 0..2 {
        own_answer(&get(&client, gw, "/api/held").await, 504, "GatewayTimeout");
    }
    eventually(
        || upstream.held() == 0,
        "the timed-out requests are cancelled",
    )
    .await;
    assert_circuit_open(&get(&client, gw, "/api/held").await, MINUTE);
    assert_eq!(upstream.hits(), 2);
}

// Retry sits between the bulkhead and the timeout (CONTRACT.md §4); its order is locked in
// by tests/retry.rs: `a_retried_request_holds_one_bulkhead_slot_through_its_wait` (bulkhead
// outside), `each_attempt_has_its_own_timeout` (timeout inside) and
// `the_breaker_counts_one_failure_per_client_request` (breaker outside).

#[tokio::test]
async fn every_answer_the_gateway_gives_itself_carries_the_correlation_id() {
    let (up, upstream) = switch::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = serve_gateway(
        Gateway::builder()
            .auth(KeySet::new().key("alice", "alice-secret"))
            .route("/limited", Route::to([url(up)]).rate_limit(per_minute(1)))
            .route("/full", Route::to([url(up)]).bulkhead(slots(1)))
            .route(
                "/dead",
                Route::to([url(dead_addr)]).circuit_breaker(threshold(2), MINUTE),
            )
            .route(
                "/slow",
                Route::to([url(up)]).timeout(Duration::from_millis(200)),
            ),
    )
    .await;
    let client = client();

    // Spend the only token, and take the only slot.
    assert_eq!(fetch(&client, gw, "/limited/x", &ALICE).await.status, 200);
    let held = open_stream(gw, "/full/stream", &["x-api-key: alice-secret"]).await;
    assert_eq!(held.status, 200);

    let cases: [(&str, bool, u16, &str); 9] = [
        ("/nowhere", true, 404, "NotFound"),
        ("/limited/%2e%2e/x", true, 400, "BadRequest"),
        ("/limited/x", false, 401, "Unauthorized"),
        ("/limited/x", true, 429, "RateLimited"),
        ("/full/x", true, 429, "ConcurrencyLimited"),
        ("/dead/x", true, 502, "BadGateway"),
        ("/dead/x", true, 502, "BadGateway"),
        ("/dead/x", true, 503, "CircuitOpen"),
        ("/slow/held", true, 504, "GatewayTimeout"),
    ];
    for (i, (target, keyed, status, kind)) in cases.into_iter().enumerate() {
        let mut headers = if keyed { ALICE.to_vec() } else { Vec::new() };
        // The client's ID, or (every other case) none: then a new one.
        let sent = format!("own-{i}");
        if i % 2 == 0 {
            headers.push(("x-correlation-id", &sent));
        }
        let res = fetch(&client, gw, target, &headers).await;
        let p = own_answer(&res, status, kind);
        let all: Vec<_> = res.headers.get_all("x-correlation-id").iter().collect();
        assert_eq!(all.len(), 1, "{kind}: {all:?}");
        let returned = all[0].to_str().unwrap();
        if i % 2 == 0 {
            assert_eq!(returned, sent, "{kind}");
        } else {
            assert_eq!(returned.len(), 36, "{kind}: a new ID, {returned}");
        }
        assert_eq!(
            p["correlation_id"], returned,
            "{kind}: body and header agree"
        );
    }
    drop(held);

    // The edges of a valid ID, on an answer of the router's.
    let longest = "k".repeat(128);
    let res = fetch(&client, gw, "/nowhere", &[("x-correlation-id", &longest)]).await;
    assert_eq!(res.headers["x-correlation-id"], longest.as_str());
    assert_eq!(res.problem()["correlation_id"], longest.as_str());
    let too_long = "k".repeat(129);
    let res = fetch(&client, gw, "/nowhere", &[("x-correlation-id", &too_long)]).await;
    let returned = res.headers["x-correlation-id"].to_str().unwrap();
    assert_eq!(returned.len(), 36);
    assert_eq!(res.problem()["correlation_id"], returned);

    // On an upstream answer, a made-up ID goes upstream and comes back: the same one.
    let hits = upstream.hits();
    let res = fetch(&client, gw, "/full/echo", &ALICE).await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "upstream /echo"));
    assert_eq!(upstream.hits(), hits + 1);
    let seen = upstream.last().headers;
    assert_eq!(
        seen.get_all("x-correlation-id").iter().collect::<Vec<_>>(),
        [&res.headers["x-correlation-id"]]
    );
}

#[tokio::test]
async fn hop_by_hop_headers_go_before_routing_and_auth_and_off_the_gateways_own_answers() {
    let (up, upstream) = switch::start().await;
    // The route's own layer: records the request headers it sees and whether the request
    // carries a correlation ID, and adds hop-by-hop headers (and one end-to-end header) to
    // every answer of the route, the gateway's own included.
    let seen = Arc::new(Mutex::new(Vec::<(HeaderMap, bool)>::new()));
    let spy = {
        let seen = Arc::clone(&seen);
        tower::layer::layer_fn(move |inner: BoxRoute<Incoming>| {
            let seen = Arc::clone(&seen);
            tower::service_fn(move |req: Request<Incoming>| {
                let has_id = req.extensions().get::<CorrelationId>().is_some();
                seen.lock().unwrap().push((req.headers().clone(), has_id));
                let inner = inner.clone();
                async move {
                    let mut res = inner.oneshot(req).await?;
                    let headers = res.headers_mut();
                    for (name, value) in [
                        ("connection", "x-route-hop"),
                        ("x-route-hop", "topology"),
                        ("keep-alive", "timeout=99"),
                        ("proxy-authenticate", "Basic realm=\"inner\""),
                        ("trailer", "x-checksum"),
                        ("upgrade", "h2c"),
                        ("x-route-end-to-end", "kept"),
                    ] {
                        headers.append(name, value.parse().unwrap());
                    }
                    Ok(res)
                }
            })
        })
    };
    let gw = serve_gateway(
        Gateway::builder()
            .auth(KeySet::new().key("alice", "alice-secret"))
            .route(
                "/api",
                Route::to([url(up)]).rate_limit(per_minute(1)).layer(spy),
            ),
    )
    .await;
    const HOP: &str = "Connection: close, x-client-hop\nConnection: x-second-hop\n\
        X-Client-Hop: 1\nX-Second-Hop: 2\nKeep-Alive: timeout=5\nTE: gzip\n\
        Proxy-Authorization: Basic eA==\nProxy-Connection: keep-alive\nUpgrade: h2c\n\
        X-End-To-End: yes";
    let request = |extra: &str| {
        format!("GET /api/ping HTTP/1.1\nHost: gw\nX-Correlation-Id: hop-1\n{HOP}\n{extra}")
    };
    let assert_request_stripped = |headers: &HeaderMap| {
        for gone in [
            "connection",
            "x-client-hop",
            "x-second-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "x-api-key",
        ] {
            assert!(!headers.contains_key(gone), "{gone} got in: {headers:?}");
        }
        assert_eq!(headers["x-end-to-end"], "yes");
        assert_eq!(headers["x-correlation-id"], "hop-1");
    };
    let assert_response_stripped = |res: &common::RawResponse| {
        for gone in [
            "x-route-hop",
            "keep-alive",
            "proxy-authenticate",
            "trailer",
            "upgrade",
        ] {
            assert!(!res.headers.contains_key(gone), "{gone}: {:?}", res.headers);
        }
        // hyper's own `connection: close` for this hop is fine; the route's value is gone.
        for value in res.headers.get_all("connection") {
            assert_eq!(value, "close", "{:?}", res.headers);
        }
        assert_eq!(res.headers["x-route-end-to-end"], "kept");
        assert_eq!(res.headers["x-correlation-id"], "hop-1");
    };

    // The key, nominated in `Connection`, is gone before auth sees the request: a 401.
    let res = raw_request(
        gw,
        &request("Connection: x-api-key\nX-Api-Key: alice-secret"),
        b"",
    )
    .await;
    assert_eq!(res.status, 401);
    assert!(res.headers.contains_key("www-authenticate"));
    assert_response_stripped(&res);
    // Unnominated, it passes: the upstream's answer, stripped the same way.
    let res = raw_request(gw, &request("X-Api-Key: alice-secret"), b"").await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.body, b"upstream /ping");
    assert_response_stripped(&res);
    assert_eq!(remaining(res.headers["ratelimit"].to_str().unwrap()), 0);
    // And the limiter's answer.
    let res = raw_request(gw, &request("X-Api-Key: alice-secret"), b"").await;
    assert_eq!(res.status, 429);
    assert!(res.headers.contains_key("retry-after"));
    assert_response_stripped(&res);

    // The route's layer, inside the router, saw every request stripped and with its ID.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (headers, has_id) in &seen {
        // The key arrives at the route's layer (auth is inside it) unless it was nominated.
        let mut headers = headers.clone();
        headers.remove("x-api-key");
        assert_request_stripped(&headers);
        assert!(has_id, "the correlation ID is set outside the router");
    }
    assert!(!seen[0].0.contains_key("x-api-key"));
    assert!(seen[1].0.contains_key("x-api-key"));
    let at_upstream = upstream.requests();
    assert_eq!(at_upstream.len(), 1);
    assert_request_stripped(&at_upstream[0].headers);
}

#[tokio::test]
async fn each_route_has_its_own_rate_limit() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder()
            .route("/a", Route::to([url(up)]).rate_limit(per_minute(2)))
            .route("/b", Route::to([url(up)]).rate_limit(per_minute(2))),
    )
    .await;
    let client = client();
    for left_after in [1, 0] {
        let res = get(&client, gw, "/a/x").await;
        assert_eq!((res.status.as_u16(), left(&res)), (200, left_after));
    }
    assert_rate_limited(&get(&client, gw, "/a/x").await);
    // The same client, on the other route: a whole quota.
    for left_after in [1, 0] {
        let res = get(&client, gw, "/b/x").await;
        assert_eq!((res.status.as_u16(), left(&res)), (200, left_after));
    }
    assert_rate_limited(&get(&client, gw, "/b/x").await);
    assert_eq!(upstream.hits(), 4);
}

/// The bulkhead sits inside the breaker, so its `429`s reach the breaker's classifier; they
/// are the gateway's own answers, not the upstream's, and must count neither way.
#[tokio::test]
async fn a_full_bulkhead_does_not_reset_the_breakers_count_of_upstream_failures() {
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([url(up)])
                .circuit_breaker(threshold(2), MINUTE)
                .bulkhead(slots(1)),
        ),
    )
    .await;
    let client = client();
    upstream.set_status(500);

    // Upstream failure 1, whose streamed body holds the only slot.
    let a = open_stream(gw, "/api/stream", &[]).await;
    assert_eq!(a.status, 500);
    // The bulkhead refuses: not an upstream answer.
    assert_bulkhead_full(&get(&client, gw, "/api/ping").await);
    drop(a);
    // Upstream failure 2, once the slot is back: the second consecutive upstream failure.
    let res = retry_until(|| get(&client, gw, "/api/ping"), |res| res.status != 429).await;
    assert_eq!((res.status.as_u16(), res.text()), (500, "upstream /ping"));
    assert_eq!(upstream.hits(), 2);

    let res = get(&client, gw, "/api/ping").await;
    assert_circuit_open(&res, MINUTE);
    assert_eq!(
        upstream.hits(),
        2,
        "two consecutive upstream failures opened it"
    );
}

/// After the cooldown the probe meets a bulkhead still full of streams from before the
/// breaker opened: the probe never reached the upstream, so it must not close the breaker.
#[tokio::test]
async fn a_probe_refused_by_the_full_bulkhead_does_not_close_the_breaker() {
    let cooldown = Duration::from_secs(1);
    let (up, upstream) = switch::start().await;
    let gw = serve_gateway(
        Gateway::builder().route(
            "/api",
            Route::to([url(up)])
                .circuit_breaker(threshold(2), cooldown)
                .bulkhead(slots(2)),
        ),
    )
    .await;
    let client = client();
    upstream.set_status(500);

    // Two streamed 500s: they open the breaker and hold both slots.
    let a = open_stream(gw, "/api/stream", &[]).await;
    let b = open_stream(gw, "/api/stream", &[]).await;
    assert_eq!((a.status, b.status), (500, 500));
    // Open until the cooldown is over; then the probe goes through the breaker and into the
    // full bulkhead.
    let probe = retry_until(|| get(&client, gw, "/api/ping"), |res| res.status != 503).await;
    assert_bulkhead_full(&probe);
    assert_eq!(upstream.hits(), 2);

    // The slots come back. The upstream still fails: the first request that reaches it is
    // a probe (or the breaker opened again), so the next one is refused.
    drop((a, b));
    let res = retry_until(
        || get(&client, gw, "/api/ping"),
        |res| res.status == 500 && res.text() == "upstream /ping",
    )
    .await;
    drop(res);
    assert_eq!(upstream.hits(), 3);
    let res = get(&client, gw, "/api/ping").await;
    assert_eq!(
        res.status,
        503,
        "a failing probe reopens the breaker; got {} {}",
        res.status,
        res.text()
    );
    assert_eq!(upstream.hits(), 3);
}
