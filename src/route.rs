//! Routes requests by path prefix to one service per route.
//!
//! [`Router`] holds `(prefix, service)` pairs. The longest prefix that matches the path on a
//! segment boundary wins: `/api/a` matches `/api/a`, `/api/a/` and `/api/a/ping`, never
//! `/api/ab`; the prefix `/` matches every path. The prefix is cut off before the route's
//! service sees the request (unless the route was added with
//! [`route_keeping_prefix`](RouterBuilder::route_keeping_prefix)), the query kept: `/api/a/ping?x=1` becomes
//! `/ping?x=1`, and the bare prefix `/api/a` becomes `/`.
//!
//! The matched route goes into the request extensions as a
//! [`MatchedRoute`], for logs, metrics and rejections.
//!
//! Paths with a `..` segment are refused before any route is tried, whether the dots are
//! raw or percent-encoded (`%2e%2e`, `.%2E`, ...), and whether the segment is delimited by
//! `/`, `\` or their encodings (`%2f`, `%5c`), since an upstream may decode either.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::ServiceExt;
//! use tower_gateway::route::Router;
//!
//! let echo_path = tower::service_fn(|req: Request<()>| async move {
//!     let body = Full::<Bytes>::from(req.uri().to_string());
//!     Ok::<_, std::convert::Infallible>(Response::new(body))
//! });
//! let router = Router::builder()
//!     .route("/api/a", echo_path.clone())
//!     .route_keeping_prefix("/api", echo_path)
//!     .build()
//!     .unwrap();
//!
//! let get = |path: &str| Request::get(path).body(()).unwrap();
//! let res = router.clone().oneshot(get("/api/a/ping?x=1")).await.unwrap();
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "/ping?x=1");
//! let res = router.clone().oneshot(get("/api/ab")).await.unwrap();
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "/api/ab");
//! let res = router.oneshot(get("/other")).await.unwrap();
//! assert_eq!(res.status(), 404);
//! # }
//! ```
//!
//! # Ordering
//! After correlation ID and hop-by-hop stripping, before every per-route policy: a 404 or a
//! 400 costs no rate-limit token and never reaches a breaker.
//!
//! # Rejections
//! - `404 Not Found`, kind [`RejectionKind::NotFound`]: no route matches.
//! - `405 Method Not Allowed`, kind [`RejectionKind::MethodNotAllowed`], with `Allow`: a
//!   `CONNECT`, whatever its target ([`Rejection::connect_refused`]).
//! - `400 Bad Request`, kind [`RejectionKind::BadRequest`]: a `..` segment in the path, or a
//!   request target that is not a path (`OPTIONS *`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tower::util::Oneshot;

use crate::extensions::MatchedRoute;
use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// A route prefix that is not of the form `/` or `/seg(/seg)*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The prefix is empty, lacks the leading `/`, ends in `/`, has an empty, `.` or `..`
    /// segment, or has a character outside a URI path.
    #[error("invalid route prefix {0:?}: expected `/` or `/segment(/segment)*`")]
    InvalidPrefix(String),
    /// Two routes share a prefix.
    #[error("duplicate route prefix {0:?}")]
    DuplicatePrefix(String),
}

/// Checks a route prefix: `/`, or `/`-separated non-empty segments with no trailing `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), RouteError> {
    let invalid = || RouteError::InvalidPrefix(prefix.to_owned());
    if prefix == "/" {
        return Ok(());
    }
    let rest = prefix.strip_prefix('/').ok_or_else(invalid)?;
    if PathAndQuery::try_from(prefix).map_or(true, |p| p.query().is_some() || p.path() != prefix) {
        return Err(invalid());
    }
    for segment in rest.split('/') {
        if matches!(segment, "" | "." | "..") || has_dot_dot(segment) {
            return Err(invalid());
        }
    }
    Ok(())
}

/// Whether `path` has a `..` segment, raw or percent-encoded, delimited by `/`, `\` or
/// their encodings.
pub fn has_dot_dot(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Fast path: no `%`, `\` or `..` at all, so no `..` segment either.
    if !bytes.iter().any(|&b| b == b'%' || b == b'\\') && !bytes.windows(2).any(|w| w == b"..") {
        return false;
    }
    // Decode just what matters: `.` and the two separators.
    let mut segment_dots = 0usize; // dots in the current segment, or usize::MAX once it has another char
    let mut i = 0;
    loop {
        let (unit, len) = match bytes.get(i) {
            None => (Unit::Separator, 1),
            Some(b'/') | Some(b'\\') => (Unit::Separator, 1),
            Some(b'.') => (Unit::Dot, 1),
            Some(b'%') => match decode_pct(bytes.get(i + 1..i + 3)) {
                Some(b'.') => (Unit::Dot, 3),
                Some(b'/') | Some(b'\\') => (Unit::Separator, 3),
                _ => (Unit::Other, 1),
            },
            Some(_) => (Unit::Other, 1),
        };
        match unit {
            Unit::Separator => {
                if segment_dots == 2 {
                    return true;
                }
                if i >= bytes.len() {
                    return false;
                }
                segment_dots = 0;
            }
            Unit::Dot => segment_dots = segment_dots.saturating_add(1),
            Unit::Other => segment_dots = usize::MAX,
        }
        i += len;
    }
}

enum Unit {
    Separator,
    Dot,
    Other,
}

fn decode_pct(hex: Option<&[u8]>) -> Option<u8> {
    let hex = hex?;
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

struct Entry<S> {
    prefix: Arc<str>,
    strip: bool,
    service: S,
}

type MatchHook = Arc<dyn Fn(&MatchedRoute) + Send + Sync>;
type RefusalHook = Arc<dyn Fn(&Method, &Rejection) + Send + Sync>;

/// What the router tells its observers (see [`RouterBuilder::on_match`] and
/// [`RouterBuilder::on_refusal`]).
#[derive(Clone, Default)]
struct Hooks {
    on_match: Option<MatchHook>,
    on_refusal: Option<RefusalHook>,
}

/// Collects routes for a [`Router`].
#[must_use]
pub struct RouterBuilder<S, R = ProblemJson> {
    routes: Vec<Entry<S>>,
    render: R,
    hooks: Hooks,
}

impl<S, R> fmt::Debug for RouterBuilder<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefixes: Vec<&str> = self.routes.iter().map(|e| &*e.prefix).collect();
        f.debug_struct("RouterBuilder")
            .field("prefixes", &prefixes)
            .finish_non_exhaustive()
    }
}

impl<S, R> RouterBuilder<S, R> {
    /// Adds a route: requests whose path is under `prefix` go to `service`, with the prefix
    /// cut off (`/api/a/ping` under `/api/a` reaches it as `/ping`).
    pub fn route(self, prefix: impl Into<String>, service: S) -> Self {
        self.push(prefix.into(), true, service)
    }

    /// Adds a route whose `service` sees the path as the client sent it, prefix included.
    pub fn route_keeping_prefix(self, prefix: impl Into<String>, service: S) -> Self {
        self.push(prefix.into(), false, service)
    }

    fn push(mut self, prefix: String, strip: bool, service: S) -> Self {
        self.routes.push(Entry {
            prefix: prefix.into(),
            strip,
            service,
        });
        self
    }

    /// Renders the 404 and 400 with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> RouterBuilder<S, R2> {
        RouterBuilder {
            routes: self.routes,
            render,
            hooks: self.hooks,
        }
    }

    /// Calls `hook` with each request's [`MatchedRoute`] when a route takes it, before the
    /// route's service is called, in the task (and tracing span) of the call. It runs on
    /// the request path, so keep it cheap. The gateway's request span records its `route`
    /// field with it.
    pub fn on_match<F>(mut self, hook: F) -> Self
    where
        F: Fn(&MatchedRoute) + Send + Sync + 'static,
    {
        self.hooks.on_match = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` with the method and the rejection of each request the router answers
    /// itself (no route matches, or a path it refuses), before the answer is rendered. The
    /// gateway's metrics count these under `route=""` with it.
    pub fn on_refusal<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Method, &Rejection) + Send + Sync + 'static,
    {
        self.hooks.on_refusal = Some(Arc::new(hook));
        self
    }

    /// Checks every prefix and builds the router.
    pub fn build(mut self) -> Result<Router<S, R>, RouteError> {
        for entry in &self.routes {
            validate_prefix(&entry.prefix)?;
        }
        // Longest first, so the first match is the longest.
        self.routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        if let Some(pair) = self.routes.windows(2).find(|w| w[0].prefix == w[1].prefix) {
            return Err(RouteError::DuplicatePrefix(pair[0].prefix.to_string()));
        }
        Ok(Router {
            routes: self.routes.into(),
            render: self.render,
            hooks: self.hooks,
        })
    }
}

/// Routes by longest path prefix; see the [module docs](self).
///
/// Cloning is a reference-count bump: the routes are shared. Each request clones the matched
/// route's service, so keep those cheap to clone too (state behind an `Arc`).
pub struct Router<S, R = ProblemJson> {
    routes: Arc<[Entry<S>]>,
    render: R,
    hooks: Hooks,
}

impl<S> Router<S> {
    /// Starts a router.
    pub fn builder() -> RouterBuilder<S> {
        RouterBuilder {
            routes: Vec::new(),
            render: ProblemJson,
            hooks: Hooks::default(),
        }
    }
}

impl<S, R: Clone> Clone for Router<S, R> {
    fn clone(&self) -> Self {
        Self {
            routes: Arc::clone(&self.routes),
            render: self.render.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

impl<S, R> fmt::Debug for Router<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefixes: Vec<&str> = self.routes.iter().map(|e| &*e.prefix).collect();
        f.debug_struct("Router")
            .field("prefixes", &prefixes)
            .finish_non_exhaustive()
    }
}

impl<S, R> Router<S, R> {
    /// The index of the route that serves `path`, if any.
    fn find(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|entry| {
            let prefix = &*entry.prefix;
            prefix == "/"
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// The prefixes, longest first.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|entry| &*entry.prefix)
    }
}

/// `uri` with `prefix` cut off its path (`/` if nothing is left), the query kept.
fn strip(uri: &Uri, prefix: &str) -> Option<Uri> {
    if prefix == "/" {
        return None;
    }
    let rest = &uri.path()[prefix.len()..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")),
        None => PathAndQuery::try_from(rest),
    }
    .ok()?;
    if uri.scheme().is_none() && uri.authority().is_none() {
        // Origin form, as nearly every request: nothing else to carry over.
        return Some(Uri::from(path_and_query));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

impl<S, R> Router<S, R> {
    /// Tells the refusal hook, if any, of a request the router answers itself.
    #[inline]
    fn refused<B>(&self, req: &Request<B>, rejection: &Rejection) {
        if let Some(hook) = &self.hooks.on_refusal {
            hook(req.method(), rejection);
        }
    }
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for Router<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    R: RenderRejection<ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>, ResB>;

    /// Always ready: readiness is the matched route's business, driven in the future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        if req.method() == Method::CONNECT {
            let rejection = Rejection::connect_refused().for_request(&req);
            self.refused(&req, &rejection);
            return ResponseFuture::answer(rejection.into_response_with(&mut self.render));
        }
        let path = req.uri().path();
        if !path.starts_with('/') {
            // Authority form or asterisk form (`OPTIONS *`): nothing to route.
            let rejection = Rejection::new(RejectionKind::BadRequest)
                .with_detail("the request target must be an absolute path")
                .for_request(&req);
            self.refused(&req, &rejection);
            return ResponseFuture::answer(rejection.into_response_with(&mut self.render));
        }
        if has_dot_dot(path) {
            let rejection = Rejection::new(RejectionKind::BadRequest)
                .with_detail("the request path has a `..` segment")
                .for_request(&req);
            self.refused(&req, &rejection);
            return ResponseFuture::answer(rejection.into_response_with(&mut self.render));
        }
        let Some(index) = self.find(path) else {
            let rejection = Rejection::new(RejectionKind::NotFound).for_request(&req);
            self.refused(&req, &rejection);
            return ResponseFuture::answer(rejection.into_response_with(&mut self.render));
        };
        let entry = &self.routes[index];
        let stripped = entry
            .strip
            .then(|| strip(req.uri(), &entry.prefix))
            .flatten()
            .map(|uri| std::mem::replace(req.uri_mut(), uri));
        let matched = match stripped {
            // The client's URI moves into the match: rejections show its path.
            Some(original) => {
                MatchedRoute::new(Arc::clone(&entry.prefix), true).with_original_uri(original)
            }
            None => MatchedRoute::new(Arc::clone(&entry.prefix), false),
        };
        if let Some(hook) = &self.hooks.on_match {
            hook(&matched);
        }
        req.extensions_mut().insert(matched);
        ResponseFuture::route(Oneshot::new(entry.service.clone(), req))
    }
}

pin_project! {
    /// Response future of [`Router`].
    pub struct ResponseFuture<S, Req, B>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, B>
    where
        S: Service<Req>,
    {
        Route { #[pin] fut: Oneshot<S, Req> },
        Answer { res: Option<Response<B>> },
    }
}

impl<S: Service<Req>, Req, B> ResponseFuture<S, Req, B> {
    fn route(fut: Oneshot<S, Req>) -> Self {
        Self {
            state: State::Route { fut },
        }
    }

    fn answer(res: Response<B>) -> Self {
        Self {
            state: State::Answer { res: Some(res) },
        }
    }
}

impl<S: Service<Req>, Req, B> fmt::Debug for ResponseFuture<S, Req, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, Req, B> Future for ResponseFuture<S, Req, B>
where
    S: Service<Req, Response = Response<B>>,
{
    type Output = Result<Response<B>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Route { fut } => fut.poll(cx),
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Tag(&'static str);

    impl Service<Request<()>> for Tag {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::from(format!(
                "{} {}",
                self.0,
                req.uri()
            )))))
        }
    }

    fn router() -> Router<Tag> {
        Router::builder()
            .route("/api/a", Tag("a"))
            .route_keeping_prefix("/api", Tag("api"))
            .route("/api/a/deep", Tag("deep"))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn hooks_see_each_match_and_each_refusal() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (matched, refused) = (Arc::clone(&seen), Arc::clone(&seen));
        let router = Router::builder()
            .route("/api/a", Tag("a"))
            .on_match(move |route: &MatchedRoute| {
                let entry = format!("match {} {}", route.prefix(), route.stripped());
                matched.lock().unwrap().push(entry);
            })
            .on_refusal(move |method: &Method, rejection: &Rejection| {
                let entry = format!("refuse {method} {}", rejection.status().as_u16());
                refused.lock().unwrap().push(entry);
            })
            .build()
            .unwrap();
        assert_eq!(get(&router, "/api/a/x").await.0, 200);
        assert_eq!(get(&router, "/other").await.0, 404);
        assert_eq!(get(&router, "/api/a/../b").await.0, 400);
        assert_eq!(
            *seen.lock().unwrap(),
            ["match /api/a true", "refuse GET 404", "refuse GET 400"]
        );
    }

    async fn get(router: &Router<Tag>, uri: &str) -> (u16, String) {
        let res = router
            .clone()
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn longest_prefix_on_a_segment_boundary_wins() {
        let r = router();
        assert_eq!(
            get(&r, "/api/a/ping?x=1").await,
            (200, "a /ping?x=1".into())
        );
        assert_eq!(get(&r, "/api/a").await, (200, "a /".into()));
        assert_eq!(get(&r, "/api/a?x=1").await, (200, "a /?x=1".into()));
        assert_eq!(get(&r, "/api/a/").await, (200, "a /".into()));
        assert_eq!(get(&r, "/api/a/deep/x").await, (200, "deep /x".into()));
        assert_eq!(get(&r, "/api/ab").await, (200, "api /api/ab".into()));
        assert_eq!(get(&r, "/api").await, (200, "api /api".into()));
        assert_eq!(get(&r, "/apix").await.0, 404);
        assert_eq!(get(&r, "/").await.0, 404);
    }

    #[tokio::test]
    async fn the_matched_route_goes_into_the_extensions() {
        let r = Router::builder()
            .route(
                "/api/a",
                tower::service_fn(|req: Request<()>| async move {
                    let route = req.extensions().get::<MatchedRoute>().unwrap();
                    assert_eq!((route.prefix(), route.stripped()), ("/api/a", true));
                    assert_eq!(route.original_path(req.uri().path()), "/api/a/x");
                    // A rejection made here shows the path the client sent.
                    let res = Rejection::new(RejectionKind::Forbidden).for_request(&req);
                    assert_eq!(res.instance(), Some("/api/a/x"));
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }),
            )
            .build()
            .unwrap();
        assert_eq!(get_any(&r, "/api/a/x").await, 200);
    }

    async fn get_any<S>(router: &Router<S>, uri: &str) -> u16
    where
        S: Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
    {
        let req = Request::get(uri).body(()).unwrap();
        router.clone().oneshot(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn root_prefix_catches_everything_else() {
        let r = Router::builder()
            .route("/", Tag("root"))
            .route("/a", Tag("a"))
            .build()
            .unwrap();
        assert_eq!(get(&r, "/a/x").await, (200, "a /x".into()));
        assert_eq!(get(&r, "/b/x?q").await, (200, "root /b/x?q".into()));
    }

    #[tokio::test]
    async fn not_found_and_traversal_are_problem_json() {
        let r = router();
        let res = r
            .clone()
            .oneshot(Request::get("/nope").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(
            res.extensions().get::<Rejection>().unwrap().kind(),
            RejectionKind::NotFound
        );
        for bad in [
            "/api/a/../secret",
            "/api/a/..",
            "/api/a/%2e%2e/x",
            "/api/a/%2E%2e",
            "/api/a/.%2e/x",
            "/api/a/%2e./x",
            "/api/a/x%2f..%2fy",
            "/api/a/x%5c..",
            "/..",
        ] {
            assert_eq!(get(&r, bad).await.0, 400, "{bad}");
        }
        for fine in [
            "/api/a/..x",
            "/api/a/x..",
            "/api/a/.../y",
            "/api/a/%2e",
            "/api/a/a.b",
        ] {
            assert_eq!(get(&r, fine).await.0, 200, "{fine}");
        }
    }

    #[test]
    fn prefixes_are_validated() {
        for ok in ["/", "/a", "/api/v1", "/a-b_c.d~"] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "a", "/a/", "//a", "/a//b", "/a/../b", "/a/./b", "/a?x", "/a b", "/%2e%2e",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
        let dup = Router::builder()
            .route("/a", Tag("1"))
            .route_keeping_prefix("/a", Tag("2"))
            .build();
        assert!(matches!(dup, Err(RouteError::DuplicatePrefix(p)) if p == "/a"));
    }
}
