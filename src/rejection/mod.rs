//! Answers the gateway gives itself: [`Rejection`], its RFC 9457 rendering, and the
//! [`RenderRejection`] seam that lets users swap the rendering.
//!
//! A layer that refuses a request (401, 404, 429, 503, 504, ...) does not return a `Service`
//! error. It builds a [`Rejection`] and answers with a [`Response`] in the *inner service's own
//! body type*, so every layer keeps its inner error type and drops into an axum `Router` (error
//! type [`Infallible`](std::convert::Infallible)) without a `HandleErrorLayer`.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http::{header, Request, StatusCode};
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower_gateway::rejection::{Rejection, RejectionKind};
//!
//! let request = Request::get("/api/a/ping").body(()).unwrap();
//! let rejection = Rejection::new(RejectionKind::RateLimited)
//!     .for_request(&request)
//!     .with_retry_after(Duration::from_millis(1500));
//!
//! let response: http::Response<Full<Bytes>> = rejection.into_response();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()[header::RETRY_AFTER], "2");
//! assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
//! // The typed rejection travels in the extensions: classify by it, never parse the body.
//! let kind = response.extensions().get::<Rejection>().unwrap().kind();
//! assert_eq!(kind, RejectionKind::RateLimited);
//! ```
//!
//! # The body type, and why
//! A rejection is rendered straight into the inner service's response body type `B`. The
//! default renderer, [`ProblemJson`], needs `B: From<Bytes>`, which axum's `Body`,
//! `http_body_util::Full` and this crate's [`GatewayBody`](crate::body::GatewayBody) all
//! satisfy. So on the pass-through path a layer hands the inner response back untouched:
//! no boxing, no copying, no wrapper body, and no change of type as layers stack up.
//!
//! The trade-off: a service whose body cannot be built from bytes (hyper's `Incoming`, say)
//! needs a body that can, before a rejecting layer can wrap it. [`GatewayBody`](crate::body::GatewayBody) is that body
//! for the proxy: an enum of the upstream stream and a small in-memory body, whose
//! pass-through arm forwards every poll to the stream. The alternative, an
//! `Either<Inner, Full>` added by every layer, would nest one enum per layer and change the
//! response type with every layer a user adds; a boxed body would cost an allocation and a
//! dynamic call per frame. A custom [`RenderRejection`] can lift the `From<Bytes>` bound for
//! bodies that are built some other way.
//!
//! # Replacing the rendering
//! - Per layer: every rejecting layer has `.with_rejection(render)` taking any
//!   [`RenderRejection`], including a closure `FnMut(&Rejection) -> Response<B> + Clone`.
//! - Once for the whole stack: wrap it in [`RerenderLayer`], which re-renders every response
//!   that carries a [`Rejection`] in its extensions, whichever layer made it (a user's own
//!   layers included, when they answer through [`Rejection::into_response_with`]).
//!
//! Either way the status, the rejection's own headers (`Retry-After`, `WWW-Authenticate`, ...)
//! and the typed [`Rejection`] in the response extensions are set by
//! [`Rejection::into_response_with`], not by the renderer, so a renderer only chooses the body
//! and its content type and cannot drop the protocol headers by mistake.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use serde::Serialize;

use crate::extensions::CorrelationId;
use crate::extensions::MatchedRoute;

mod render;
mod rerender;

pub use render::{ProblemJson, RenderRejection};
pub use rerender::{Rerender, RerenderFuture, RerenderLayer};

/// What kind of answer the gateway gave, and so its status code.
///
/// This enum is the one place that maps causes to status codes: see each variant and
/// [`RejectionKind::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// 400: a malformed request, such as a path with `..` segments.
    BadRequest,
    /// 401: auth is required and the credential is missing or wrong.
    Unauthorized,
    /// 403: the credential is valid but not for this route.
    Forbidden,
    /// 404: no route matches the path.
    NotFound,
    /// 405: the method is not one the gateway forwards (`CONNECT`: a reverse proxy opens no
    /// tunnels to arbitrary hosts). The answer says which are in `Allow`.
    MethodNotAllowed,
    /// 408: the request body sent nothing for the request-body timeout before the
    /// response head arrived: the client stalled.
    RequestTimeout,
    /// 429: the client is over its rate limit.
    RateLimited,
    /// 429: the route has too many requests in flight (bulkhead full).
    ConcurrencyLimited,
    /// 431: the request headers are too large or too many.
    RequestHeaderFieldsTooLarge,
    /// 499 (nginx's "client closed request"): the client reset or left while its request
    /// was being forwarded. Nobody reads this answer; it exists for metrics and logs.
    ClientClosedRequest,
    /// 502: the upstream could not be reached or broke the exchange.
    BadGateway,
    /// 503: the route's circuit breaker is open.
    CircuitOpen,
    /// 503: a dependency of the gateway (a shared store, say) is unavailable.
    ServiceUnavailable,
    /// 503: none of the route's upstream endpoints is usable (every one ejected or failing
    /// its health check) and the route fails closed.
    NoHealthyUpstream,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// Any other status, for a layer of your own (`412`, `415`, `422`, ...): the title is the
    /// status's reason phrase and the type `about:blank` (RFC 9457 §4.2.1); metrics and logs
    /// give it the reason `other`. Meant for 4xx and 5xx statuses.
    Other(StatusCode),
}

impl RejectionKind {
    /// `(status, title, slug of the type URI, default detail)`: the whole table in one place.
    fn info(self) -> (StatusCode, &'static str, &'static str, &'static str) {
        match self {
            Self::Other(status) => (
                status,
                match status.canonical_reason() {
                    Some(reason) => reason,
                    None => "Error",
                },
                "",
                "the request was refused",
            ),
            Self::BadRequest => (
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "BadRequest",
                "the request is malformed",
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
                "a valid credential is required",
            ),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Forbidden",
                "the credential does not grant access to this resource",
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not Found",
                "NotFound",
                "no route matches the request path",
            ),
            Self::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                "RequestTimeout",
                "the request body stopped arriving",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "MethodNotAllowed",
                "the gateway does not forward this method",
            ),
            Self::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "RateLimited",
                "the rate limit for this client is exhausted",
            ),
            Self::ConcurrencyLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "ConcurrencyLimited",
                "too many requests are in flight for this route",
            ),
            Self::RequestHeaderFieldsTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
                "RequestHeaderFieldsTooLarge",
                "the request headers are too large or too many",
            ),
            Self::ClientClosedRequest => (
                CLIENT_CLOSED_REQUEST,
                "Client Closed Request",
                "ClientClosedRequest",
                "the client closed the connection before the answer",
            ),
            Self::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                "BadGateway",
                "the upstream could not be reached",
            ),
            Self::CircuitOpen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "CircuitOpen",
                "the upstream is failing and the circuit breaker is open",
            ),
            Self::ServiceUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "ServiceUnavailable",
                "the gateway cannot serve this request right now",
            ),
            Self::NoHealthyUpstream => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "NoHealthyUpstream",
                "no healthy upstream",
            ),
            Self::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway Timeout",
                "GatewayTimeout",
                "the upstream did not answer in time",
            ),
        }
    }

    /// The status code the gateway answers with.
    pub fn status(self) -> StatusCode {
        self.info().0
    }

    /// The problem's `title`: the same for every occurrence of this kind.
    pub fn title(self) -> &'static str {
        self.info().1
    }

    /// The problem's `type`: a URI naming this kind, which resolves to its documentation
    /// (`about:blank` for [`Other`](Self::Other)).
    pub fn type_uri(self) -> String {
        match self {
            Self::Other(_) => "about:blank".to_owned(),
            _ => format!("{TYPE_URI_BASE}{}", self.info().2),
        }
    }

    fn default_detail(self) -> &'static str {
        self.info().3
    }

    /// Whose fault this answer is: see [`Fault`].
    pub fn fault(self) -> Fault {
        match self {
            Self::BadRequest
            | Self::Unauthorized
            | Self::Forbidden
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::RequestTimeout
            | Self::RateLimited
            | Self::RequestHeaderFieldsTooLarge
            | Self::ClientClosedRequest => Fault::Client,
            Self::BadGateway | Self::GatewayTimeout | Self::NoHealthyUpstream => Fault::Upstream,
            Self::Other(status) if status.is_client_error() => Fault::Client,
            Self::ConcurrencyLimited
            | Self::CircuitOpen
            | Self::ServiceUnavailable
            | Self::Other(_) => Fault::Gateway,
        }
    }

    /// Every value [`reason`](Self::reason) takes.
    pub const REASONS: [&'static str; 14] = [
        "bad_request",
        "auth",
        "no_route",
        "rate_limit",
        "bulkhead",
        "headers_too_large",
        "upstream",
        "circuit_breaker",
        "timeout",
        "other",
        "request_body_timeout",
        "client_closed",
        "method_not_allowed",
        "no_healthy_upstream",
    ];

    /// Why the gateway answered, in the words of metrics and logs: `auth` (401 and 403),
    /// `rate_limit`, `bulkhead`, `circuit_breaker`, `timeout`, `upstream` (502 and 503
    /// for an unavailable dependency), `no_route`, `bad_request`, `headers_too_large`,
    /// `request_body_timeout` (408), `client_closed` (499), `method_not_allowed` (405),
    /// `no_healthy_upstream` (503: every endpoint of the route is out), and `other` for
    /// [`Other`](Self::Other).
    pub const fn reason(self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    pub(crate) const fn reason_index(self) -> usize {
        match self {
            Self::BadRequest => 0,
            Self::Unauthorized | Self::Forbidden => 1,
            Self::NotFound => 2,
            Self::RateLimited => 3,
            Self::ConcurrencyLimited => 4,
            Self::RequestHeaderFieldsTooLarge => 5,
            Self::BadGateway | Self::ServiceUnavailable => 6,
            Self::CircuitOpen => 7,
            Self::GatewayTimeout => 8,
            Self::Other(_) => 9,
            Self::RequestTimeout => 10,
            Self::ClientClosedRequest => 11,
            Self::MethodNotAllowed => 12,
            Self::NoHealthyUpstream => 13,
        }
    }
}

/// The problem's `instance`: the path the client sent. That is axum's `OriginalUri` when
/// axum routed the request (feature `axum`), else the path before the gateway's router
/// stripped the route prefix, else the path as it is. Never the query: it can carry a token.
fn instance(uri: &Uri, matched: Option<&MatchedRoute>, original: Option<&Uri>) -> String {
    if let Some(original) = original {
        return original.path().to_owned();
    }
    match matched {
        Some(route) => route.original_path(uri.path()),
        None => uri.path().to_owned(),
    }
}

/// The URI axum saw before any `nest`/`nest_service` cut it (feature `axum`).
#[inline]
fn original_uri(extensions: &http::Extensions) -> Option<&Uri> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(uri)) = extensions.get::<axum::extract::OriginalUri>() {
        return Some(uri);
    }
    let _ = extensions;
    None
}

/// What a rejection made after its request is gone (a timeout's `504`) needs of the request,
/// captured in `call`: the correlation ID and, for a request a router took (the gateway's,
/// or axum's), the path the client sent (shared bytes as the server parsed them: the clone
/// is a reference count). Kept small, since it rides in every request's future.
#[cfg_attr(
    not(feature = "timeout"),
    allow(dead_code, reason = "used by the timeout")
)]
pub(crate) struct RequestContext {
    correlation_id: Option<CorrelationId>,
    /// The client's path is this one's, with `stripped` in front when that is set.
    path: Option<PathAndQuery>,
    /// A route prefix cut off `path` (only for a match that did not keep the client's URI).
    stripped: Option<Arc<str>>,
}

impl RequestContext {
    #[cfg_attr(
        not(feature = "timeout"),
        allow(dead_code, reason = "used by the timeout")
    )]
    #[inline]
    pub(crate) fn capture<B>(request: &Request<B>) -> Self {
        let extensions = request.extensions();
        let correlation_id = extensions.get::<CorrelationId>().cloned();
        let matched = extensions.get::<MatchedRoute>();
        // Only a request that a router took (the gateway's, or axum's) pays for its path: a
        // clone of shared bytes. A timeout on its own keeps nothing but the ID.
        let (uri, stripped) = match (original_uri(extensions), matched) {
            (Some(original), _) => (Some(original), None),
            (None, Some(matched)) => match matched.original_uri() {
                Some(original) => (Some(original), None),
                None if matched.stripped() => {
                    (Some(request.uri()), Some(Arc::from(matched.prefix())))
                }
                None => (Some(request.uri()), None),
            },
            (None, None) => (None, None),
        };
        Self {
            correlation_id,
            path: uri.and_then(Uri::path_and_query).cloned(),
            stripped,
        }
    }

    /// The problem's `instance`, when the path was kept: the client's path, never the query.
    fn instance(&self) -> Option<String> {
        let path = self.path.as_ref()?.path();
        Some(match &self.stripped {
            Some(prefix) => MatchedRoute::new(Arc::clone(prefix), true).original_path(path),
            None => path.to_owned(),
        })
    }
}

/// Whose fault a failure is, so that only the upstream's count against the upstream.
///
/// The circuit breaker, retry, the retry budget, endpoint health, metrics and logs read it
/// from [`RejectionKind::fault`] (every answer the gateway makes) or from the proxy's
/// [`ProxyError`](crate::proxy::ProxyError). A client's broken request must never open a
/// breaker that then refuses every other client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The client's: a malformed, cut-short or stalled request, a client that left, or a
    /// refusal of this client (auth, its rate limit, no route).
    Client,
    /// The upstream's: it could not be reached, broke the exchange or answered too slowly.
    Upstream,
    /// The gateway's own state or capacity (a full bulkhead, an open breaker, a store that
    /// is down), or a layer of yours that refuses with a 5xx.
    Gateway,
}

impl Fault {
    /// Runs `cancel`, which drops a future (or anything else) on someone's behalf, telling
    /// whatever it drops whose fault the cancellation is: during `cancel`, on this thread,
    /// [`of_cancellation`](Self::of_cancellation) says `self`. The
    /// [`TimeoutLayer`](crate::timeout::TimeoutLayer) drops the attempt it gave up on this
    /// way, as the upstream's fault, so that the proxy counts the timeout against the
    /// endpoint it went to. A layer of yours that cancels can do the same.
    pub fn blame<R>(self, cancel: impl FnOnce() -> R) -> R {
        struct Restore(Option<Fault>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CANCELLED_BY.with(|cell| cell.set(self.0));
            }
        }
        let _restore = Restore(CANCELLED_BY.with(|cell| cell.replace(Some(self))));
        cancel()
    }

    /// In a `Drop`, whose fault the cancellation that is dropping this value is, when the
    /// canceller said so with [`blame`](Self::blame); `None` for a plain drop (a client
    /// that hung up drops the whole request without saying anything).
    pub fn of_cancellation() -> Option<Fault> {
        CANCELLED_BY.with(std::cell::Cell::get)
    }
}

thread_local! {
    /// Set by [`Fault::blame`] while it runs.
    static CANCELLED_BY: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
}

/// What the `Allow` of a refused `CONNECT` lists: every method the gateway forwards.
const FORWARDED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// 499, nginx's "client closed request".
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

const TYPE_URI_BASE: &str =
    "https://docs.rs/tower-gateway/latest/tower_gateway/rejection/enum.RejectionKind.html#variant.";

/// An answer the gateway gives itself instead of forwarding the request.
///
/// Build one with [`Rejection::new`], capture what the body needs from the request with
/// [`for_request`](Self::for_request) (the request is gone by render time), add headers, and
/// answer with [`into_response_with`](Self::into_response_with). The response then carries
/// the `Rejection` in its extensions, so retry, the breaker, logs, metrics and tests can
/// classify it without parsing bodies: no `Rejection` means the response came from upstream.
///
/// The detail is fixed text chosen by the layer; a rejection never echoes a key or any other
/// request value except the path (as `instance`) and the correlation ID.
#[derive(Clone, Debug)]
pub struct Rejection {
    kind: RejectionKind,
    detail: Cow<'static, str>,
    headers: HeaderMap,
    correlation_id: Option<CorrelationId>,
    instance: Option<String>,
}

impl Rejection {
    /// A rejection of `kind` with that kind's default detail.
    pub fn new(kind: RejectionKind) -> Self {
        Self {
            kind,
            detail: Cow::Borrowed(kind.default_detail()),
            headers: HeaderMap::new(),
            correlation_id: None,
            instance: None,
        }
    }

    /// Replaces the human-readable detail. Never put a secret or raw request data in it.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Captures the correlation ID (from the request extensions) and the request path (as the
    /// problem's `instance`: the path the client sent, before a route prefix was stripped;
    /// the query is left out because it can carry a token).
    ///
    /// With the `axum` feature, a request that axum routed shows the path axum's
    /// `OriginalUri` holds, so under `nest_service` too the client sees the path it sent.
    pub fn for_request<B>(mut self, request: &Request<B>) -> Self {
        let extensions = request.extensions();
        if let Some(id) = extensions.get::<CorrelationId>() {
            self.correlation_id = Some(id.clone());
        }
        self.instance = Some(instance(
            request.uri(),
            extensions.get::<MatchedRoute>(),
            original_uri(extensions),
        ));
        self
    }

    /// [`for_request`](Self::for_request) with what `context` captured of the request.
    #[cfg_attr(
        not(feature = "timeout"),
        allow(dead_code, reason = "used by the timeout")
    )]
    pub(crate) fn for_context(mut self, context: RequestContext) -> Self {
        self.instance = context.instance();
        if context.correlation_id.is_some() {
            self.correlation_id = context.correlation_id;
        }
        self
    }

    /// Sets the correlation ID shown in the body (`None` leaves it as it is).
    pub fn with_correlation_id(mut self, id: impl Into<Option<CorrelationId>>) -> Self {
        if let Some(id) = id.into() {
            self.correlation_id = Some(id);
        }
        self
    }

    /// Adds a header to the response (appended, so a name may repeat).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets `Retry-After` to `wait` in whole seconds, rounded up and at least 1.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(wait).max(1)),
        );
        self
    }

    /// What kind of rejection this is.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// Whose fault it is: [`RejectionKind::fault`].
    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// The gateway's refusal of a `CONNECT` (`405`, with `Allow`): a reverse proxy forwards
    /// requests for paths, it opens no tunnels to other hosts.
    pub fn connect_refused() -> Self {
        Self::new(RejectionKind::MethodNotAllowed)
            .with_detail("the gateway does not forward CONNECT")
            .with_header(header::ALLOW, HeaderValue::from_static(FORWARDED_METHODS))
    }

    /// The status code of the answer.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The extra headers the answer carries (`Retry-After`, `WWW-Authenticate`, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The correlation ID of the rejected request, when it had one.
    pub fn correlation_id(&self) -> Option<&CorrelationId> {
        self.correlation_id.as_ref()
    }

    /// The path of the rejected request, when it was captured.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The RFC 9457 problem details of this rejection, ready to serialize.
    pub fn problem(&self) -> Problem<'_> {
        Problem {
            type_uri: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.status().as_u16(),
            detail: &self.detail,
            instance: self.instance(),
            correlation_id: self.correlation_id.as_ref().map(CorrelationId::as_str),
        }
    }

    /// Answers with `render`'s body, then sets the status, this rejection's headers and the
    /// rejection itself in the response extensions.
    pub fn into_response_with<B, R>(self, render: &mut R) -> Response<B>
    where
        R: RenderRejection<B>,
    {
        // A debug event, so a flood of rejections writes nothing at `info`. The path, never
        // the query, which can carry a token.
        tracing::debug!(
            rejection = ?self.kind,
            status = self.status().as_u16(),
            correlation_id = self.correlation_id().map_or("", CorrelationId::as_str),
            path = self.instance().unwrap_or(""),
            "rejected",
        );
        let mut response = render.render(&self);
        *response.status_mut() = self.status();
        for (name, value) in &self.headers {
            response.headers_mut().append(name, value.clone());
        }
        response.extensions_mut().insert(self);
        response
    }

    /// Answers with the default `application/problem+json` rendering ([`ProblemJson`]).
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        self.into_response_with(&mut ProblemJson)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status(), self.detail)
    }
}

/// RFC 9457 problem details: the body of the default rendering.
///
/// Serializes as `{"type", "title", "status", "detail", "instance"?, "correlation_id"?}`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Problem<'a> {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary, the same for every occurrence of the kind.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: &'a str,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<&'a str>,
    /// The request's correlation ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
}

impl Problem<'_> {
    /// The problem as a compact JSON document.
    pub fn to_json(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("a problem of strings and numbers always serializes")
            .into()
    }
}

/// `d` in whole seconds, rounded up: the unit of `Retry-After` and of the rate-limit headers.
#[cfg_attr(
    not(feature = "rate-limit"),
    allow(dead_code, reason = "shared with rate_limit")
)]
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    fn json(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn every_kind_maps_to_its_contract_status() {
        use RejectionKind::*;
        let table = [
            (BadRequest, 400),
            (Unauthorized, 401),
            (Forbidden, 403),
            (NotFound, 404),
            (RateLimited, 429),
            (ConcurrencyLimited, 429),
            (RequestHeaderFieldsTooLarge, 431),
            (BadGateway, 502),
            (CircuitOpen, 503),
            (ServiceUnavailable, 503),
            (NoHealthyUpstream, 503),
            (GatewayTimeout, 504),
        ];
        for (kind, status) in table {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert!(kind.type_uri().ends_with(&format!("{kind:?}")), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn another_status_is_a_problem_of_its_own() {
        let req = Request::post("/api/orders?token=secret").body(()).unwrap();
        let kind = RejectionKind::Other(StatusCode::UNPROCESSABLE_ENTITY);
        let res: Response<Full<Bytes>> = Rejection::new(kind)
            .with_detail("the order has no items")
            .for_request(&req)
            .into_response();
        assert_eq!(res.status(), 422);
        assert_eq!(kind.reason(), "other");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], "Unprocessable Entity");
        assert_eq!(json["status"], 422);
        assert_eq!(json["detail"], "the order has no items");
        assert_eq!(json["instance"], "/api/orders");
    }

    #[tokio::test]
    async fn problem_json_has_the_rfc_9457_members_and_the_correlation_id() {
        let mut request = Request::get("/api/a/ping?token=secret").body(()).unwrap();
        request
            .extensions_mut()
            .insert(CorrelationId::from_bytes(b"abc-123").unwrap());
        let response: Response<Full<Bytes>> = Rejection::new(RejectionKind::GatewayTimeout)
            .for_request(&request)
            .into_response();

        assert_eq!(response.status(), 504);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value = json(&body);
        assert_eq!(
            value["type"],
            "https://docs.rs/tower-gateway/latest/tower_gateway/rejection/enum.RejectionKind.html#variant.GatewayTimeout"
        );
        assert_eq!(value["title"], "Gateway Timeout");
        assert_eq!(value["status"], 504);
        assert_eq!(value["detail"], "the upstream did not answer in time");
        assert_eq!(
            value["instance"], "/api/a/ping",
            "the query is never echoed"
        );
        assert_eq!(value["correlation_id"], "abc-123");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }

    #[test]
    fn every_kind_says_whose_fault_it_is() {
        use RejectionKind::*;
        let client = [
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            MethodNotAllowed,
            RequestTimeout,
            RateLimited,
            RequestHeaderFieldsTooLarge,
            ClientClosedRequest,
            Other(StatusCode::UNPROCESSABLE_ENTITY),
        ];
        let upstream = [BadGateway, GatewayTimeout, NoHealthyUpstream];
        let gateway = [
            ConcurrencyLimited,
            CircuitOpen,
            ServiceUnavailable,
            Other(StatusCode::INSUFFICIENT_STORAGE),
        ];
        for (kinds, fault) in [
            (&client[..], Fault::Client),
            (&upstream[..], Fault::Upstream),
            (&gateway[..], Fault::Gateway),
        ] {
            for kind in kinds {
                assert_eq!(kind.fault(), fault, "{kind:?}");
            }
        }
    }

    #[test]
    fn blame_is_seen_only_inside_its_scope() {
        struct Seen(std::rc::Rc<std::cell::Cell<Option<Fault>>>);
        impl Drop for Seen {
            fn drop(&mut self) {
                self.0.set(Fault::of_cancellation());
            }
        }
        let seen = std::rc::Rc::new(std::cell::Cell::new(None));
        let value = Seen(std::rc::Rc::clone(&seen));
        Fault::Upstream.blame(|| drop(value));
        assert_eq!(seen.get(), Some(Fault::Upstream));
        drop(Seen(std::rc::Rc::clone(&seen)));
        assert_eq!(seen.get(), None, "a plain drop says nothing");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        for (wait, expected) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(1), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1001), "2"),
            (Duration::from_secs(60), "60"),
        ] {
            let rejection = Rejection::new(RejectionKind::RateLimited).with_retry_after(wait);
            assert_eq!(
                rejection.headers()[header::RETRY_AFTER],
                expected,
                "{wait:?}"
            );
        }
    }

    #[test]
    fn custom_renderer_keeps_status_headers_and_extension() {
        let mut render = |r: &Rejection| {
            Response::builder()
                .status(StatusCode::OK) // a renderer cannot change the status by mistake
                .body(r.kind().title().to_owned())
                .unwrap()
        };
        let response = Rejection::new(RejectionKind::Unauthorized)
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey header=\"x-api-key\""),
            )
            .into_response_with(&mut render);
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "ApiKey header=\"x-api-key\""
        );
        assert_eq!(response.body(), "Unauthorized");
        assert_eq!(
            response.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::Unauthorized
        );
    }

    #[test]
    fn correlation_ids_must_be_1_to_128_visible_ascii() {
        assert!(CorrelationId::from_bytes(b"a").is_some());
        assert!(CorrelationId::from_bytes(&[b'x'; 128]).is_some());
        assert!(CorrelationId::from_bytes(&[b'x'; 129]).is_none());
        assert!(CorrelationId::from_bytes(b"").is_none());
        assert!(CorrelationId::from_bytes(b"has space").is_none());
        assert!(CorrelationId::from_bytes(b"tab\there").is_none());
        assert!(CorrelationId::from_bytes("caf\u{e9}".as_bytes()).is_none());
        let obs_text = HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap();
        assert!(CorrelationId::from_header_value(&obs_text).is_none());
        let ok = HeaderValue::from_static("req-1");
        assert_eq!(
            CorrelationId::from_header_value(&ok).unwrap().as_str(),
            "req-1"
        );
    }

    #[tokio::test]
    async fn rerender_replaces_rejections_and_leaves_upstream_responses_alone() {
        let svc = ServiceBuilder::new()
            .layer(RerenderLayer::new(|r: &Rejection| {
                let mut res = Response::new(Full::from(format!("plain: {}", r.detail())));
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                res
            }))
            .service_fn(|req: Request<()>| async move {
                if req.uri().path() == "/reject" {
                    let mut res: Response<Full<Bytes>> = Rejection::new(RejectionKind::RateLimited)
                        .with_retry_after(Duration::from_secs(3))
                        .into_response();
                    // A header an inner layer added after rendering survives.
                    res.headers_mut()
                        .insert("ratelimit", HeaderValue::from_static("\"default\";r=0;t=3"));
                    Ok::<_, Infallible>(res)
                } else {
                    Ok(Response::new(Full::from("from upstream")))
                }
            });

        let res = svc
            .clone()
            .oneshot(Request::get("/reject").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(res.headers().get_all(header::RETRY_AFTER).iter().count(), 1);
        assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=3");
        assert!(res.extensions().get::<Rejection>().is_some());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "plain: the rate limit for this client is exhausted");

        let res = svc
            .oneshot(Request::get("/ok").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "from upstream");
    }
}
