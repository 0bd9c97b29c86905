//! Per-client rate limiting on governor's GCRA: `requests` per `window`, with a burst of
//! `requests`, a `429` with `Retry-After` over it, and the IETF `RateLimit` headers on every
//! response.
//!
//! [`RateLimitLayer`] asks a [`KeyExtractor`] who the request counts against and a
//! [`RateLimitStore`] whether that key has a request left.
//!
//! - **Keys**: by default [`ClientKey`]: the auth [`Identity`](crate::extensions::Identity) when there is
//!   one, else the client's IP address (the right-most untrusted `X-Forwarded-For` entry
//!   when the peer is a [trusted proxy](crate::forwarded)). [`IdentityKey`], [`PeerIp`],
//!   [`HeaderKey`], [`GlobalKey`] and closures over the request head are the others.
//! - **Store**: by default the in-process [`LocalStore`]: synchronous, lock-free per key,
//!   idle keys evicted and the key count capped, so memory stays bounded under a flood of
//!   distinct clients. A store shared by several gateway instances implements
//!   [`RateLimitStore`] and may answer asynchronously: with the `redis` feature,
//!   [`RedisStore`](redis::RedisStore) keeps the budgets in Redis, so every instance
//!   behind a load balancer spends from one (see [`redis`](mod@redis)).
//! - **Headers** (draft-ietf-httpapi-ratelimit-headers), on every response of the layer,
//!   the upstream's and its own: `RateLimit-Policy: "default";q=<requests>;w=<window s>` and
//!   `RateLimit: "default";r=<requests left>;t=<seconds until the quota is whole>`. Turn
//!   them off with [`ietf_headers(false)`](RateLimitLayer::ietf_headers); the older
//!   `X-RateLimit-Limit`, `-Remaining` and `-Reset` come with
//!   [`legacy_headers(true)`](RateLimitLayer::legacy_headers).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::rate_limit::{GlobalKey, Quota, RateLimitLayer};
//!
//! let quota = Quota::new(2, Duration::from_secs(60)).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(quota).with_key(GlobalKey))
//!     .service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from("ok")))
//!     });
//!
//! let first = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(first.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
//! assert_eq!(first.headers()["ratelimit"], "\"default\";r=1;t=30");
//! let _second = svc.clone().oneshot(Request::new(())).await.unwrap();
//! let third = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(third.status(), 429);
//! assert_eq!(third.headers()["retry-after"], "30");
//! # }
//! ```
//!
//! # In axum
//! Alone in a plain axum app served with `into_make_service_with_connect_info`: with the
//! `axum` feature (in `full`) the default [`ClientKey`] reads the client address from axum's
//! `ConnectInfo<SocketAddr>` (see [`PeerAddr::from_extensions`](crate::extensions::PeerAddr::from_extensions)),
//! identities and trusted proxies included. Without an address, every request without a
//! key shares one budget, and the layer says so once in a `warn` log.
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{Router, routing::get};
//! use tower_gateway::rate_limit::{Quota, RateLimitLayer};
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(RateLimitLayer::new(Quota::new(100, Duration::from_secs(60))?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Ordering
//! After routing and auth, before the circuit breaker and the bulkhead: a `404` or a `401`
//! costs no token, the limiter can key on the identity auth established, and a client over
//! its limit never reaches a breaker or takes a bulkhead permit.
//!
//! # Rejections
//! - `429 Too Many Requests`, kind [`RejectionKind::RateLimited`](crate::rejection::RejectionKind::RateLimited),
//!   with `Retry-After` (whole seconds, at least 1: the wait until one request is admitted,
//!   never more than the `RateLimit` header's `t`) and the rate-limit headers.
//! - `503 Service Unavailable`, kind
//!   [`RejectionKind::ServiceUnavailable`](crate::rejection::RejectionKind::ServiceUnavailable), when a
//!   store answers [`Decision::Unavailable`].
//!
//! # Why not tower-governor
//! tower_governor keys on the peer address or a header of your choice with no notion of
//! trusted proxies (behind a load balancer every client is the balancer), answers `500` when
//! a key cannot be extracted, keeps every key until you run its cleanup yourself, and has no
//! hook for a store shared between instances. This layer answers each of those.

mod decide;
mod future;
mod key;
mod layer;
mod local;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod route_store;
mod store;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

pub use future::ResponseFuture;
pub use key::{
    ClientId, ClientKey, GlobalKey, HeaderKey, IdentityKey, KeyExtractor, PeerIp, StoreKey,
};
pub use layer::{RateLimit, RateLimitLayer};
pub use local::{DEFAULT_MAX_KEYS, LocalStore};
pub use route_store::RouteStore;
pub use store::{BoxDecision, Check, Decision, OnStoreError, RateLimitStore};
#[cfg(any(feature = "redis", feature = "config"))]
pub(crate) use store::{SHARED_KEY_PREFIX, SHARED_TIMEOUT};

/// `requests` per `window`, with a burst of `requests`: a client may spend the whole
/// quota at once, and gets one request back every `window / requests`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    requests: NonZeroU32,
    window: Duration,
}

/// Why a [`Quota`] cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// `requests` is zero.
    #[error("requests must be greater than zero")]
    ZeroRequests,
    /// `window` is zero, or so short that `window / requests` is under a nanosecond.
    #[error("window must be at least one nanosecond per request")]
    WindowTooShort,
    /// `window` is longer than [`Quota::MAX_WINDOW`].
    #[error("window must be at most a year")]
    WindowTooLong,
}

impl Quota {
    /// The longest window: 365 days. (The limiter counts time in nanoseconds in 64 bits,
    /// which ends at 584 years; a year leaves that far out of reach.)
    pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// `requests` per `window`.
    pub fn new(requests: u32, window: Duration) -> Result<Self, QuotaError> {
        let requests = NonZeroU32::new(requests).ok_or(QuotaError::ZeroRequests)?;
        if (window / requests.get()).is_zero() {
            return Err(QuotaError::WindowTooShort);
        }
        if window > Self::MAX_WINDOW {
            return Err(QuotaError::WindowTooLong);
        }
        Ok(Self { requests, window })
    }

    /// Requests per window, and the burst.
    pub fn requests(&self) -> NonZeroU32 {
        self.requests
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How often one request comes back: `window / requests`.
    pub fn period(&self) -> Duration {
        self.window / self.requests.get()
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quota({} per {:?})", self.requests, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::{Identity, PeerAddr};
    use crate::rejection::{Rejection, RejectionKind};
    use bytes::Bytes;
    use governor::clock::FakeRelativeClock;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    type Body = Full<Bytes>;

    fn quota(requests: u32, secs: u64) -> Quota {
        Quota::new(requests, Duration::from_secs(secs)).unwrap()
    }

    fn counting(
        hits: Arc<AtomicUsize>,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        service_fn(move |_req: Request<()>| {
            hits.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) }
        })
    }

    fn from(ip: &str, identity: Option<&str>) -> Request<()> {
        let mut req = Request::get("/orders?token=x").body(()).unwrap();
        req.extensions_mut()
            .insert(PeerAddr(format!("{ip}:4000").parse().unwrap()));
        if let Some(id) = identity {
            req.extensions_mut().insert(Identity::new(id));
        }
        req
    }

    #[tokio::test]
    async fn headers_on_every_answer_and_a_429_with_retry_after_when_spent() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(RateLimitLayer::new(quota(2, 60)))
            .service(counting(hits.clone()));

        let res = svc.clone().oneshot(from("192.0.2.1", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=1;t=30");
        assert!(res.headers().get("x-ratelimit-limit").is_none());
        let res = svc.clone().oneshot(from("192.0.2.1", None)).await.unwrap();
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=60");

        let res = svc.clone().oneshot(from("192.0.2.1", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((29..=30).contains(&retry), "retry-after {retry}");
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
        let limit = res.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(limit.starts_with("\"default\";r=0;t="), "{limit}");
        let t: u64 = limit.rsplit('=').next().unwrap().parse().unwrap();
        assert!(retry <= t, "Retry-After {retry} must not pass t={t}");
        let rejection = res.extensions().get::<Rejection>().unwrap();
        assert_eq!(rejection.kind(), RejectionKind::RateLimited);
        assert_eq!(rejection.instance(), Some("/orders"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("\"status\":429")
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the third never reached the service"
        );
    }

    #[tokio::test]
    async fn two_clients_have_separate_budgets_and_identities_beat_addresses() {
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(RateLimitLayer::new(quota(1, 60)))
            .service(counting(hits.clone()));
        let status = |req| {
            let svc = svc.clone();
            async move { svc.oneshot(req).await.unwrap().status() }
        };
        assert_eq!(status(from("192.0.2.1", None)).await, 200);
        assert_eq!(status(from("192.0.2.1", None)).await, 429);
        assert_eq!(status(from("192.0.2.2", None)).await, 200);
        // Same address, two identities: two more budgets.
        assert_eq!(status(from("192.0.2.1", Some("alice"))).await, 200);
        assert_eq!(status(from("192.0.2.1", Some("bob"))).await, 200);
        assert_eq!(status(from("192.0.2.9", Some("alice"))).await, 429);
        assert_eq!(hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn legacy_headers_on_ietf_off() {
        let svc = ServiceBuilder::new()
            .layer(
                RateLimitLayer::new(quota(10, 1))
                    .ietf_headers(false)
                    .legacy_headers(true),
            )
            .service(counting(Arc::default()));
        let res = svc.oneshot(from("192.0.2.1", None)).await.unwrap();
        assert!(res.headers().get("ratelimit").is_none());
        assert!(res.headers().get("ratelimit-policy").is_none());
        assert_eq!(res.headers()["x-ratelimit-limit"], "10");
        assert_eq!(res.headers()["x-ratelimit-remaining"], "9");
        assert_eq!(res.headers()["x-ratelimit-reset"], "1");
    }

    #[tokio::test]
    async fn clones_of_layer_and_service_share_one_budget() {
        let layer = RateLimitLayer::new(quota(3, 60)).with_key(GlobalKey);
        let a = layer.layer(counting(Arc::default()));
        let b = layer.clone().layer(counting(Arc::default()));
        assert_eq!(
            a.clone()
                .oneshot(from("1.1.1.1", None))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            b.clone()
                .oneshot(from("2.2.2.2", None))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            a.oneshot(from("3.3.3.3", None)).await.unwrap().status(),
            200
        );
        assert_eq!(
            b.oneshot(from("4.4.4.4", None)).await.unwrap().status(),
            429
        );
        assert_eq!(layer.store().len(), 1);
    }

    /// A store across the network: answers later, or not at all.
    struct Remote(Decision);

    impl RateLimitStore<ClientId> for Remote {
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Decision> + Send>>;
        fn quota(&self) -> Quota {
            quota(5, 10)
        }
        fn check(&self, key: Option<&ClientId>, usage: bool) -> Check<Self::Future> {
            assert!(usage, "the layer reports usage in its headers");
            assert!(key.is_some());
            let decision = self.0;
            Check::Pending(Box::pin(async move {
                tokio::task::yield_now().await;
                decision
            }))
        }
    }

    #[tokio::test]
    async fn an_asynchronous_store_decides_later_and_unavailable_is_503() {
        let allow = RateLimitLayer::with_store(
            ClientKey::new(),
            Remote(Decision::Allow {
                remaining: 4,
                reset: Duration::from_millis(2500),
            }),
        )
        .layer(counting(Arc::default()));
        let res = allow.oneshot(from("192.0.2.1", None)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=5;w=10");
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=4;t=3");

        let hits = Arc::new(AtomicUsize::new(0));
        let down = RateLimitLayer::with_store(ClientKey::new(), Remote(Decision::Unavailable))
            .layer(counting(hits.clone()));
        let res = down.oneshot(from("192.0.2.1", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::ServiceUnavailable
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn requests_without_a_key_share_one_budget_instead_of_passing() {
        let svc = RateLimitLayer::new(quota(1, 60)).layer(counting(Arc::default()));
        let keyless = || Request::get("/").body(()).unwrap(); // no PeerAddr, no identity
        assert_eq!(svc.clone().oneshot(keyless()).await.unwrap().status(), 200);
        assert_eq!(svc.oneshot(keyless()).await.unwrap().status(), 429);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_never_more_than_the_burst_is_admitted() {
        // The clock stands still, so the budget never refills: exactly `requests` may pass.
        let clock = FakeRelativeClock::default();
        let store = LocalStore::with_clock(quota(500, 60), clock);
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = RateLimitLayer::with_store(GlobalKey, store).layer(counting(hits.clone()));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..250 {
                    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                    admitted += usize::from(res.status() == 200);
                    tokio::task::yield_now().await;
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += task.await.unwrap();
        }
        assert_eq!(admitted, 500, "8000 requests, a burst of 500");
        assert_eq!(hits.load(Ordering::SeqCst), 500);
    }

    #[tokio::test]
    async fn works_alone_in_an_axum_router() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(RateLimitLayer::new(quota(1, 60)).with_key(GlobalKey));
        let req = || {
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let res = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=60");
        let res = app.oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "60");
    }

    #[test]
    fn quotas_are_checked() {
        assert_eq!(
            Quota::new(0, Duration::from_secs(1)),
            Err(QuotaError::ZeroRequests)
        );
        assert_eq!(
            Quota::new(10, Duration::ZERO),
            Err(QuotaError::WindowTooShort)
        );
        assert_eq!(quota(100, 60).period(), Duration::from_millis(600));
        assert_eq!(format!("{:?}", quota(100, 60)), "Quota(100 per 60s)");
    }
}
