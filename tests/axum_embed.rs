//! The crate inside a plain axum app, served the documented way
//! (`into_make_service_with_connect_info::<SocketAddr>()`, feature `axum`): clients on four
//! loopback addresses get four rate-limit budgets, the proxy names each in
//! `X-Forwarded-For`, and a rejection under `nest_service` shows the path the client sent.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::routing::get;
use tokio::net::TcpListener;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::rate_limit::{Quota, RateLimitLayer};

/// Serves `app` the way the README shows: with the client's address as `ConnectInfo`.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn clients() -> Vec<IpAddr> {
    (2..=5).map(|n| IpAddr::from([127, 0, 0, n])).collect()
}

#[tokio::test]
async fn four_client_addresses_get_four_budgets() {
    // The README's snippet: one request a minute per client.
    let per_client = RateLimitLayer::new(Quota::new(1, Duration::from_secs(60)).unwrap());
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(per_client);
    let addr = serve(app).await;

    let mut first = Vec::new();
    for client in clients() {
        first.push(common::get_from(client, addr, "/hello").await.0);
    }
    assert_eq!(
        first,
        [200, 200, 200, 200],
        "each address has a budget of its own"
    );
    let mut second = Vec::new();
    for client in clients() {
        second.push(common::get_from(client, addr, "/hello").await.0);
    }
    assert_eq!(second, [429, 429, 429, 429], "and each spent it");
}

#[tokio::test]
async fn the_gateway_under_nest_service_forwards_the_client_and_shows_the_sent_path() {
    let (up, record) = common::upstream::start(false).await;
    let gateway = Gateway::<axum::body::Body>::builder()
        .route("/a", Route::to([format!("http://{up}")]))
        .build()
        .unwrap();
    let app = axum::Router::new().nest_service("/api", gateway);
    let addr = serve(app).await;

    for client in clients() {
        let (status, body) = common::get_from(client, addr, "/api/a/ping").await;
        assert_eq!((status, body.as_str()), (200, "pong /ping"));
        let seen = record.last();
        assert_eq!(
            seen.headers["x-forwarded-for"],
            client.to_string(),
            "the upstream sees the client that axum accepted"
        );
    }

    // The gateway's own 404, for a path no route of it takes: `instance` is the path the
    // client sent, not the one after axum's mount prefix.
    let (status, body) = common::get_from(clients()[0], addr, "/api/nowhere?x=1").await;
    assert_eq!(status, 404);
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["instance"], "/api/nowhere");
}
