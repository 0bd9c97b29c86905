//! The streaming reverse proxy: [`ProxyService`] and the headers it sets.
//!
//! [`ProxyService`] forwards a request to one of a route's [`Upstream`]s over a pooled
//! keep-alive hyper-util client and hands the upstream's response back. Bodies stream both
//! ways, frame by frame, never buffered whole: the request body goes out as it arrives, and
//! the response body is the upstream's own [`Incoming`](hyper::body::Incoming) inside a
//! [`GatewayBody`](crate::body::GatewayBody).
//!
//! - **URI**: the upstream's scheme and authority, its base path (if any) in front of the
//!   request's path, the query kept. Strip a route prefix before the proxy (the
//!   [`Router`](crate::route::Router) does).
//! - **Headers**: `Host` becomes the upstream's authority; `X-Forwarded-For` gets the peer IP
//!   (from [`PeerAddr`](crate::extensions::PeerAddr)) appended; `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are set, replacing the client's unless the peer is a
//!   [trusted proxy](crate::forwarded::TrustedProxies). Hop-by-hop headers are the
//!   [`HopByHopLayer`](crate::hop_by_hop::HopByHopLayer)'s job, outside.
//! - **Failures**: an upstream that cannot be reached, or that breaks the exchange before its
//!   response head, gets a `502` rejection with a [`ProxyError`] in the response extensions.
//! - **Cancellation**: dropping the response future (the client hung up, or a timeout fired)
//!   drops the upstream request, and the client closes that upstream connection.
//! - **Upgrades**: when the client asks for an upgrade (a WebSocket) and the upstream answers
//!   `101`, the two upgraded connections are joined into a two-way tunnel.
//! - **Retries**: a request that carries a [`HandBack`](crate::extensions::HandBack) (a
//!   [`RetryLayer`](crate::retry::RetryLayer) set to
//!   [`hand_back`](crate::retry::RetryLayer::hand_back) puts one there) is sent as a copy of
//!   its head, and its own parts are left in the `HandBack`, so the retry can send it again
//!   without keeping a copy of its own. Upgrades are never handed back.
//!
//! # Example
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tower_gateway::proxy::{ProxyClient, ProxyService, Upstream};
//! use tower_gateway::server::Server;
//!
//! let proxy = ProxyService::new(
//!     ProxyClient::new(),
//!     vec![Upstream::parse("http://127.0.0.1:5051").unwrap()],
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new().serve(listener, proxy, std::future::pending()).await
//! # }
//! ```
//!
//! # Rejections
//! - `502 Bad Gateway`, kind [`RejectionKind::BadGateway`](crate::rejection::RejectionKind::BadGateway):
//!   the upstream could not be reached or broke the exchange.
//! - `400 Bad Request`, kind [`RejectionKind::BadRequest`](crate::rejection::RejectionKind::BadRequest):
//!   a request target that cannot be made into an upstream URI.

mod error;
mod forward;
mod service;
mod upgrade;

pub use error::ProxyError;
pub use forward::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
pub use service::{
    Attempt, Balance, ProxyClient, ProxyClientBuilder, ProxyService, ResponseFuture, RoundRobin,
    Upstream, UpstreamError,
};
