//! API keys in the gateway, through real sockets: junk keys get a clean `401`, and no key,
//! right or wrong, reaches the upstream or the logs (CONTRACT.md §4, "API key" and "Bad
//! input"). Logs are captured by a process-wide subscriber, so this file holds this one test:
//! a scoped subscriber can miss the first events of callsites that a test running alongside
//! hits first.

mod common;

use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, Route};

use common::{Captured, raw_request};

#[tokio::test]
async fn junk_keys_get_a_401_and_no_key_reaches_the_logs_or_the_upstream() {
    let captured = Captured::install(tracing::Level::TRACE);

    let (up, rec) = common::upstream::start(false).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = common::gauge::serve_gateway(
        Gateway::builder()
            .auth(KeySet::new().key("alice", "alice-secret-7f3a"))
            .route(
                "/api",
                Route::to([format!("http://{up}")]).anonymous("/health"),
            )
            .route("/dead", Route::to([format!("http://{dead_addr}")])),
    )
    .await;
    let send = |target: &str, key_lines: &str| {
        let head = format!("GET {target} HTTP/1.1\nHost: gw\nConnection: close\n{key_lines}");
        async move { raw_request(gw, &head, b"").await }
    };

    let long = "k".repeat(16 * 1024);
    let junk = [
        "X-Api-Key: ".to_owned(),
        "X-Api-Key:    ".to_owned(),
        format!("X-Api-Key: {long}"),
        "X-Api-Key: ключ-wrong-1".to_owned(),
        "X-Api-Key: alice-secret-7f3a-wrong-2".to_owned(),
        "X-Api-Key: ALICE-SECRET-7F3A".to_owned(),
        "X-Api-Key: \"alice-secret-7f3a\"".to_owned(),
        "X-Api-Key: wrong-3\nX-Api-Key: wrong-4".to_owned(),
        "X-Api-Key: wrong-5, wrong-6".to_owned(),
    ];
    for key in &junk {
        let res = send("/api/ping", key).await;
        assert_eq!(res.status, 401, "{key:.40}");
        let body = String::from_utf8(res.body).unwrap();
        assert!(body.contains("\"status\":401"), "{body}");
        for secret in ["wrong", "ключ", "kkkkkkkk", "ALICE"] {
            assert!(!body.contains(secret), "{secret} echoed: {body}");
        }
    }
    // A control character in the value: the HTTP parser refuses it, never a 5xx.
    let res = send("/api/ping", "X-Api-Key: bad\u{1}key").await;
    assert_eq!(res.status, 400);
    assert!(rec.requests().is_empty(), "no junk key got through");

    // The right key on a normal path, an anonymous path and an unreachable upstream.
    let key = "X-Api-Key: alice-secret-7f3a";
    assert_eq!(send("/api/ping", key).await.status, 200);
    assert_eq!(send("/api/health", key).await.status, 200);
    assert_eq!(send("/api/health", "X-Api-Key: wrong-7").await.status, 200);
    assert_eq!(send("/dead/x", key).await.status, 502);
    let seen = rec.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| !s.headers.contains_key("x-api-key")));

    let logs = captured.text();
    assert!(
        logs.contains("rejected") && logs.contains("upstream failed"),
        "the capture works: {logs}"
    );
    for secret in ["alice-secret", "wrong-", "ключ", "kkkkkkkk", "ALICE-SECRET"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
