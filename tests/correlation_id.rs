//! `CorrelationIdLayer` through real sockets: axum and a plain hyper server.

mod common;

use std::convert::Infallible;

use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::extensions::CorrelationId;
use tower_gateway::rejection::{Rejection, RejectionKind};

use common::{headers_json, raw_request, seen_headers, serve_axum, serve_hyper};

fn app() -> axum::Router {
    axum::Router::new()
        .route(
            "/echo",
            get(|req: axum::extract::Request| async move {
                let id = req
                    .extensions()
                    .get::<CorrelationId>()
                    .unwrap()
                    .as_str()
                    .to_owned();
                // The upstream's own value is overwritten on the way out.
                (
                    [
                        ("x-correlation-id", "upstream-own".to_owned()),
                        ("x-ext", id),
                    ],
                    headers_json(req.headers()),
                )
            }),
        )
        .route(
            "/refused",
            get(|req: axum::extract::Request| async move {
                Rejection::new(RejectionKind::Forbidden)
                    .for_request(&req)
                    .into_response::<axum::body::Body>()
            }),
        )
        .layer(CorrelationIdLayer::new())
}

#[tokio::test]
async fn axum_keeps_a_valid_client_id_on_both_sides() {
    let addr = serve_axum(app()).await;
    let res = raw_request(
        addr,
        "GET /echo HTTP/1.1\nHost: t\nConnection: close\nX-Correlation-Id: order-42",
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers.get_all("x-correlation-id").iter().count(), 1);
    assert_eq!(res.headers["x-correlation-id"], "order-42");
    assert_eq!(res.headers["x-ext"], "order-42");
    assert_eq!(
        seen_headers(&res.body)["x-correlation-id"],
        serde_json::json!(["order-42"])
    );
}

#[tokio::test]
async fn axum_replaces_junk_ids_with_the_same_new_id_on_both_sides() {
    let addr = serve_axum(app()).await;
    let long = "y".repeat(129);
    for junk in ["", "two words", long.as_str(), "caf\u{e9}"] {
        let head =
            format!("GET /echo HTTP/1.1\nHost: t\nConnection: close\nX-Correlation-Id: {junk}");
        let res = raw_request(addr, &head, b"").await;
        assert_eq!(res.status, 200, "{junk:?}");
        let returned = res.headers["x-correlation-id"].to_str().unwrap().to_owned();
        assert_eq!(returned.len(), 36, "{junk:?}");
        assert_eq!(res.headers["x-ext"], returned.as_str());
        assert_eq!(
            seen_headers(&res.body)["x-correlation-id"],
            serde_json::json!([returned])
        );
    }
}

#[tokio::test]
async fn axum_rejection_carries_the_id_in_header_and_body() {
    let addr = serve_axum(app()).await;
    let res = raw_request(
        addr,
        "GET /refused?api_key=secret HTTP/1.1\nHost: t\nConnection: close\nX-Correlation-Id: trace-7",
        b"",
    )
    .await;
    assert_eq!(res.status, 403);
    assert_eq!(res.headers["content-type"], "application/problem+json");
    assert_eq!(res.headers["x-correlation-id"], "trace-7");
    let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(body["status"], 403);
    assert_eq!(body["title"], "Forbidden");
    assert_eq!(body["correlation_id"], "trace-7");
    assert_eq!(body["instance"], "/refused");
    assert!(!String::from_utf8_lossy(&res.body).contains("secret"));
}

#[tokio::test]
async fn hyper_server_sends_the_generated_id_upstream_and_back() {
    let svc = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(headers_json(
                req.headers(),
            )))))
        });
    let addr = serve_hyper(svc).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = raw_request(addr, "GET / HTTP/1.1\nHost: t\nConnection: close", b"").await;
        let id = res.headers["x-correlation-id"].to_str().unwrap().to_owned();
        assert_eq!(
            seen_headers(&res.body)["x-correlation-id"],
            serde_json::json!([id.clone()])
        );
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "every request gets its own ID");
}
