//! Each layer's pass-through cost against a bare service, per request.
//!
//! Each group is one request shape. Every row drives the same `service_fn` (which answers at
//! once with two headers) through `poll_ready` and `call` on a freshly built request. The
//! `bare` row is the absolute time of that; every other row is a layer's *overhead*: its
//! time minus the bare service's, measured interleaved (see [`overhead`]) because on a
//! shared 2-core machine two rows measured a minute apart differ by more than a layer costs.
//! Run with `cargo bench --bench layers`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceBuilder};
use tower_gateway::api_key::{ApiKeyAuthLayer, KeySet};
use tower_gateway::bulkhead::BulkheadLayer;
use tower_gateway::circuit_breaker::CircuitBreakerLayer;
use tower_gateway::correlation_id::{CorrelationIdLayer, X_CORRELATION_ID};
use tower_gateway::extensions::HandBack;
use tower_gateway::extensions::PeerAddr;
use tower_gateway::hop_by_hop::HopByHopLayer;
use tower_gateway::rate_limit::{PeerIp, Quota, RateLimitLayer};
use tower_gateway::retry::RetryLayer;
use tower_gateway::route::Router;
use tower_gateway::timeout::TimeoutLayer;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 51234);
const CLIENT_ID: &str = "3f1c2a9e-6b7d-4c5e-8f90-1a2b3c4d5e6f";

fn upstream<B>(_req: Request<B>) -> Ready<Result<Res, Infallible>> {
    let mut res = Response::new(Full::default());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, "42".parse().unwrap());
    ready(Ok(res))
}

fn bare<B>() -> impl Service<Request<B>, Response = Res, Error = Infallible> + Clone {
    tower::service_fn(upstream::<B>)
}

/// A typical proxied GET: eight end-to-end headers, plus `extra`.
///
/// Each iteration builds its request the way the gateway's server hands it over: the header
/// map sized by hyper's parser for the headers it holds (which leaves the same spare room),
/// and the peer address already in the extensions (the proxy needs it for
/// `X-Forwarded-For`), so adding a header or an extension costs what it costs behind a real
/// server.
#[derive(Clone)]
struct Template {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    connect_info: bool,
}

impl Template {
    fn new(extra: &[(&'static str, &'static str)]) -> Self {
        let base = [
            ("host", "gateway.local"),
            ("user-agent", "wrk/4.2"),
            ("accept", "*/*"),
            ("accept-encoding", "gzip"),
            ("x-api-key", "alice-secret"),
            ("x-forwarded-for", "10.0.0.7"),
            ("cookie", "session=abc"),
            ("referer", "https://example.com/"),
        ];
        let headers = base
            .iter()
            .chain(extra)
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        Self {
            uri: Uri::from_static("/api/a/ping?x=1"),
            headers,
            connect_info: false,
        }
    }

    /// Also puts the peer in the extensions the way axum's `ConnectInfo` does, for
    /// tower_governor's peer-IP key.
    fn with_connect_info(mut self) -> Self {
        self.connect_info = true;
        self
    }

    fn build(&self) -> Req {
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        req.extensions_mut().insert(PeerAddr(PEER));
        if self.connect_info {
            req.extensions_mut().insert(ConnectInfo(PEER));
        }
        req
    }
}

/// A terminal service that treats a request the way the proxy does before it hands it to
/// the client: a request carrying a [`HandBack`] is sent as a copy of its head (the original
/// header map, with a copy kept) and its parts are left in the `HandBack`; any other request
/// is sent as it is, or, with `always_copy`, after the same header copy.
fn proxy_like<B>(
    always_copy: bool,
) -> impl Service<Request<B>, Response = Res, Error = Infallible> + Clone {
    tower::service_fn(move |mut req: Request<B>| {
        let slot = req.extensions_mut().remove::<HandBack>();
        if slot.is_some() || always_copy {
            let (mut parts, body) = req.into_parts();
            let kept = parts.headers.clone();
            let mut sent = Request::new(body);
            *sent.method_mut() = parts.method.clone();
            *sent.headers_mut() = std::mem::replace(&mut parts.headers, kept);
            match slot {
                Some(slot) => slot.put(parts),
                None => drop(black_box(parts)),
            }
            req = sent;
        }
        upstream(black_box(req))
    })
}

/// The least tower retry policy: keeps a copy of each request, never retries.
#[derive(Clone, Copy)]
struct CopyOnly;

impl<Res> tower::retry::Policy<Req, Res, Infallible> for CopyOnly {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Req,
        _result: &mut Result<Res, Infallible>,
    ) -> Option<Ready<()>> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut copy = Request::new(Empty::new());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// One request through `svc`, the way a server drives it.
fn drive<S, R>(svc: &mut S, req: Req) -> R
where
    S: Service<Req, Response = R, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        _ => unreachable!("the bench service answers at once"),
    }
}

/// The `bare` row: the absolute time of one request through the bare service.
fn row<S, R>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, template: &Template, mut svc: S)
where
    S: Service<Req, Response = R, Error = Infallible>,
{
    group.bench_function(name, |b| {
        b.iter(|| black_box(drive(&mut svc, template.build())))
    });
}

/// A layer's row: its overhead, the time of a request through `svc` minus one through the
/// bare service, measured in alternating blocks of 128 so that whatever drifts on a shared
/// machine (other tenants, frequency) hits both sides alike.
fn overhead<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, template: &Template, svc: S)
where
    S: Service<Req, Response = Res, Error = Infallible>,
{
    overhead_over(group, name, template, bare(), svc);
}

/// [`overhead`] over `base` (which `svc` wraps) instead of the bare service: for layers
/// whose inner service answers in another body type.
fn overhead_over<B, BR, S, SR>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    template: &Template,
    mut base: B,
    mut svc: S,
) where
    B: Service<Req, Response = BR, Error = Infallible>,
    S: Service<Req, Response = SR, Error = Infallible>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (mut bare_time, mut layered_time) = (Duration::ZERO, Duration::ZERO);
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(128);
                let start = Instant::now();
                for _ in 0..n {
                    black_box(drive(&mut base, template.build()));
                }
                bare_time += start.elapsed();
                let start = Instant::now();
                for _ in 0..n {
                    black_box(drive(&mut svc, template.build()));
                }
                layered_time += start.elapsed();
                done += n;
            }
            layered_time.saturating_sub(bare_time)
        })
    });
}

fn layers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _tokio = runtime.enter(); // the timeout's timer needs a runtime
    // No correlation ID from the client, no hop-by-hop header: the common request.
    let template = Template::new(&[]);
    let mut group = c.benchmark_group("plain");
    row(&mut group, "bare", &template, bare());
    overhead(
        &mut group,
        "hop_by_hop",
        &template,
        HopByHopLayer::new().layer(bare()),
    );
    overhead(
        &mut group,
        "correlation_id_generate",
        &template,
        CorrelationIdLayer::new().layer(bare()),
    );
    // API-key auth, allow path: the template carries alice's key; 100 keys in the set.
    let keys = (0..99).fold(KeySet::new().key("alice", "alice-secret"), |set, i| {
        set.key(format!("user-{i}"), format!("secret-{i}"))
    });
    overhead(
        &mut group,
        "api_key_allow",
        &template,
        ApiKeyAuthLayer::new(keys).layer(bare()),
    );
    // The router: three routes, the longest of which matches and has its prefix stripped.
    let router = Router::builder()
        .route_keeping_prefix("/api", bare())
        .route("/api/a", bare())
        .route_keeping_prefix("/static", bare())
        .build()
        .unwrap();
    overhead(&mut group, "router_strip", &template, router);
    // The timeout (its timer is armed only if the inner future is pending, which this bare
    // service never is: behind the proxy it always is, so this row is a lower bound).
    overhead(
        &mut group,
        "timeout",
        &template,
        TimeoutLayer::new(Duration::from_secs(30)).layer(bare()),
    );
    // The circuit breaker, closed (its allow path): one atomic load in `call`, the outcome
    // recorded when the answer comes.
    overhead(
        &mut group,
        "circuit_breaker_closed",
        &template,
        CircuitBreakerLayer::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(30))
            .layer(bare()),
    );
    // Retry on a GET that succeeds at once: the budget's deposit, the request copy kept for
    // a retry (eight headers, the peer-address extension) and the retry future: the layer
    // alone, over a service that hands nothing back.
    overhead(
        &mut group,
        "retry_get",
        &template,
        RetryLayer::new(2).layer(bare()),
    );
    // Retry with `hand_back`, as the gateway runs it: over a terminal service that does what
    // the proxy does with a request that carries a `HandBack` (keeps a copy of the headers,
    // sends the original, leaves the parts), measured against that same service without
    // retry, which moves the request on whole. So the row is everything retry costs a
    // request in the gateway: its own work and the copy it asks of the proxy.
    overhead_over(
        &mut group,
        "retry_get_hand_back",
        &template,
        proxy_like(false),
        RetryLayer::new(2).hand_back(true).layer(proxy_like(false)),
    );
    // The same, against a terminal service that makes that header copy whether or not it is
    // asked to: the retry layer's own work alone (the budget, the hand-back slot, the clone
    // of the service and its future), without the copy it asks of the proxy.
    overhead_over(
        &mut group,
        "retry_get_hand_back_layer_only",
        &template,
        proxy_like(true),
        RetryLayer::new(2).hand_back(true).layer(proxy_like(true)),
    );
    // tower's own `Retry` with the least policy that can retry a GET (it copies the request
    // before sending it, and never retries here): the floor any retry layer that keeps a
    // copy pays.
    overhead(
        &mut group,
        "tower_retry_get",
        &template,
        tower::retry::Retry::new(CopyOnly, bare()),
    );
    // Retry with `max_retries = 0`, what every gateway route without retries runs: the
    // body wrapper only.
    overhead(
        &mut group,
        "retry_off",
        &template,
        RetryLayer::new(0).layer(bare()),
    );
    let both = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(HopByHopLayer::new())
        .service(bare());
    overhead(
        &mut group,
        "correlation_id_generate+hop_by_hop",
        &template,
        both,
    );
    group.finish();

    // The client sent a valid correlation ID: the layer's pass-through path.
    let template = Template::new(&[("x-correlation-id", CLIENT_ID)]);
    let mut group = c.benchmark_group("client_id");
    row(&mut group, "bare", &template, bare());
    overhead(
        &mut group,
        "correlation_id_keep",
        &template,
        CorrelationIdLayer::new().layer(bare()),
    );
    // The floor under that layer: the three operations the contract asks of it (read the
    // request header, put the ID in the extensions, set it on the response), inline in the
    // bare service with no layer machinery around them.
    let floor = tower::service_fn(|mut req: Req| {
        let value = req.headers().get(X_CORRELATION_ID).cloned().unwrap();
        req.extensions_mut().insert(value.clone());
        let mut res = upstream(req).into_inner().unwrap();
        res.headers_mut().insert(X_CORRELATION_ID, value);
        ready(Ok(res))
    });
    overhead(&mut group, "floor_correlation_id", &template, floor);
    group.finish();

    // Admission: the rate limiter's and the bulkhead's allow paths. The rate-limit rows run
    // ours and the tower_governor crate on the same quota (10^9 a minute: 60 ns a request,
    // a burst of 10^9, so nothing is ever refused) and the same key (the peer IP), side by
    // side, each with and without its rate-limit headers. tower_governor can only answer in
    // axum's body type, so these rows wrap a bare service that answers in it.
    let template = Template::new(&[]).with_connect_info();
    let mut group = c.benchmark_group("admission");
    let axum_bare = || {
        tower::service_fn(|req: Req| {
            let res = upstream(req).into_inner().unwrap();
            ready(Ok::<_, Infallible>(res.map(axum::body::Body::new)))
        })
    };
    row(&mut group, "bare_axum_body", &template, axum_bare());
    let quota = Quota::new(1_000_000_000, Duration::from_secs(60)).unwrap();
    let ours = || RateLimitLayer::new(quota).with_key(PeerIp::new());
    let theirs = || {
        let mut config = GovernorConfigBuilder::default();
        config.per_nanosecond(60).burst_size(1_000_000_000);
        config
    };
    overhead_over(
        &mut group,
        "rate_limit_headers",
        &template,
        axum_bare(),
        ours().layer(axum_bare()),
    );
    overhead_over(
        &mut group,
        "tower_governor_headers",
        &template,
        axum_bare(),
        GovernorLayer::new(theirs().use_headers().finish().unwrap()).layer(axum_bare()),
    );
    overhead_over(
        &mut group,
        "rate_limit_no_headers",
        &template,
        axum_bare(),
        ours().ietf_headers(false).layer(axum_bare()),
    );
    overhead_over(
        &mut group,
        "tower_governor_no_headers",
        &template,
        axum_bare(),
        GovernorLayer::new(theirs().finish().unwrap()).layer(axum_bare()),
    );
    overhead_over(
        &mut group,
        "bulkhead",
        &template,
        bare(),
        BulkheadLayer::new(NonZeroUsize::new(10_000).unwrap()).layer(bare()),
    );
    group.finish();

    // An HTTP/1.0-style keep-alive request: two hop-by-hop headers to remove.
    let template = Template::new(&[("connection", "keep-alive"), ("keep-alive", "timeout=5")]);
    let mut group = c.benchmark_group("keep_alive");
    row(&mut group, "bare", &template, bare());
    overhead(
        &mut group,
        "hop_by_hop",
        &template,
        HopByHopLayer::new().layer(bare()),
    );
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
