//! Every answer of the contract (§3) and the policies' headers (§4) over HTTP/2, both h2c
//! with prior knowledge on a plaintext listener and h2 over TLS by ALPN, as over HTTP/1.1;
//! and HTTP/1.1 beside h2c on the same plaintext listener.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::net::{TcpListener, TcpStream};
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, GatewayBuilder, Route};
use tower_gateway::rate_limit::Quota;
use tower_gateway::server::Server;
use tower_gateway::tls::ServerTls;

use common::tls::{Answer, Conn, Pki, client_config, serve_gateway, tls_connect};

const KEY: &str = "h2-key";

/// The contract's gateway: auth on, and a route per answer to provoke.
async fn gateway() -> GatewayBuilder {
    let (upstream, _) = common::upstream::start(false).await;
    let (failing, switch) = common::switch::start().await;
    switch.set_status(500);
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    Gateway::builder()
        .auth(KeySet::new().key("h2-client", KEY))
        .request_body_timeout(Duration::from_millis(300))
        .route("/api", Route::to([format!("http://{upstream}")]))
        .route(
            "/limited",
            Route::to([format!("http://{upstream}")])
                .rate_limit(Quota::new(1, Duration::from_secs(60)).unwrap()),
        )
        .route(
            "/slow",
            Route::to([format!("http://{upstream}")]).timeout(Duration::from_millis(100)),
        )
        .route(
            "/one",
            Route::to([format!("http://{upstream}")])
                .bulkhead(std::num::NonZeroUsize::new(1).unwrap()),
        )
        .route("/down", Route::to([format!("http://{closed_addr}")]))
        .route(
            "/broken",
            Route::to([format!("http://{failing}")]).circuit_breaker(
                std::num::NonZeroU32::new(1).unwrap(),
                Duration::from_secs(60),
            ),
        )
}

fn get(base: &str, path: &str) -> http::request::Builder {
    Request::get(format!("{base}{path}")).header("x-api-key", KEY)
}

fn assert_problem(answer: &Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text());
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "{what}"
    );
    assert!(answer.headers.contains_key("x-correlation-id"), "{what}");
    let problem = answer.json();
    assert_eq!(problem["status"], status, "{what}");
    assert!(problem["correlation_id"].is_string(), "{what}");
}

/// Runs the contract's answers on connections `open` makes, each speaking HTTP/2.
async fn every_answer<F, Fut>(base: &str, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Conn>,
{
    let mut conn = open().await;
    let none = Full::<Bytes>::default;

    // An upstream answer, streamed through; the correlation ID comes back.
    let answer = conn
        .send(
            get(base, "/api/echo")
                .header("x-correlation-id", "h2-corr")
                .body(none())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["x-correlation-id"], "h2-corr");
    let seen = answer.json();
    assert_eq!(seen["uri"], "/echo");
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "the key goes no further"
    );

    // 404, 401 (with its challenge), 400 for a `..` segment.
    let missing = conn
        .send(get(base, "/nope").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&missing, 404, "no route");
    let anonymous = conn
        .send(
            Request::get(format!("{base}/api/echo"))
                .body(none())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_problem(&anonymous, 401, "no key");
    assert_eq!(
        anonymous.headers["www-authenticate"],
        "ApiKey header=\"x-api-key\""
    );
    let dots = conn
        .send(get(base, "/api/%2e%2e/secret").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&dots, 400, "dot-dot");

    // 429 with the rate-limit headers and Retry-After.
    let first = conn
        .send(get(base, "/limited/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-policy"], "\"default\";q=1;w=60");
    assert!(
        first.headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";r=0;")
    );
    let limited = conn
        .send(get(base, "/limited/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&limited, 429, "rate limit");
    assert!(limited.headers.contains_key("retry-after"));
    assert!(limited.headers.contains_key("ratelimit"));

    // 504 (per-attempt timeout) and 502 (unreachable).
    let slow = conn
        .send(get(base, "/slow/slow?ms=2000").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&slow, 504, "timeout");
    let down = conn
        .send(get(base, "/down/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&down, 502, "unreachable");

    // An upstream 500 passes through; then the breaker is open: 503.
    let failed = conn
        .send(get(base, "/broken/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_eq!(failed.status, 500);
    let open_circuit = conn
        .send(get(base, "/broken/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&open_circuit, 503, "circuit open");

    // The bulkhead: one slow request holds the only slot; another stream gets 429 at once.
    let mut holder = open().await;
    let held = {
        let req = get(base, "/one/slow?ms=1500").body(none()).unwrap();
        tokio::spawn(async move { holder.send(req).await.unwrap().status })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let full = conn
        .send(get(base, "/one/x").body(none()).unwrap())
        .await
        .unwrap();
    assert_problem(&full, 429, "bulkhead");
    assert!(!full.headers.contains_key("retry-after"));
    assert_eq!(held.await.unwrap(), 200);

    // 431: more than 100 header fields (HTTP/2 frames only bound their size).
    let mut many = get(base, "/api/echo");
    for i in 0..101 {
        many = many.header(format!("x-h{i}"), "1");
    }
    let answer = conn.send(many.body(none()).unwrap()).await.unwrap();
    assert_eq!(answer.status, 431);
    // Cookies split one field each (as HTTP/2 clients do) are one field again, for the
    // layers and for an HTTP/1.1 upstream (RFC 9113 §8.2.3).
    let mut crumbs = get(base, "/api/echo");
    for i in 0..120 {
        crumbs = crumbs.header("cookie", format!("c{i}=v"));
    }
    let answer = conn.send(crumbs.body(none()).unwrap()).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let cookie = &answer.json()["headers"]["cookie"];
    let joined = (0..120)
        .map(|i| format!("c{i}=v"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        cookie,
        &serde_json::json!([joined]),
        "one cookie field upstream"
    );
    // ... and a header block over 64 KiB.
    let big = get(base, "/api/echo")
        .header("x-big", "a".repeat(70 * 1024))
        .body(none())
        .unwrap();
    let mut fresh = open().await;
    match fresh.send(big).await {
        Ok(answer) => assert_eq!(answer.status, 431),
        // A client may also be told to go away for it: never a 5xx.
        Err(error) => assert!(!error.to_string().is_empty()),
    }

    // 408: a body that stalls before the response head.
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = Request::post(format!("{base}/api/echo"))
        .header("x-api-key", KEY)
        .body(body)
        .unwrap();
    let mut stalled = open().await;
    let sent = tokio::spawn(async move { stalled.send(req).await });
    tx.send_data(Bytes::from_static(b"partial")).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("the gateway answers a stalled body")
        .unwrap()
        .unwrap();
    assert_problem(&answer, 408, "stalled body");
    drop(tx);

    // A request body streams through, and the upstream sees all of it.
    let payload = Bytes::from(vec![7u8; 300_000]);
    let answer = conn
        .send(
            Request::post(format!("{base}/api/echo"))
                .header("x-api-key", KEY)
                .body(Full::new(payload))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["body_len"], 300_000);
}

#[tokio::test]
async fn every_answer_of_the_contract_holds_over_h2c() {
    let addr = serve_gateway(gateway().await, None).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    every_answer(&base, || async move {
        Conn::open(TcpStream::connect(addr).await.unwrap(), true).await
    })
    .await;
}

#[tokio::test]
async fn every_answer_of_the_contract_holds_over_h2_on_tls() {
    let pki = Pki::new();
    let server = pki.server("server", &["localhost"]);
    let tls = ServerTls::builder(&server.cert, &server.key)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway().await, Some(tls)).await;
    let base = format!("https://localhost:{}", addr.port());
    let config = client_config(&pki, None, &[b"h2"]);
    every_answer(&base, || {
        let config = config.clone();
        async move {
            let stream = tls_connect(addr, "localhost", config).await.unwrap();
            Conn::open(stream, true).await
        }
    })
    .await;
}

#[tokio::test]
async fn http1_and_h2c_share_a_plaintext_listener_and_h2c_can_be_turned_off() {
    let (upstream, record) = common::upstream::start(false).await;
    let builder = || Gateway::builder().route("/api", Route::to([format!("http://{upstream}")]));
    let addr = serve_gateway(builder(), None).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    for h2 in [false, true, false, true] {
        let mut conn = Conn::open(TcpStream::connect(addr).await.unwrap(), h2).await;
        let answer = conn.get(&format!("{base}/api/echo")).await;
        assert_eq!(answer.status, 200, "h2={h2}");
        // The upstream hears HTTP/1.1 either way.
        let seen = record.last();
        assert_eq!(seen.uri, "/echo");
    }

    // With h2c off, the HTTP/2 preface is not understood: no HTTP/2 exchange.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let off = listener.local_addr().unwrap();
    tokio::spawn(Server::new().http2_cleartext(false).serve(
        listener,
        builder().build().unwrap(),
        std::future::pending(),
    ));
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(off).await.unwrap());
    let refused = async {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let req = Request::get(format!("http://127.0.0.1:{}/api/echo", off.port()))
            .body(Full::<Bytes>::default())
            .unwrap();
        send.send_request(req).await
    };
    let result = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the connection ends");
    assert!(result.is_err());
    let mut conn = Conn::open(TcpStream::connect(off).await.unwrap(), false).await;
    assert_eq!(
        conn.get(&format!("http://127.0.0.1:{}/api/echo", off.port()))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn trailers_and_te_trailers_pass_through_h2c_to_an_h2c_upstream() {
    // An h2c upstream that answers with trailers and reports the TE it was sent.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let te = req
                            .headers()
                            .get("te")
                            .map_or("none", |v| v.to_str().unwrap())
                            .to_owned();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-te-seen", te.parse().unwrap());
                        let frames = futures_util::stream::iter([
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                Bytes::from_static(b"body"),
                            )),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ]);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::StreamBody::new(frames),
                        ))
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    let addr = serve_gateway(
        Gateway::builder().route("/grpc", Route::to([format!("h2c://{upstream}")])),
        None,
    )
    .await;
    let mut conn = Conn::open(TcpStream::connect(addr).await.unwrap(), true).await;
    let req = Request::post(format!("http://127.0.0.1:{}/grpc/svc/Method", addr.port()))
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let answer = conn.send(req).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "body");
    let trailers = answer.trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-te-seen"], "trailers");
    let _ = BodyExt::boxed(Full::<Bytes>::default());
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_a_goaway_whatever_pings_come() {
    let (upstream, _) = common::upstream::start(false).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::builder()
        .route("/api", Route::to([format!("http://{upstream}")]))
        .build()
        .unwrap();
    tokio::spawn(
        Server::new()
            .idle_timeout(Duration::from_millis(400))
            .http2_keep_alive(Some(Duration::from_millis(100)), Duration::from_secs(1))
            .serve(listener, gateway, std::future::pending()),
    );
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            // The client pings too: neither side's pings count as activity.
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake::<_, Full<Bytes>>(io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let started = tokio::time::Instant::now();
    let req = Request::get(format!("http://127.0.0.1:{}/api/x", addr.port()))
        .body(Full::default())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    let ended = tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    // A GOAWAY ends the connection cleanly: no error on the client's side.
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn requests_spread_over_the_http2_connections_allowed_to_an_upstream() {
    // An h2c upstream that counts its connections.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    let addr = common::gauge::serve_gateway(
        Gateway::builder()
            .client(
                tower_gateway::proxy::ProxyClientBuilder::new()
                    .http2_connections(std::num::NonZeroUsize::new(3).unwrap()),
            )
            .route("/grpc", Route::to([format!("h2c://{upstream}")])),
    )
    .await;
    let mut conn = Conn::open(TcpStream::connect(addr).await.unwrap(), true).await;
    for _ in 0..9 {
        let answer = conn
            .get(&format!("http://127.0.0.1:{}/grpc/x", addr.port()))
            .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
