//! `HopByHopLayer` (with `CorrelationIdLayer`) through real sockets: axum and a plain hyper
//! server, checking the headers on both sides of the wire.

mod common;

use std::convert::Infallible;

use axum::routing::any;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceBuilder;
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::hop_by_hop::HopByHopLayer;

use common::{headers_json, raw_request, seen_headers, serve_axum, serve_hyper};

/// Hop-by-hop headers the handler adds to its response, all of which must be stripped.
const UPSTREAM_HOP: [(&str, &str); 6] = [
    ("connection", "x-upstream-hop"),
    ("x-upstream-hop", "secret-topology"),
    ("keep-alive", "timeout=99"),
    ("proxy-authenticate", "Basic realm=\"inner\""),
    ("trailer", "x-checksum"),
    ("upgrade", "h2c"),
];

fn upstream_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in UPSTREAM_HOP {
        headers.append(name, value.parse().unwrap());
    }
    headers.insert("x-end-to-end", "kept".parse().unwrap());
    headers
}

const REQUEST: &str = "POST /echo HTTP/1.1
Host: t
Connection: close, x-client-hop, X-Correlation-Id
X-Client-Hop: drop-me
Keep-Alive: timeout=5
Proxy-Authorization: Basic Zm9vOmJhcg==
Proxy-Connection: keep-alive
TE: deflate;q=0.5, gzip
Trailer: x-sum
Upgrade: h2c
Transfer-Encoding: chunked
X-Correlation-Id: corr-1
X-End-To-End: yes";

const CHUNKED_BODY: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";

fn assert_request_stripped(seen: &serde_json::Map<String, serde_json::Value>) {
    for gone in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the handler: {seen:?}"
        );
    }
    assert_eq!(seen["x-end-to-end"], serde_json::json!(["yes"]));
    // Protected: a client cannot strip the correlation header by naming it in Connection.
    assert_eq!(seen["x-correlation-id"], serde_json::json!(["corr-1"]));
}

fn assert_response_stripped(res: &common::RawResponse) {
    for gone in [
        "x-upstream-hop",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !res.headers.contains_key(gone),
            "{gone} reached the client: {:?}",
            res.headers
        );
    }
    // hyper may add its own `connection: close` for this hop; the upstream's value is gone.
    for value in res.headers.get_all("connection") {
        assert!(!value.to_str().unwrap().contains("x-upstream-hop"));
    }
    assert_eq!(res.headers["x-end-to-end"], "kept");
    assert_eq!(res.headers["x-correlation-id"], "corr-1");
}

#[tokio::test]
async fn axum_router_strips_both_directions() {
    // The form of the issue: no error handling needed, whichever order.
    let app = axum::Router::new()
        .route(
            "/echo",
            any(|req: axum::extract::Request| async move {
                let seen = headers_json(req.headers());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, "hello", "the chunked body still arrives whole");
                (upstream_headers(), seen)
            }),
        )
        .layer(HopByHopLayer::new())
        .layer(CorrelationIdLayer::new());
    let addr = serve_axum(app).await;

    let res = raw_request(addr, REQUEST, CHUNKED_BODY).await;
    assert_eq!(res.status, 200);
    assert_request_stripped(&seen_headers(&res.body));
    assert_response_stripped(&res);
}

#[tokio::test]
async fn axum_router_in_the_issue_form_compiles_and_works() {
    let app = axum::Router::new()
        .route(
            "/echo",
            any(|req: axum::extract::Request| async move {
                (upstream_headers(), headers_json(req.headers()))
            }),
        )
        .layer(CorrelationIdLayer::new())
        .layer(HopByHopLayer::new());
    let addr = serve_axum(app).await;
    let res = raw_request(addr, REQUEST, CHUNKED_BODY).await;
    assert_eq!(res.status, 200);
    assert_request_stripped(&seen_headers(&res.body));
    assert_response_stripped(&res);
}

#[tokio::test]
async fn hyper_server_strips_both_directions() {
    let svc = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(HopByHopLayer::new())
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            let seen = headers_json(req.headers());
            let mut res = Response::new(Full::new(Bytes::from(seen)));
            *res.headers_mut() = upstream_headers();
            Ok::<_, Infallible>(res)
        });
    let addr = serve_hyper(svc).await;
    let res = raw_request(addr, REQUEST, CHUNKED_BODY).await;
    assert_eq!(res.status, 200);
    assert_request_stripped(&seen_headers(&res.body));
    assert_response_stripped(&res);
}

#[tokio::test]
async fn websocket_upgrade_headers_pass_and_the_101_keeps_them() {
    let svc = ServiceBuilder::new()
        .layer(HopByHopLayer::new())
        .service_fn(|req: Request<hyper::body::Incoming>| async move {
            let is_ws = req
                .headers()
                .get("upgrade")
                .is_some_and(|v| v == "websocket")
                && req
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "upgrade")
                && req.headers().get("keep-alive").is_none();
            let res = Response::builder()
                .status(if is_ws { 101 } else { 400 })
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(Full::new(Bytes::new()))
                .unwrap();
            Ok::<_, Infallible>(res)
        });
    let addr = serve_hyper(svc).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\nKeep-Alive: 5\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nsec-websocket-accept: "), "{head}");
}
