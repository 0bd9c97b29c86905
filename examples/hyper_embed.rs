//! The whole gateway served by a plain hyper 1.x server loop, no axum and no
//! `tower_gateway::server`: what to write when you own the accept loop (your own TLS, your own
//! connection limits, your own shutdown).
//!
//! The one thing the loop must do for the gateway is to put the peer's address into each
//! request as a [`PeerAddr`] extension: the rate limiter keys clients by it and the proxy
//! sends it upstream in `X-Forwarded-For`. Without it every client would share one budget.
//!
//! `cargo run --example hyper_embed` starts a tiny upstream and the gateway on
//! `127.0.0.1:0`, sends a few requests to itself, prints what came back, and exits 0 (1 when
//! an answer is not the expected one). `cargo run --example hyper_embed -- 127.0.0.1:5070`
//! listens there instead and, after the demo, keeps serving until Ctrl-C:
//! ```text
//! curl -i localhost:5070/api/hello     # 200 from the upstream, with the RateLimit headers
//! curl -i localhost:5070/nowhere       # 404 problem+json from the gateway
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::extensions::PeerAddr;
use tower_gateway::rate_limit::Quota;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1);
    let upstream = start_upstream().await?;

    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([format!("http://{upstream}")])
                .rate_limit(Quota::new(2, Duration::from_secs(60))?)
                .timeout(Duration::from_secs(5)),
        )
        .build()?;

    let listener = TcpListener::bind(listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    println!("gateway listening on {addr}, upstream on {upstream}\n");

    // The accept loop: one task per connection, the gateway cloned into each (a
    // reference-count bump), the peer's address put into every request.
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                })
                .service(gateway.clone());
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .with_upgrades()
                    .await;
                if let Err(error) = served {
                    eprintln!("connection from {peer}: {error}");
                }
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut failed = false;
    for (path, expected) in [
        ("/api/hello", StatusCode::OK),
        ("/api/hello", StatusCode::OK),
        ("/api/hello", StatusCode::TOO_MANY_REQUESTS), // the quota is 2 a minute per client
        ("/nowhere", StatusCode::NOT_FOUND),
    ] {
        let uri = format!("http://{addr}{path}");
        let res = client.get(uri.parse()?).await?;
        let status = res.status();
        let remaining = res
            .headers()
            .get("ratelimit")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        let body = res.into_body().collect().await?.to_bytes();
        let mark = if status == expected { "ok " } else { "BAD" };
        println!(
            "{mark} GET {path} -> {status} (ratelimit: {})\n    {}",
            remaining.as_deref().unwrap_or("-"),
            String::from_utf8_lossy(&body).trim()
        );
        if status != expected {
            failed = true;
        }
        if path == "/api/hello"
            && status == StatusCode::OK
            && !body.starts_with(b"hello, 127.0.0.1")
        {
            println!("BAD the upstream did not see the client in X-Forwarded-For");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
    if listen.is_some() {
        println!("\nserving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// An upstream that greets the client the gateway names in `X-Forwarded-For`.
async fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let client = req
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nobody")
                    .to_owned();
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(format!(
                    "hello, {client} (path {})",
                    req.uri().path()
                ))))
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}
