//! The streaming reverse proxy: [`ProxyService`] and the headers it sets.
//!
//! [`ProxyService`] forwards a request to the endpoint its [`Pool`](crate::upstream::Pool)
//! picks, over a pooled keep-alive hyper-util client, and hands the upstream's response
//! back, telling the pool how the attempt went (for outlier ejection) and counting it in
//! flight at the endpoint until the response body ends. Bodies stream both
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
//! - **Failures, and whose fault they are**: an upstream that cannot be reached, or that
//!   breaks the exchange before its response head, gets a `502`. A client whose request body
//!   breaks gets a `400` (bad chunk framing, or a body that ends before its
//!   `Content-Length`), one whose body sends nothing for the
//!   [request-body timeout](ProxyService::request_body_timeout) a `408`, and one that resets
//!   or leaves a `499` that only metrics and logs see. Each carries a [`ProxyError`] in the
//!   response extensions, whose [`fault`](ProxyError::fault) says whose it was: the
//!   breaker, retry and metrics never count the client's against the upstream. Once the
//!   response head has gone out, a body that breaks ends the exchange.
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
//! use tower_gateway::proxy::{ProxyClient, ProxyService};
//! use tower_gateway::server::Server;
//! use tower_gateway::upstream::Pool;
//!
//! let pool = Pool::builder(["http://127.0.0.1:5051"]).build().unwrap();
//! let proxy = ProxyService::new(ProxyClient::new(), pool);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new().serve(listener, proxy, std::future::pending()).await
//! # }
//! ```
//!
//! # Rejections
//! - `502 Bad Gateway`, kind [`RejectionKind::BadGateway`](crate::rejection::RejectionKind::BadGateway):
//!   the upstream could not be reached or broke the exchange.
//! - `400 Bad Request`, kind [`RejectionKind::BadRequest`](crate::rejection::RejectionKind::BadRequest):
//!   the request body is malformed or ended early.
//! - `408 Request Timeout`, kind [`RejectionKind::RequestTimeout`](crate::rejection::RejectionKind::RequestTimeout):
//!   the request body stalled.
//! - `499`, kind [`RejectionKind::ClientClosedRequest`](crate::rejection::RejectionKind::ClientClosedRequest):
//!   the client left mid-body (for metrics and logs; nobody reads it).
//! - `400 Bad Request`, kind [`RejectionKind::BadRequest`](crate::rejection::RejectionKind::BadRequest):
//!   a request target that cannot be made into an upstream URI.
//! - `503 Service Unavailable`, kind [`RejectionKind::NoHealthyUpstream`](crate::rejection::RejectionKind::NoHealthyUpstream):
//!   no endpoint of the pool is usable and it fails closed; with `Retry-After`.
//! - `405 Method Not Allowed`, kind [`RejectionKind::MethodNotAllowed`](crate::rejection::RejectionKind::MethodNotAllowed):
//!   a `CONNECT`, never sent upstream.

mod body;
mod error;
mod forward;
mod service;
mod upgrade;

pub use body::UpstreamBody;
pub use error::ProxyError;
pub use forward::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
pub use service::{
    Attempt, DEFAULT_REQUEST_BODY_TIMEOUT, ProxyClient, ProxyClientBuilder, ProxyService,
    ResponseFuture,
};
