//! `ApiKeyAuthLayer` alone in an axum `Router`, through a real socket.

mod common;

use axum::routing::get;
use tower_gateway::api_key::{ApiKeyAuthLayer, KeySet};
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::extensions::Identity;

use common::{headers_json, raw_request, seen_headers, serve_axum};

#[tokio::test]
async fn axum_router_with_api_key_auth() {
    let keys = KeySet::new().key("alice", "alice-secret");
    let app = axum::Router::new()
        .route(
            "/whoami",
            get(|req: axum::extract::Request| async move {
                let who = req
                    .extensions()
                    .get::<Identity>()
                    .map_or("anonymous", |i| i.id())
                    .to_owned();
                ([("x-who", who)], headers_json(req.headers()))
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(ApiKeyAuthLayer::new(keys).anonymous("/health"))
        .layer(CorrelationIdLayer::new());
    let addr = serve_axum(app).await;

    let res = raw_request(
        addr,
        "GET /whoami HTTP/1.1\nHost: t\nConnection: close\nX-Api-Key: alice-secret",
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["x-who"], "alice");
    assert!(
        !seen_headers(&res.body).contains_key("x-api-key"),
        "the key is not forwarded"
    );

    let res = raw_request(
        addr,
        "GET /whoami HTTP/1.1\nHost: t\nConnection: close\nX-Api-Key: not-the-key\nX-Correlation-Id: auth-1",
        b"",
    )
    .await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.headers["www-authenticate"],
        "ApiKey header=\"x-api-key\""
    );
    assert_eq!(res.headers["x-correlation-id"], "auth-1");
    let body = String::from_utf8(res.body).unwrap();
    assert!(body.contains("\"correlation_id\":\"auth-1\""), "{body}");
    assert!(!body.contains("not-the-key"), "the key is never echoed");

    let res = raw_request(
        addr,
        "GET /health HTTP/1.1\nHost: t\nConnection: close",
        b"",
    )
    .await;
    assert_eq!((res.status, res.body.as_slice()), (200, &b"ok"[..]));
}
