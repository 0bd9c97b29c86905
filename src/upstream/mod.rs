//! Upstream pools: a route's endpoints, load balancing, passive outlier ejection and
//! active health checks.
//!
//! A [`Pool`] picks the endpoint for each attempt of a [`ProxyService`](crate::proxy::ProxyService)
//! and learns from how it went:
//! - **Balancing** ([`Policy`]): `round_robin` (the default) takes the usable endpoints in
//!   turn; `least_in_flight` the less loaded of two random ones (power of two choices),
//!   each request counted until its response body ends, optionally weighted by latency
//!   ([`LeastInFlight::latency_weighted`], peak EWMA); `weighted` is nginx's smooth
//!   weighted round robin (weights 3:1:1 go `a b a c a`, never a burst to one endpoint);
//!   `hash` consistent hashing of a [`HashKey`] on a ring of virtual nodes with a
//!   [stable hash](hash), so every instance sends a key to the same endpoint and an
//!   endpoint that leaves moves only its own keys. Or a [`Balance`] of your own. No lock on
//!   the request path: a pick reads atomics.
//! - **Passive health** ([`PassiveHealth`], on by default): consecutive attempt failures
//!   (connection errors, timeouts, what the [classifier](PoolBuilder::classifier) calls a
//!   failure; never a client's fault) eject an endpoint for a time that grows with each
//!   ejection; it comes back on probation. Never more than a share of the pool, never the
//!   last endpoint.
//! - **Active health** ([`ActiveHealth`], opt-in): background `GET` probes.
//! - **None usable**: fail open (use them all) or closed (`503`), per
//!   [`WhenNoneHealthy`].
//! - A retried attempt goes to another endpoint when there is one: the proxy carries the
//!   endpoints tried in the request it hands back to the retry.
//! - [`Pool::status`] is the admin view; [`PoolBuilder::on_event`] the hook metrics plug
//!   into; [`PoolBuilder::keep_state_of`] carries endpoint state over a reload.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::proxy::{ProxyClient, ProxyService};
//! use tower_gateway::server::Server;
//! use tower_gateway::upstream::{ActiveHealth, LeastInFlight, PassiveHealth, Policy, Pool};
//!
//! let pool = Pool::builder(["http://127.0.0.1:5051", "http://127.0.0.1:5052"])
//!     .policy(Policy::LeastInFlight(LeastInFlight::new()))
//!     .passive_health(PassiveHealth::new().consecutive_failures(3))
//!     .active_health(ActiveHealth::new("/health").interval(Duration::from_secs(5)))
//!     .build()?;
//! let proxy = ProxyService::new(ProxyClient::new(), pool.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new().serve(listener, proxy, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! # Rejections
//! `503 Service Unavailable`, kind
//! [`NoHealthyUpstream`](crate::rejection::RejectionKind::NoHealthyUpstream), with
//! `Retry-After`: no endpoint is usable and the pool fails closed (the proxy answers it).

mod balance;
mod endpoint;
mod health;
mod pool;
mod url;

pub use balance::{Balance, Candidates, HashKey, LeastInFlight, Policy, hash};
pub use endpoint::EndpointState;
pub use health::{ActiveHealth, PassiveHealth};
pub use pool::{
    EndpointStatus, NoHealthyEndpoint, Picked, Pool, PoolBuilder, PoolError, PoolEvent,
    PoolEventKind, PoolStatus, WhenNoneHealthy,
};
pub(crate) use pool::{Tried, with_tried};
pub use url::{Transport, Upstream, UpstreamError};
