//! TLS through real sockets, with certificates the tests make: HTTPS termination over
//! HTTP/1.1 and HTTP/2 (ALPN), SNI, certificate reload on disk, client certificates (mTLS)
//! and the identity they give the rate limiter and auth, and `https://` and `h2c://`
//! upstreams (with a client certificate to an upstream that wants one).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower_gateway::api_key::KeySet;
use tower_gateway::builder::{Gateway, GatewayBuilder, Route};
use tower_gateway::rate_limit::Quota;
use tower_gateway::tls::{ServerTls, TlsError, UpstreamTls};

use common::tls::{
    Conn, Pki, Speaks, client_config, echo_upstream, presented_names, replace_file,
    resuming_client_config, server_config, tls_connect,
};

/// Serves `builder`'s gateway over TLS with `tls`.
async fn serve_gateway_tls(builder: GatewayBuilder, tls: ServerTls) -> SocketAddr {
    common::tls::serve_gateway(builder, Some(tls)).await
}

async fn https_conn(addr: SocketAddr, pki: &Pki, h2: bool) -> Conn {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let stream = tls_connect(addr, "localhost", client_config(pki, None, alpn))
        .await
        .unwrap();
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(negotiated.as_deref(), Some(alpn[0]), "ALPN");
    Conn::open(stream, h2).await
}

#[tokio::test]
async fn https_through_the_gateway_over_http1_and_http2_tells_the_upstream_it_was_https() {
    let pki = Pki::new();
    let server = pki.server("server", &["localhost", "127.0.0.1"]);
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let tls = ServerTls::builder(&server.cert, &server.key)
        .build()
        .unwrap();
    let addr = serve_gateway_tls(
        Gateway::builder().route("/api", Route::to([format!("http://{upstream}")])),
        tls,
    )
    .await;

    for h2 in [false, true] {
        let mut conn = https_conn(addr, &pki, h2).await;
        let answer = conn
            .get(&format!("https://localhost:{}/api/echo", addr.port()))
            .await;
        assert_eq!(answer.status, 200, "h2={h2}: {}", answer.text());
        let seen = answer.json();
        assert_eq!(seen["path"], "/echo");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "h2={h2}");
        assert_eq!(seen["headers"]["host"], upstream.to_string());
        assert_eq!(
            seen["headers"]["x-forwarded-host"],
            format!("localhost:{}", addr.port()),
            "h2={h2}"
        );
        // The gateway's own answers are the same over both.
        let missing = conn
            .get(&format!("https://localhost:{}/nope", addr.port()))
            .await;
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.headers["content-type"], "application/problem+json",
            "h2={h2}"
        );
        // A second request on the same connection: keep-alive (or a second stream).
        let again = conn
            .get(&format!("https://localhost:{}/api/echo", addr.port()))
            .await;
        assert_eq!(again.status, 200);
    }

    // A plaintext request to a TLS listener gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET /api/echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf),
    )
    .await
    .expect("the listener closes a connection that does not speak TLS");
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_that_names_the_host_and_the_default_otherwise() {
    let pki = Pki::new();
    let default = pki.server("default", &["localhost"]);
    let a = pki.server("a", &["a.example.test"]);
    let wild = pki.server("wild", &["*.b.example.test"]);
    let tls = ServerTls::builder(&default.cert, &default.key)
        .certificate(&a.cert, &a.key)
        .certificate(&wild.cert, &wild.key)
        .build()
        .unwrap();
    assert_eq!(tls.certificates().len(), 3);
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder().route("/api", Route::to([format!("http://{upstream}")])),
        tls,
    )
    .await;

    let config = client_config(&pki, None, &[b"http/1.1"]);
    for (sni, want) in [
        ("a.example.test", "DNSName(a.example.test)"),
        ("x.b.example.test", "DNSName(*.b.example.test)"),
        ("localhost", "DNSName(localhost)"),
    ] {
        let stream = tls_connect(addr, sni, config.clone()).await.unwrap();
        assert_eq!(presented_names(&stream), [want], "SNI {sni}");
        let mut conn = Conn::open(stream, false).await;
        let answer = conn.get(&format!("https://{sni}/api/echo")).await;
        assert_eq!(answer.status, 200);
    }
    // A name no certificate has gets the default, which the client then refuses.
    let refused = tls_connect(addr, "other.example.test", config).await;
    assert!(
        refused.is_err(),
        "the default certificate does not name other.example.test"
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_serves_new_connections_and_a_bad_one_is_refused() {
    let pki = Pki::new();
    let first = pki.server("server", &["localhost", "first.example.test"]);
    let tls = ServerTls::builder(&first.cert, &first.key).build().unwrap();
    tokio::spawn(tls.watch(Duration::from_millis(50)));
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder().route("/api", Route::to([format!("http://{upstream}")])),
        tls.clone(),
    )
    .await;
    let config = client_config(&pki, None, &[b"http/1.1"]);
    let url = format!("https://localhost:{}/api/echo", addr.port());

    let old_stream = tls_connect(addr, "localhost", config.clone())
        .await
        .unwrap();
    assert!(presented_names(&old_stream).contains(&"DNSName(first.example.test)".to_owned()));
    let mut old = Conn::open(old_stream, false).await;
    assert_eq!(old.get(&url).await.status, 200);

    // A new pair, written over the files (the key first, as a deploy might).
    let second = pki.server("second", &["localhost", "second.example.test"]);
    replace_file(&first.key, &second.key_pem);
    replace_file(&first.cert, &second.cert_pem);
    let mut served = Vec::new();
    for _ in 0..100 {
        let stream = tls_connect(addr, "localhost", config.clone())
            .await
            .unwrap();
        served = presented_names(&stream);
        if served.contains(&"DNSName(second.example.test)".to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served.contains(&"DNSName(second.example.test)".to_owned()),
        "the new certificate is served: {served:?}"
    );
    assert_eq!(
        tls.certificates()[0].names,
        ["localhost", "second.example.test"]
    );
    // The connection opened before the swap still serves.
    assert_eq!(old.get(&url).await.status, 200);

    // A key that is not the certificate's: refused, the second pair keeps serving.
    let third = pki.server("third", &["localhost", "third.example.test"]);
    replace_file(&first.cert, &third.cert_pem);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stream = tls_connect(addr, "localhost", config.clone())
        .await
        .unwrap();
    assert!(presented_names(&stream).contains(&"DNSName(second.example.test)".to_owned()));
    let mut conn = Conn::open(stream, false).await;
    assert_eq!(conn.get(&url).await.status, 200);
    assert!(matches!(tls.reload(), Err(TlsError::KeyMismatch { .. })));
    // Junk in the certificate file: refused too.
    replace_file(&first.cert, "not a certificate\n");
    assert!(matches!(tls.reload(), Err(TlsError::NoCertificate(_))));
    let stream = tls_connect(addr, "localhost", config.clone())
        .await
        .unwrap();
    assert!(presented_names(&stream).contains(&"DNSName(second.example.test)".to_owned()));
    // The matching pair again: accepted by an explicit reload (what SIGHUP calls).
    replace_file(&first.key, &third.key_pem);
    replace_file(&first.cert, &third.cert_pem);
    tls.reload().unwrap();
    let stream = tls_connect(addr, "localhost", config).await.unwrap();
    assert!(presented_names(&stream).contains(&"DNSName(third.example.test)".to_owned()));
}

#[tokio::test]
async fn sessions_resume_over_tls_1_3_and_1_2_also_after_a_reload() {
    let pki = Pki::new();
    let server = pki.server("server", &["localhost"]);
    let tls = ServerTls::builder(&server.cert, &server.key)
        .build()
        .unwrap();
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder().route("/api", Route::to([format!("http://{upstream}")])),
        tls.clone(),
    )
    .await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = resuming_client_config(&pki, version, None);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let stream = tls_connect(addr, "localhost", config.clone())
                .await
                .unwrap();
            kinds.push(stream.get_ref().1.handshake_kind());
            let mut conn = Conn::open(stream, false).await;
            let answer = conn
                .get(&format!("https://localhost:{}/api/x", addr.port()))
                .await;
            assert_eq!(answer.status, 200);
            tls.reload().unwrap();
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(
            kinds,
            [Some(Full), Some(Resumed), Some(Resumed)],
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_pair_is_refused_at_build_with_the_file_named() {
    let pki = Pki::new();
    let a = pki.server("a", &["localhost"]);
    let b = pki.server("b", &["localhost"]);
    let error = ServerTls::builder(&a.cert, &b.key).build().unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let error = ServerTls::builder(pki.dir.join("missing.crt"), &a.key)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("missing.crt"), "{error}");
    let error = ServerTls::builder(&a.cert, &a.key)
        .client_ca(&a.key)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("no certificate"), "{error}");
}

fn mtls(pki: &Pki) -> ServerTls {
    let server = pki.server("server", &["localhost"]);
    ServerTls::builder(&server.cert, &server.key)
        .client_ca(pki.ca_path())
        .build()
        .unwrap()
}

async fn mtls_get(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&common::tls::Issued>,
    path: &str,
) -> Result<common::tls::Answer, String> {
    let config = client_config(pki, client, &[b"h2"]);
    let stream = tls_connect(addr, "localhost", config)
        .await
        .map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    // TLS 1.3 finishes the client's side of the handshake before the server has judged its
    // certificate: a refusal shows on the first exchange.
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = res.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    Ok(common::tls::Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        trailers: None,
    })
}

#[tokio::test]
async fn client_certificates_are_required_and_their_name_is_the_rate_limit_identity() {
    let pki = Pki::new();
    let tls = mtls(&pki);
    assert!(tls.requires_client_certificates());
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder().route(
            "/api",
            Route::to([format!("http://{upstream}")])
                .rate_limit(Quota::new(2, Duration::from_secs(60)).unwrap()),
        ),
        tls,
    )
    .await;

    let alice = pki.client("alice", "alice");
    let bob = pki.client("bob", "bob");
    // From the same address, each certificate has its own budget of 2.
    for who in [&alice, &bob] {
        for n in 0..2 {
            let answer = mtls_get(addr, &pki, Some(who), "/api/echo").await.unwrap();
            assert_eq!(answer.status, 200, "request {n}");
            let left = answer.headers["ratelimit"].to_str().unwrap().to_owned();
            assert!(
                left.starts_with(&format!("\"default\";r={};", 1 - n)),
                "{left}"
            );
        }
        let limited = mtls_get(addr, &pki, Some(who), "/api/echo").await.unwrap();
        assert_eq!(limited.status, 429);
    }

    // No certificate, or one from another CA: no HTTP exchange at all.
    let error = mtls_get(addr, &pki, None, "/api/echo").await.unwrap_err();
    assert!(!error.is_empty());
    let stranger_pki = Pki::new();
    let stranger = stranger_pki.client("mallory", "mallory");
    assert!(
        mtls_get(addr, &pki, Some(&stranger), "/api/echo")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_resumed_session_is_verified_again_so_a_ca_taken_out_locks_its_clients_out() {
    let pki = Pki::new();
    let server = pki.server("server", &["localhost"]);
    // The client CA file: this PKI's CA, and then another's.
    let ca_file = pki.dir.join("clients.pem");
    std::fs::copy(pki.ca_path(), &ca_file).unwrap();
    let tls = ServerTls::builder(&server.cert, &server.key)
        .client_ca(&ca_file)
        .build()
        .unwrap();
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder().route("/api", Route::to([format!("http://{upstream}")])),
        tls.clone(),
    )
    .await;
    let alice = pki.client("alice", "alice");
    let url = format!("https://localhost:{}/api/echo", addr.port());
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        std::fs::copy(pki.ca_path(), &ca_file).unwrap();
        tls.reload().unwrap();
        let config = resuming_client_config(&pki, version, Some(&alice));
        // A full handshake, then a resumed one: both served.
        for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let stream = tls_connect(addr, "localhost", config.clone())
                .await
                .unwrap();
            assert_eq!(
                stream.get_ref().1.handshake_kind(),
                Some(kind),
                "{version:?}"
            );
            let mut conn = Conn::open(stream, false).await;
            let answer = conn.get(&url).await;
            assert_eq!(answer.status, 200, "{version:?} {kind:?}");
        }
        // The CA is replaced by another: the session alice resumes is refused.
        let other = Pki::new();
        std::fs::copy(other.ca_path(), &ca_file).unwrap();
        tls.reload().unwrap();
        let stream = tls_connect(addr, "localhost", config.clone()).await;
        let refused = match stream {
            Err(_) => true,
            Ok(stream) => {
                let io = hyper_util::rt::TokioIo::new(stream);
                match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await {
                    Err(_) => true,
                    Ok((mut send, conn)) => {
                        tokio::spawn(conn);
                        let req = Request::get(url.as_str()).body(Full::default()).unwrap();
                        send.send_request(req).await.is_err()
                    }
                }
            }
        };
        assert!(refused, "{version:?}: a resumed session outlived its CA");
    }
}

#[tokio::test]
async fn with_auth_on_a_verified_certificate_authenticates_and_a_sent_key_still_counts() {
    let pki = Pki::new();
    let tls = mtls(&pki);
    let upstream = echo_upstream(Speaks::Http1, None).await;
    let addr = serve_gateway_tls(
        Gateway::builder()
            .auth(KeySet::new().key("svc", "svc-key"))
            .auth_client_certificates(true)
            .route("/api", Route::to([format!("http://{upstream}")])),
        tls,
    )
    .await;
    let alice = pki.client("alice", "alice");
    let answer = mtls_get(addr, &pki, Some(&alice), "/api/echo")
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());

    // A wrong key is refused even with a good certificate.
    let config = client_config(&pki, Some(&alice), &[b"http/1.1"]);
    let stream = tls_connect(addr, "localhost", config).await.unwrap();
    let mut conn = Conn::open(stream, false).await;
    let req = Request::get(format!("https://localhost:{}/api/echo", addr.port()))
        .header("x-api-key", "wrong")
        .body(Full::default())
        .unwrap();
    assert_eq!(conn.send(req).await.unwrap().status, 401);
    let req = Request::get(format!("https://localhost:{}/api/echo", addr.port()))
        .header("x-api-key", "svc-key")
        .body(Full::default())
        .unwrap();
    let answer = conn.send(req).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.json()["headers"].get("x-api-key").is_none());
}

#[tokio::test]
async fn https_and_h2c_upstreams_are_spoken_to_in_http2_and_a_client_certificate_is_shown() {
    let pki = Pki::new();
    let upstream_cert = pki.server("upstream", &["127.0.0.1"]);
    let gateway_client = pki.client("gateway", "gateway");
    // An https upstream that requires a client certificate from this CA and offers h2.
    let https = echo_upstream(
        Speaks::Http1,
        Some(server_config(
            &upstream_cert,
            &[b"h2", b"http/1.1"],
            Some(&pki),
        )),
    )
    .await;
    // One that speaks only HTTP/1.1 over TLS.
    let https1 = echo_upstream(
        Speaks::Http1,
        Some(server_config(&upstream_cert, &[b"http/1.1"], None)),
    )
    .await;
    let h2c = echo_upstream(Speaks::H2c, None).await;
    let upstream_tls = UpstreamTls::new()
        .ca(pki.ca_path())
        .client_certificate(&gateway_client.cert, &gateway_client.key);
    let addr = common::gauge::serve_gateway(
        Gateway::builder()
            .route(
                "/tls",
                Route::to([format!("https://{https}")]).upstream_tls(upstream_tls.clone()),
            )
            .route(
                "/tls1",
                Route::to([format!("https://{https1}")]).upstream_tls(upstream_tls),
            )
            .route("/h2c", Route::to([format!("h2c://{h2c}")])),
    )
    .await;

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = Conn::open(stream, false).await;
    let base = format!("http://127.0.0.1:{}", addr.port());
    let answer = conn.get(&format!("{base}/tls/echo")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = answer.json();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["client_name"], "gateway");
    assert_eq!(seen["path"], "/echo");

    let seen = conn.get(&format!("{base}/tls1/echo")).await.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"], https1.to_string());

    let answer = conn.get(&format!("{base}/h2c/echo")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = answer.json();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn an_upstream_whose_certificate_does_not_verify_is_a_502_and_a_bad_ca_file_refuses_the_build()
 {
    let pki = Pki::new();
    let other = Pki::new();
    let upstream_cert = other.server("upstream", &["127.0.0.1"]);
    let https = echo_upstream(
        Speaks::Http1,
        Some(server_config(&upstream_cert, &[b"http/1.1"], None)),
    )
    .await;
    let addr = common::gauge::serve_gateway(Gateway::builder().route(
        "/tls",
        Route::to([format!("https://{https}")]).upstream_tls(UpstreamTls::new().ca(pki.ca_path())),
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = Conn::open(stream, false).await;
    let answer = conn
        .get(&format!("http://127.0.0.1:{}/tls/echo", addr.port()))
        .await;
    assert_eq!(answer.status, 502, "{}", answer.text());

    let error = Gateway::<hyper::body::Incoming>::builder()
        .route(
            "/tls",
            Route::to([format!("https://{https}")])
                .upstream_tls(UpstreamTls::new().ca(pki.dir.join("missing.pem"))),
        )
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

/// The state, probes and probe failures of the endpoint at `url` of `prefix`'s pool.
fn endpoint(gateway: &Gateway, prefix: &str, url: &str) -> (String, u64, u64) {
    let (_, pool) = gateway.pools().find(|(p, _)| *p == prefix).unwrap();
    let status = pool.status();
    let e = status.endpoints.iter().find(|e| e.url == url).unwrap();
    (e.state.to_owned(), e.probes, e.probe_failures)
}

#[tokio::test]
async fn probes_speak_tls_and_h2c_and_an_upstream_that_fails_verification_is_at_fault() {
    use tower_gateway::upstream::{ActiveHealth, PassiveHealth};
    let pki = Pki::new();
    let stranger = Pki::new();
    let trusted = pki.server("trusted", &["127.0.0.1"]);
    let untrusted = stranger.server("untrusted", &["127.0.0.1"]);
    let good = format!(
        "https://{}",
        echo_upstream(
            Speaks::Http1,
            Some(server_config(&trusted, &[b"h2", b"http/1.1"], None))
        )
        .await
    );
    let bad = format!(
        "https://{}",
        echo_upstream(
            Speaks::Http1,
            Some(server_config(&untrusted, &[b"http/1.1"], None))
        )
        .await
    );
    let h2c = format!("h2c://{}", echo_upstream(Speaks::H2c, None).await);
    let active = ActiveHealth::new("/health")
        .interval(Duration::from_millis(50))
        .healthy_threshold(1)
        .unhealthy_threshold(2);
    let tls = UpstreamTls::new().ca(pki.ca_path());
    let gateway: Gateway = Gateway::builder()
        .route(
            "/probed",
            Route::to([good.clone(), bad.clone()])
                .upstream_tls(tls.clone())
                .active_health(active.clone()),
        )
        .route("/h2c", Route::to([h2c.clone()]).active_health(active))
        .route(
            "/passive",
            Route::to([good.clone(), bad.clone()])
                .upstream_tls(tls)
                .passive_health(PassiveHealth::new().consecutive_failures(1)),
        )
        .build()
        .unwrap();

    // The probes verify the upstream as the proxy does, and speak h2c to an h2c one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = endpoint(&gateway, "/probed", &good).1 >= 3
            && endpoint(&gateway, "/probed", &bad).0 == "unhealthy"
            && endpoint(&gateway, "/h2c", &h2c).1 >= 3;
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (state, _, failures) = endpoint(&gateway, "/probed", &good);
    assert_eq!((state.as_str(), failures), ("healthy", 0));
    assert!(endpoint(&gateway, "/probed", &bad).2 >= 2);
    let (state, _, failures) = endpoint(&gateway, "/h2c", &h2c);
    assert_eq!((state.as_str(), failures), ("healthy", 0));

    // A certificate that does not verify is the upstream's failure: a 502 that ejects it.
    let addr = common::tls::serve_gateway_built(gateway.clone(), None).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = Conn::open(stream, false).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = conn
            .get(&format!("http://127.0.0.1:{}/passive/x", addr.port()))
            .await;
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(endpoint(&gateway, "/passive", &bad).0, "ejected");
}
