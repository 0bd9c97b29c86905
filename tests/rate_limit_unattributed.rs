//! A rate limiter that is given no client address (axum served without
//! `into_make_service_with_connect_info`) cannot tell clients apart: it counts them in one
//! shared budget, and says so once in a `warn` log instead of doing it silently. Logs are
//! captured by a process-wide subscriber, so this file holds this one test.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use axum::routing::get;
use tokio::net::TcpListener;

use common::Captured;
use tower_gateway::rate_limit::{Quota, RateLimitLayer};

#[tokio::test]
async fn without_a_client_address_one_shared_budget_and_one_warning() {
    let captured = Captured::install(tracing::Level::WARN);

    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(RateLimitLayer::new(
            Quota::new(1, Duration::from_secs(60)).unwrap(),
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Served without `into_make_service_with_connect_info`: no address reaches the layer.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut statuses = Vec::new();
    for n in 2..=5 {
        statuses.push(
            common::get_from(IpAddr::from([127, 0, 0, n]), addr, "/hello")
                .await
                .0,
        );
    }
    assert_eq!(statuses, [200, 429, 429, 429], "one budget for all of them");

    let logs = captured.text();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("no client address"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {logs}");
    assert!(warnings[0].contains("WARN"), "{logs}");
    assert!(
        warnings[0].contains("into_make_service_with_connect_info"),
        "it says how to fix it: {logs}"
    );
}
