//! The crate inside a user's own axum app, with no error handling needed: the app's own
//! routes, single layers on plain axum routes, and the whole gateway mounted under `/api`.
//!
//! Run it with `cargo run --example axum_embed`, then:
//! ```text
//! curl -i localhost:3000/echo -H 'connection: x-hint' -H 'x-hint: dropped'
//! curl -i localhost:3000/missing -H 'x-correlation-id: my-trace-1'
//! for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/report; done
//! curl -i localhost:3000/api/demo/ping
//! curl -i localhost:3000/api/elsewhere
//! ```
//! The first answer shows the headers the handler saw (no `connection`, no `x-hint`) and a
//! fresh `x-correlation-id`; the second is a problem+json 404 that carries `my-trace-1`. The
//! loop prints `200 200 200 200 200 429`: `/report` allows each client address 5 requests per
//! 10 seconds (see the `ratelimit` headers), and at most 2 reports are made at once. The
//! fourth goes through the gateway to a demo upstream this example starts on a free port,
//! which sees `/ping`; the fifth is the gateway's own 404, since it has no route there.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use axum::{Router, extract::Request, routing::get};
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::bulkhead::BulkheadLayer;
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::extensions::CorrelationId;
use tower_gateway::hop_by_hop::HopByHopLayer;
use tower_gateway::rate_limit::{Quota, RateLimitLayer};
use tower_gateway::rejection::{Rejection, RejectionKind};

/// A demo upstream on a free port, for the gateway to forward to.
async fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let upstream = Router::new().route(
        "/ping",
        get(|| async { "pong from the demo upstream, which was asked for /ping\n" }),
    );
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The whole gateway (routing, proxy, its per-route policies) as one service in axum's
    // body type. Mounted under `/api`, it sees paths without that prefix: its route `/demo`
    // serves `/api/demo/...`, and forwards `/api/demo/ping` as `/ping`.
    let upstream = start_upstream().await?;
    let gateway = Gateway::<axum::body::Body>::builder()
        .route(
            "/demo",
            Route::to([format!("http://{upstream}")]).timeout(Duration::from_secs(5)),
        )
        .build()?;

    // Admission control on one route: per client address (axum's `ConnectInfo`, which the
    // crate's `axum` feature reads), and a cap on reports in flight for everyone together.
    let quota = Quota::new(5, Duration::from_secs(10))?;
    let reports = Router::new()
        .route(
            "/report",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "a report that takes a while\n"
            }),
        )
        .layer(BulkheadLayer::new(
            NonZeroUsize::new(2).expect("2 is not 0"),
        ))
        .layer(RateLimitLayer::new(quota));

    let app = Router::new()
        .route(
            "/echo",
            get(|req: Request| async move {
                let id = req
                    .extensions()
                    .get::<CorrelationId>()
                    .map(|id| id.to_string());
                let mut lines = format!("correlation id: {}\n", id.unwrap_or_default());
                for (name, value) in req.headers() {
                    lines.push_str(&format!(
                        "{name}: {}\n",
                        value.to_str().unwrap_or("<binary>")
                    ));
                }
                lines
            }),
        )
        .merge(reports)
        .nest_service("/api", gateway)
        // A gateway answer from a handler: the same problem+json every layer uses.
        .fallback(|req: Request| async move {
            Rejection::new(RejectionKind::NotFound)
                .for_request(&req)
                .into_response::<axum::body::Body>()
        })
        .layer(HopByHopLayer::new())
        .layer(CorrelationIdLayer::new()); // the last `.layer` is the outermost

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
