//! A layer of your own in the gateway's stack, next to the crate's layers with settings of
//! your own: per-tenant rate limits and a circuit breaker that also counts "degraded" answers.
//!
//! - `TenantHeaderLayer` is written here the way the crate writes its layers (a `Layer`, a
//!   `Service` and a pin-projected response future): it refuses a request without a valid
//!   `x-tenant` header with the crate's `Rejection`, so the refusal is the same problem+json
//!   as every other gateway answer (correlation ID included) and can be re-rendered like
//!   them; otherwise it puts a typed `Tenant` into the request extensions.
//! - `TenantKey` is a rate-limit `KeyExtractor` that reads that `Tenant`: each tenant gets
//!   its own budget, whoever sends its requests.
//! - `DegradedOrServerError` is a `FailureClassifier`: the circuit breaker counts a `5xx`
//!   and also a `200` that carries `x-degraded: true`.
//!
//! All three go on one route with `Route::layer`; the last one added is the outermost.
//!
//! `cargo run --example custom_layer` starts a tiny upstream and the gateway on
//! `127.0.0.1:0`, sends a few requests to itself, prints what came back, and exits 0 (1 when
//! an answer is not the expected one). `cargo run --example custom_layer -- 127.0.0.1:5060`
//! listens there instead and, after the demo, keeps serving until Ctrl-C, so you can try:
//! ```text
//! curl -i localhost:5060/api/orders                       # 400: no tenant
//! curl -i -H 'x-tenant: acme' localhost:5060/api/orders   # 200, with acme's RateLimit headers
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::circuit_breaker::CircuitBreakerLayer;
use tower_gateway::classify::{FailureClassifier, ResponseHead, ServerErrors};
use tower_gateway::extensions::RequestHead;
use tower_gateway::rate_limit::{KeyExtractor, Quota, RateLimitLayer};
use tower_gateway::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};
use tower_gateway::server::Server;

// ---- The layer ------------------------------------------------------------------------

/// The tenant a request is for: 1 to 64 of `a-z`, `0-9` and `-`, from the `x-tenant`
/// header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(Arc<str>);

impl Tenant {
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get("x-tenant")?.to_str().ok()?;
        let valid = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then(|| Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Refuses requests without a valid `x-tenant` header (`400`); puts the [`Tenant`] of the
/// others into their extensions.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct TenantHeaderLayer<R = ProblemJson> {
    render: R,
}

impl TenantHeaderLayer {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<R> TenantHeaderLayer<R> {
    /// Renders the `400` with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> TenantHeaderLayer<R2> {
        TenantHeaderLayer { render }
    }
}

impl<S, R: Clone> Layer<S> for TenantHeaderLayer<R> {
    type Service = TenantHeader<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantHeader {
            inner,
            render: self.render.clone(),
        }
    }
}

/// Service of [`TenantHeaderLayer`].
#[derive(Clone, Debug)]
pub struct TenantHeader<S, R = ProblemJson> {
    inner: S,
    render: R,
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for TenantHeader<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    R: RenderRejection<ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error; // a refusal is a response, not an error
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx) // admission is decided in `call`; nothing is reserved
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        match Tenant::from_headers(req.headers()) {
            Some(tenant) => {
                req.extensions_mut().insert(tenant);
                ResponseFuture::forward(self.inner.call(req))
            }
            // The crate's rejection: status, problem+json body with the correlation ID and
            // the path, and the typed `Rejection` in the response extensions.
            None => ResponseFuture::answer(
                Rejection::new(RejectionKind::BadRequest)
                    .with_detail("an x-tenant header (1 to 64 of a-z, 0-9 and -) is required")
                    .for_request(&req)
                    .into_response_with(&mut self.render),
            ),
        }
    }
}

pin_project! {
    /// Response future of [`TenantHeader`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Forward { #[pin] fut: F },
        Answer { res: Option<Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn forward(fut: F) -> Self {
        Self {
            state: State::Forward { fut },
        }
    }

    fn answer(res: Response<B>) -> Self {
        Self {
            state: State::Answer { res: Some(res) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forward { fut } => fut.poll(cx),
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}

// ---- A rate-limit key and a failure classifier ----------------------------------------

/// Counts each request against its [`Tenant`] (which [`TenantHeaderLayer`] put there).
#[derive(Clone, Copy, Debug)]
pub struct TenantKey;

impl KeyExtractor for TenantKey {
    type Key = Tenant;

    fn extract(&self, req: &RequestHead<'_>) -> Option<Tenant> {
        req.extensions().get::<Tenant>().cloned()
    }
}

/// A failure is what the default counts (a `5xx`, the gateway's own `502` and `504`), or any
/// answer with `x-degraded: true`.
#[derive(Clone, Copy, Debug)]
pub struct DegradedOrServerError;

impl FailureClassifier for DegradedOrServerError {
    fn is_failure(&self, res: &ResponseHead<'_>) -> bool {
        ServerErrors.is_failure(res)
            || res
                .headers()
                .get("x-degraded")
                .is_some_and(|value| value == "true")
    }
}

// ---- The demo ---------------------------------------------------------------------------

/// A tiny upstream: `/flaky` answers `200` marked `x-degraded: true`; anything else says
/// which tenant and path it was asked for.
async fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let tenant = req.headers().get("x-tenant").cloned();
                let mut res = Response::new(Full::new(Bytes::from(format!(
                    "{} for tenant {}",
                    req.uri().path(),
                    tenant.as_ref().map_or("?", |t| t.to_str().unwrap_or("?"))
                ))));
                if req.uri().path() == "/flaky" {
                    res.headers_mut()
                        .insert("x-degraded", "true".parse().expect("a valid value"));
                }
                Ok::<_, Infallible>(res)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends `GET path` with `tenant` as `x-tenant`, prints the answer, and checks its status.
async fn show(
    client: &HttpClient,
    gateway: SocketAddr,
    path: &str,
    tenant: Option<&str>,
    expected: StatusCode,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut req = Request::get(format!("http://{gateway}{path}"));
    if let Some(tenant) = tenant {
        req = req.header("x-tenant", tenant);
    }
    let res = client.request(req.body(Empty::new())?).await?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    println!(
        "GET {path} (x-tenant: {}) -> {}",
        tenant.unwrap_or("none"),
        parts.status
    );
    for name in [
        "content-type",
        "ratelimit",
        "retry-after",
        "x-correlation-id",
    ] {
        if let Some(value) = parts.headers.get(name) {
            println!("    {name}: {}", value.to_str().unwrap_or("<binary>"));
        }
    }
    println!("    {}", String::from_utf8_lossy(&body));
    if parts.status != expected {
        return Err(format!("expected {expected}, got {}", parts.status).into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1);
    let upstream = start_upstream().await?;

    let per_tenant =
        RateLimitLayer::new(Quota::new(3, Duration::from_secs(60))?).with_key(TenantKey);
    let breaker = CircuitBreakerLayer::new(
        NonZeroU32::new(2).expect("2 is not 0"),
        Duration::from_secs(30),
    )
    .with_classifier(DegradedOrServerError);
    let gateway = Gateway::builder()
        .route(
            "/api",
            Route::to([format!("http://{upstream}")])
                .layer(breaker) // innermost of the three: sees what the upstream answered
                .layer(per_tenant) // 3 requests a minute per tenant
                .layer(TenantHeaderLayer::new()), // outermost: no tenant, no further
        )
        .build()?;

    let listener = TcpListener::bind(listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    println!("gateway listening on {addr}, upstream on {upstream}\n");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new().serve(listener, gateway, async {
        let _ = stopped.await;
    }));

    let client = Client::builder(TokioExecutor::new()).build_http();
    // No tenant: refused by the custom layer, in the crate's problem+json.
    show(&client, addr, "/api/orders", None, StatusCode::BAD_REQUEST).await?;
    show(
        &client,
        addr,
        "/api/orders",
        Some("Not Valid"),
        StatusCode::BAD_REQUEST,
    )
    .await?;
    // Acme's budget: three, then 429 with Retry-After.
    for _ in 0..3 {
        show(&client, addr, "/api/orders", Some("acme"), StatusCode::OK).await?;
    }
    show(
        &client,
        addr,
        "/api/orders",
        Some("acme"),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await?;
    // Globex has a budget of its own.
    show(&client, addr, "/api/orders", Some("globex"), StatusCode::OK).await?;
    // Two degraded answers in a row are two failures: the breaker opens, and the next
    // request gets 503 without reaching the upstream.
    for _ in 0..2 {
        show(&client, addr, "/api/flaky", Some("initech"), StatusCode::OK).await?;
    }
    show(
        &client,
        addr,
        "/api/flaky",
        Some("initech"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await?;

    if listen.is_some() {
        println!("serving on {addr} until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}
