//! API-gateway policy as independent [tower] layers.
//!
//! Each gateway concern is a `Layer` that works alone in any hyper or axum app and keeps its
//! inner service's error type: the answers the gateway gives itself (401, 404, 429, 503, ...)
//! are HTTP responses with an RFC 9457 `application/problem+json` body, built by
//! [`rejection`], never `Service` errors. So a layer drops into an axum `Router` without a
//! `HandleErrorLayer`.
//!
//! | module | what it gives you |
//! |---|---|
//! | [`correlation_id`] | [`CorrelationIdLayer`](correlation_id::CorrelationIdLayer): keeps or makes `X-Correlation-Id`, sends it upstream, returns it on every response |
//! | [`hop_by_hop`] | [`HopByHopLayer`](hop_by_hop::HopByHopLayer): strips hop-by-hop headers both ways, WebSocket upgrades excepted |
//! | [`api_key`] | [`ApiKeyAuthLayer`](api_key::ApiKeyAuthLayer): keys kept as SHA-256 digests, an [`Identity`](extensions::Identity) per key, anonymous paths, scopes, `401`/`403` |
//! | [`rate_limit`] | [`RateLimitLayer`](rate_limit::RateLimitLayer): per-client GCRA on governor, `429` + `Retry-After`, IETF `RateLimit` headers, bounded key memory, pluggable stores |
//! | [`bulkhead`] | [`BulkheadLayer`](bulkhead::BulkheadLayer): at most N in flight until each response body ends, `429` at once, no queue |
//! | [`circuit_breaker`] | [`CircuitBreakerLayer`](circuit_breaker::CircuitBreakerLayer): opens after consecutive failures or at a failure rate over a sliding window, `503` + `Retry-After`, one probe after the cooldown, never wedged by a lost probe |
//! | [`retry`] | [`RetryLayer`](retry::RetryLayer): safe methods retried on 5xx, timeouts and unreachable upstreams, jittered backoff, `Retry-After`, a lock-free retry budget, small bodies replayed |
//! | [`timeout`] | [`TimeoutLayer`](timeout::TimeoutLayer): `504` when the response head is late; the body is never cut |
//! | [`route`] | [`Router`](route::Router): longest path prefix on segment boundaries, prefix stripping, `404`, `400` for `..` |
//! | [`proxy`] | [`ProxyService`](proxy::ProxyService): streams to pooled keep-alive upstreams (`http://`, `https://` with HTTP/2 by ALPN, `h2c://`), `X-Forwarded-*`, WebSocket tunnels, gRPC with its trailers, `502` |
//! | [`upstream`] | [`Pool`](upstream::Pool): a route's endpoints, load balancing, passive ejection, active health checks |
//! | [`builder`] | [`Gateway`](builder::Gateway): routes and layers composed in the contract's order, one `Clone` service |
//! | [`trace`] | [`RequestSpanLayer`](trace::RequestSpanLayer): a tracing span per request (correlation ID, method, path, route, status, latency) and one access-log event per answer |
//! | [`reload`] | [`reloadable`](reload::reloadable): a service whose inner service is swapped atomically while it serves (hot reload) |
//! | [`server`] | [`Server`](server::Server): a hardened HTTP/1.1 and HTTP/2 (h2c, or h2 by ALPN over TLS) server with graceful shutdown |
//! | [`tls`] | [`ServerTls`](tls::ServerTls): certificates by SNI, hot reload, client certificates (mTLS); [`UpstreamTls`](tls::UpstreamTls) for `https://` upstreams (feature `tls`, rustls with aws-lc-rs) |
//! | [`config`] | [`Config`](config::Config): a gateway from a TOML file (the example gateway's format) |
//! | [`rejection`] | the rejection model; [`RerenderLayer`](rejection::RerenderLayer) re-renders every rejection of a stack your way |
//! | [`body`] | [`GatewayBody`](body::GatewayBody): a streamed body or a gateway answer |
//! | [`metrics`] | [`MetricsLayer`](metrics::MetricsLayer) and the gateway's metric names: requests, latency, rejections, retries, bulkhead and breaker state through the `metrics` facade (feature `metrics`) |
//! | [`classify`] | [`FailureClassifier`](classify::FailureClassifier): which answers count as upstream failures (shared by the circuit breaker and retry) |
//! | [`extensions`] | [`CorrelationId`](extensions::CorrelationId), [`PeerAddr`](extensions::PeerAddr), [`TlsInfo`](extensions::TlsInfo) and [`Identity`](extensions::Identity): typed request extensions the layers share |
//! | [`forwarded`] | [`TrustedProxies`](forwarded::TrustedProxies) and [`client_ip`](forwarded::client_ip): who the client is behind proxies |
//!
//! The bundled example gateway runs all of it from a TOML file:
//! `cargo run --example gateway` (see `examples/gateway/main.rs`).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::{correlation_id::CorrelationIdLayer, hop_by_hop::HopByHopLayer};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new()) // outermost: every answer carries the ID
//!     .layer(HopByHopLayer::new())
//!     .service_fn(|req: Request<String>| async move {
//!         assert!(req.headers().get("connection").is_none());
//!         Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
//!     });
//!
//! let req = Request::post("/echo")
//!     .header("connection", "keep-alive")
//!     .header("x-correlation-id", "abc-1")
//!     .body("hello".to_owned())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-correlation-id"], "abc-1");
//! assert_eq!(res.body(), "hello");
//! # }
//! ```
//!
//! # Features
//! One cargo feature per concern (`correlation-id`, `hop-by-hop`, `timeout`, `api-key`,
//! `rate-limit`, `bulkhead`, `circuit-breaker`, `retry`), one per piece around them
//! (`proxy`, `router`, `server`, `trace`, `reload`, `metrics`, `redis`, `tls`), `axum` for axum's
//! `ConnectInfo` and `OriginalUri`, `gateway` for the [`builder`] (every concern, `proxy`,
//! `router`, `server`, `trace` and `reload`), `config` for the TOML format (with
//! `gateway`), and `full` (the default) for everything. Each builds alone. The
//! [`rejection`], [`body`], [`classify`] and [`extensions`] modules are always present.
//!
//! [tower]: https://docs.rs/tower
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;
#[cfg(any(feature = "retry", feature = "proxy"))]
mod random;
#[cfg(any(feature = "timeout", feature = "proxy", feature = "server"))]
mod time;

pub mod body;
pub mod classify;
pub mod extensions;
pub mod rejection;

#[cfg(feature = "correlation-id")]
#[cfg_attr(docsrs, doc(cfg(feature = "correlation-id")))]
pub mod correlation_id;

#[cfg(feature = "hop-by-hop")]
#[cfg_attr(docsrs, doc(cfg(feature = "hop-by-hop")))]
pub mod hop_by_hop;

#[cfg(feature = "timeout")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
pub mod timeout;

#[cfg(feature = "api-key")]
#[cfg_attr(docsrs, doc(cfg(feature = "api-key")))]
pub mod api_key;

#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod builder;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
#[cfg(feature = "router")]
#[cfg_attr(docsrs, doc(cfg(feature = "router")))]
pub mod route;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod upstream;

#[cfg(feature = "reload")]
#[cfg_attr(docsrs, doc(cfg(feature = "reload")))]
pub mod reload;
#[cfg(feature = "trace")]
#[cfg_attr(docsrs, doc(cfg(feature = "trace")))]
pub mod trace;

#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;

#[cfg(any(feature = "proxy", feature = "rate-limit"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "proxy", feature = "rate-limit"))))]
pub mod forwarded;

#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;

#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub mod bulkhead;

#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub mod circuit_breaker;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

// The README's code compiles as part of the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
