//! The crate's layers inside a user's own axum app, with no error handling needed.
//!
//! Run it with `cargo run --example axum_embed`, then:
//! ```text
//! curl -i localhost:3000/echo -H 'connection: x-hint' -H 'x-hint: dropped'
//! curl -i localhost:3000/missing -H 'x-correlation-id: my-trace-1'
//! ```
//! The first answer shows the headers the handler saw (no `connection`, no `x-hint`) and a
//! fresh `x-correlation-id`; the second is a problem+json 404 that carries `my-trace-1`.

use axum::{Router, extract::Request, routing::get};
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::hop_by_hop::HopByHopLayer;
use tower_gateway::{CorrelationId, Rejection, RejectionKind};

#[tokio::main]
async fn main() -> std::io::Result<()> {
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
    axum::serve(listener, app).await
}
