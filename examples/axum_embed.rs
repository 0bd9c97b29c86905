//! The crate's layers inside a user's own axum app, with no error handling needed.
//!
//! Run it with `cargo run --example axum_embed`, then:
//! ```text
//! curl -i localhost:3000/echo -H 'connection: x-hint' -H 'x-hint: dropped'
//! curl -i localhost:3000/missing -H 'x-correlation-id: my-trace-1'
//! for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/report; done
//! ```
//! The first answer shows the headers the handler saw (no `connection`, no `x-hint`) and a
//! fresh `x-correlation-id`; the second is a problem+json 404 that carries `my-trace-1`. The
//! loop prints `200 200 200 200 200 429`: `/report` allows each client address 5 requests per
//! 10 seconds (see the `ratelimit` headers), and at most 2 reports are made at once.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Router, extract::Request, routing::get};
use tower_gateway::bulkhead::BulkheadLayer;
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::hop_by_hop::HopByHopLayer;
use tower_gateway::rate_limit::{Quota, RateLimitLayer, RequestHead};
use tower_gateway::{CorrelationId, Rejection, RejectionKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Admission control on one route: per client address (axum's `ConnectInfo`, read by a
    // closure key), and a cap on reports in flight for everyone together.
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
        .layer(
            RateLimitLayer::new(quota).with_key(|req: &RequestHead<'_>| {
                let ConnectInfo(peer) = req.extensions().get::<ConnectInfo<SocketAddr>>()?;
                Some(peer.ip())
            }),
        );

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
