//! Removes hop-by-hop headers from requests and responses (RFC 9110 §7.6.1).
//!
//! # The rule
//! In both directions [`HopByHopLayer`] removes
//! - `Connection`, `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade` and `Proxy-Connection`, except that a
//!   request's `TE` that lists `trailers` becomes `TE: trailers` (the one value HTTP/2
//!   allows, and what gRPC needs end to end);
//! - every header named in any `Connection` value (all values, every comma-separated token,
//!   any case), except the *protected* names, which a client may not strip this way:
//!   by default `x-correlation-id`, which the outer correlation layer has already set (the
//!   trick of naming a header a proxy adds in `Connection`, so the next hop drops it, was
//!   CVE-2024-45410 in Traefik). Add more with [`HopByHopLayer::protect`].
//!
//! with one exception, a WebSocket upgrade that the proxy will tunnel:
//! - a request whose `Connection` has the token `upgrade` and whose `Upgrade` has the token
//!   `websocket` keeps `Upgrade` and gets `Connection: upgrade` (other `Connection` tokens and
//!   the headers they name are still removed);
//! - the response to such a request keeps them too when it is `101 Switching Protocols` with
//!   `Upgrade: websocket`. Any other response is stripped as usual.
//!
//! `Transfer-Encoding` and `Content-Length` are framing: hyper re-frames the body on each hop
//! from the body itself, so dropping a client's `Transfer-Encoding` loses nothing.
//!
//! # Cost
//! The common case (no hop-by-hop header present) is one lookup of `Connection` and one pass
//! over the header names, comparing each with the nine fixed names; nothing is allocated.
//! Headers are then removed only when present, one `remove` for each that is, never one per
//! name on the list.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::hop_by_hop::HopByHopLayer;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(HopByHopLayer::new())
//!     .service_fn(|req: Request<()>| async move {
//!         assert!(req.headers().get("connection").is_none());
//!         assert!(req.headers().get("x-session-hint").is_none()); // named in Connection
//!         assert_eq!(req.headers()["accept"], "*/*"); // end-to-end: kept
//!         let res = Response::builder().header("keep-alive", "timeout=5").body(()).unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     });
//!
//! let req = Request::get("/")
//!     .header("connection", "keep-alive, x-session-hint")
//!     .header("x-session-hint", "hop-local")
//!     .header("accept", "*/*")
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert!(res.headers().get("keep-alive").is_none());
//! # }
//! ```
//!
//! # Ordering
//! Just inside the correlation ID layer and outside routing: the layers and the upstream
//! behind it never see connection-level headers, and the client never sees the upstream's.
//!
//! # Rejections
//! None: this layer never refuses a request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fixed hop-by-hop names, in the bit order of [`fixed_index`].
const FIXED: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    PROXY_CONNECTION,
];
/// Up to this many names nominated by `Connection` are looked for in the one pass over the
/// header names; more (never seen in practice, but a client can send thousands) are removed
/// by lookup instead, so the cost stays linear.
const SCAN_NOMINATED: usize = 8;
const CONNECTION: usize = 0;
const UPGRADE: usize = 7;
const CONNECTION_BIT: u16 = 1 << CONNECTION;
const UPGRADE_BIT: u16 = 1 << UPGRADE;
const TE_BIT: u16 = 1 << 4;

#[inline]
fn fixed_index(name: &str) -> Option<usize> {
    fixed_index_bytes(name.as_bytes())
}

/// Like [`fixed_index`] for a lowercase name; a `Connection` token goes through
/// [`fixed_token_index`] instead. The length (and one byte) picks the only candidate, so a
/// name costs one comparison at most.
#[inline]
fn fixed_index_bytes(name: &[u8]) -> Option<usize> {
    let candidate = match name.len() {
        2 => 4,
        7 if name[0] == b't' => 5,
        7 => 7,
        10 if name[0] == b'c' => 0,
        10 => 1,
        16 => 8,
        17 => 6,
        18 => 2,
        19 => 3,
        _ => return None,
    };
    (FIXED[candidate].as_str().as_bytes() == name).then_some(candidate)
}

/// [`fixed_index`] of a `Connection` token in any case, without allocating.
fn fixed_token_index(token: &[u8]) -> Option<usize> {
    if token.iter().any(u8::is_ascii_uppercase) {
        let mut lower = [0u8; 19]; // the longest fixed name, `proxy-authorization`
        let lower = lower.get_mut(..token.len())?;
        for (dst, src) in lower.iter_mut().zip(token) {
            *dst = src.to_ascii_lowercase();
        }
        fixed_index_bytes(lower)
    } else {
        fixed_index_bytes(token)
    }
}

/// The comma-separated tokens of every value of `name`, trimmed, empty ones skipped.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Strips `headers` by the module's rule. With `allow_upgrade`, a WebSocket upgrade keeps
/// `Upgrade` and `Connection: upgrade`; returns whether it did. With `te_trailers` (a
/// request), a `TE` that lists `trailers` leaves `TE: trailers` behind.
fn strip(
    headers: &mut HeaderMap,
    allow_upgrade: bool,
    te_trailers: bool,
    protected: &[HeaderName],
) -> bool {
    // Names nominated by `Connection` that are not fixed hop-by-hop names. Rare: a `Vec`
    // allocates only when one is pushed.
    let mut nominated: Vec<HeaderName> = Vec::new();
    let mut connection_upgrade = false;
    for token in tokens(headers, &header::CONNECTION) {
        match fixed_token_index(token) {
            Some(UPGRADE) => connection_upgrade = true,
            Some(_) => {} // removed anyway
            // `close` names no header: nothing to do, nothing to allocate.
            None if token.eq_ignore_ascii_case(b"close") => {}
            // `from_bytes` lowercases; a token that is no valid header name is ignored.
            None => {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    if !protected.contains(&name) {
                        nominated.push(name);
                    }
                }
            }
        }
    }
    let websocket = allow_upgrade
        && connection_upgrade
        && tokens(headers, &header::UPGRADE).any(|proto| {
            let name = proto.split(|&b| b == b'/').next().unwrap_or_default();
            name.eq_ignore_ascii_case(b"websocket")
        });

    // One pass over the names: which fixed names are present (a bit each), and whether any
    // nominated one is.
    let scan_nominated = !nominated.is_empty() && nominated.len() <= SCAN_NOMINATED;
    let mut present: u16 = 0;
    let mut nominated_present = nominated.len() > SCAN_NOMINATED;
    for name in headers.keys() {
        match fixed_index(name.as_str()) {
            Some(i) => present |= 1 << i,
            None if scan_nominated => nominated_present |= nominated.contains(name),
            None => {}
        }
    }
    if websocket {
        present &= !(CONNECTION_BIT | UPGRADE_BIT);
    }
    // gRPC needs `TE: trailers` end to end (RFC 9113 §8.2.2 allows it, and only it, over
    // HTTP/2): the one value kept, whatever else the client listed with it.
    let trailers = te_trailers
        && present & TE_BIT != 0
        && tokens(headers, &header::TE).any(|coding| {
            let mut parts = coding.split(|&b| b == b';');
            let name = parts.next().unwrap_or_default();
            // `q=0` (or `0.000`) says "not acceptable".
            let refused = parts.any(|param| {
                let param = param.trim_ascii();
                param.len() > 2
                    && param[..2].eq_ignore_ascii_case(b"q=")
                    && param[2..].iter().all(|&b| b == b'0' || b == b'.')
            });
            name.trim_ascii().eq_ignore_ascii_case(b"trailers") && !refused
        });
    while present != 0 {
        let i = present.trailing_zeros() as usize;
        present &= present - 1;
        headers.remove(&FIXED[i]);
    }
    if nominated_present {
        for name in &nominated {
            headers.remove(name);
        }
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    websocket
}

/// Removes hop-by-hop headers in both directions; see the [module docs](self) for the rule.
#[derive(Clone, Debug)]
#[must_use]
pub struct HopByHopLayer {
    protected: Arc<[HeaderName]>,
}

impl HopByHopLayer {
    /// The contract's rule, with `x-correlation-id` protected.
    pub fn new() -> Self {
        Self {
            protected: Arc::new([HeaderName::from_static("x-correlation-id")]),
        }
    }

    /// Protects `name` from removal by a `Connection` token, as well as the names already
    /// protected. The fixed hop-by-hop names cannot be protected.
    pub fn protect(mut self, name: HeaderName) -> Self {
        if !self.protected.contains(&name) {
            let mut names = self.protected.to_vec();
            names.push(name);
            self.protected = names.into();
        }
        self
    }
}

impl Default for HopByHopLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for HopByHopLayer {
    type Service = HopByHop<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HopByHop {
            inner,
            protected: Arc::clone(&self.protected),
        }
    }
}

/// Service of [`HopByHopLayer`].
#[derive(Clone, Debug)]
pub struct HopByHop<S> {
    inner: S,
    protected: Arc<[HeaderName]>,
}

impl<S> HopByHop<S> {
    /// Wraps `inner` with the default rule.
    pub fn new(inner: S) -> Self {
        HopByHopLayer::new().layer(inner)
    }

    /// A [`HopByHopLayer`] with the default rule.
    pub fn layer() -> HopByHopLayer {
        HopByHopLayer::new()
    }

    inner_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HopByHop<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let websocket = strip(req.headers_mut(), true, true, &self.protected);
        ResponseFuture {
            inner: self.inner.call(req),
            websocket,
            protected: Arc::clone(&self.protected),
        }
    }
}

pin_project! {
    /// Response future of [`HopByHop`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        websocket: bool,
        protected: Arc<[HeaderName]>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("websocket", &self.websocket)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let switching = *this.websocket && response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip(response.headers_mut(), switching, false, this.protected);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    const ALL_FIXED: &[(&str, &str)] = &[
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic"),
        ("proxy-authorization", "Basic Zm9v"),
        ("te", "gzip, deflate;q=0.5"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("proxy-connection", "keep-alive"),
        ("accept", "*/*"),
        ("authorization", "Bearer end-to-end"),
    ];

    #[test]
    fn fixed_index_knows_exactly_the_nine_names() {
        for (i, name) in FIXED.iter().enumerate() {
            assert_eq!(fixed_index(name.as_str()), Some(i), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(fixed_token_index(upper.as_bytes()), Some(i), "{upper}");
        }
        for other in [
            "",
            "t",
            "tx",
            "trailers",
            "upgrades",
            "connectio",
            "keep-alivf",
            "host",
        ] {
            assert_eq!(fixed_index(other), None, "{other}");
        }
        assert_eq!(fixed_token_index(&[b'A'; 40]), None);
    }

    #[test]
    fn removes_every_fixed_name_and_keeps_end_to_end_headers() {
        let mut headers = map(ALL_FIXED);
        assert!(!strip(&mut headers, true, true, &[]));
        assert_eq!(names(&headers), ["accept", "authorization"]);
    }

    #[test]
    fn a_request_te_listing_trailers_forwards_just_trailers_and_a_response_none() {
        for (te, kept) in [
            ("trailers", true),
            ("gzip, Trailers", true),
            ("deflate;q=0.5,trailers;q=1", true),
            ("trailers;q=0", false),
            ("trailers; q=0.000, gzip", false),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let mut headers = map(&[("te", te), ("connection", "TE"), ("accept", "*/*")]);
            strip(&mut headers, true, true, &[]);
            let want = kept.then_some("trailers");
            assert_eq!(
                headers.get("te").map(|v| v.to_str().unwrap()),
                want,
                "TE: {te}"
            );
            assert!(headers.get("connection").is_none());
            let mut headers = map(&[("te", te)]);
            strip(&mut headers, false, false, &[]);
            assert!(headers.get("te").is_none(), "a response keeps no TE: {te}");
        }
    }

    #[test]
    fn removes_names_listed_in_every_connection_value_in_any_case() {
        let mut headers = map(&[
            ("connection", " X-One ,, x-two"),
            ("connection", "X-THREE"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-two", "2b"),
            ("x-three", "3"),
            ("x-four", "4"),
        ]);
        strip(&mut headers, true, true, &[]);
        assert_eq!(names(&headers), ["x-four"]);
    }

    #[test]
    fn protected_names_survive_a_connection_nomination() {
        let mut headers = map(&[
            ("connection", "x-correlation-id, x-forwarded-for, x-gone"),
            ("x-correlation-id", "abc"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-gone", "1"),
        ]);
        let protected = HopByHopLayer::new()
            .protect(HeaderName::from_static("x-forwarded-for"))
            .protected;
        strip(&mut headers, true, true, &protected);
        assert_eq!(names(&headers), ["x-correlation-id", "x-forwarded-for"]);
    }

    #[test]
    fn thousands_of_nominated_names_are_all_removed() {
        let nominated: Vec<String> = (0..3000).map(|i| format!("x-n{i}")).collect();
        let mut pairs: Vec<(&str, &str)> = nominated.iter().map(|n| (n.as_str(), "v")).collect();
        let connection = nominated.join(",");
        pairs.push(("connection", &connection));
        pairs.push(("x-kept", "v"));
        let mut headers = map(&pairs);
        strip(&mut headers, true, true, &[]);
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn junk_connection_tokens_are_ignored() {
        let mut headers = map(&[("connection", "close, bad name, (x), ,"), ("accept", "a")]);
        strip(&mut headers, true, true, &[]);
        assert_eq!(names(&headers), ["accept"]);
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_and_normalizes_connection() {
        let mut headers = map(&[
            ("connection", "keep-alive, Upgrade, x-hop"),
            ("upgrade", "WebSocket"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(strip(&mut headers, true, true, &[]));
        assert_eq!(
            names(&headers),
            ["connection", "sec-websocket-key", "upgrade"]
        );
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "WebSocket");
    }

    #[test]
    fn other_upgrades_or_disallowed_ones_are_stripped() {
        for (pairs, allow) in [
            (&[("connection", "upgrade"), ("upgrade", "h2c")][..], true),
            (&[("upgrade", "websocket")][..], true), // no `Connection: upgrade`
            (
                &[("connection", "upgrade"), ("upgrade", "websocket")][..],
                false,
            ),
        ] {
            let mut headers = map(pairs);
            assert!(!strip(&mut headers, allow, true, &[]));
            assert!(headers.is_empty(), "{pairs:?} left {headers:?}");
        }
    }

    type Seen = Arc<Mutex<Option<HeaderMap>>>;

    fn echo_svc(
        seen: Seen,
        status: StatusCode,
        response_headers: &'static [(&'static str, &'static str)],
    ) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> {
        ServiceBuilder::new()
            .layer(HopByHopLayer::new())
            .service_fn(move |req: Request<()>| {
                *seen.lock().unwrap() = Some(req.headers().clone());
                let mut res = Response::new(());
                *res.status_mut() = status;
                *res.headers_mut() = map(response_headers);
                async move { Ok::<_, Infallible>(res) }
            })
    }

    #[tokio::test]
    async fn strips_both_directions_through_the_service() {
        let seen = Seen::default();
        let svc = echo_svc(
            Arc::clone(&seen),
            StatusCode::OK,
            &[
                ("connection", "close, x-upstream-hop"),
                ("x-upstream-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("content-type", "text/plain"),
            ],
        );
        let mut req = Request::new(());
        *req.headers_mut() = map(ALL_FIXED);
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(
            names(seen.lock().unwrap().as_ref().unwrap()),
            ["accept", "authorization"]
        );
        assert_eq!(names(res.headers()), ["content-type"]);
    }

    #[tokio::test]
    async fn websocket_response_keeps_upgrade_only_on_101() {
        let upgrade_req = || {
            Request::get("/ws")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(())
                .unwrap()
        };
        let switching: &'static [(&str, &str)] =
            &[("connection", "Upgrade"), ("upgrade", "websocket")];

        let seen = Seen::default();
        let res = echo_svc(
            Arc::clone(&seen),
            StatusCode::SWITCHING_PROTOCOLS,
            switching,
        )
        .oneshot(upgrade_req())
        .await
        .unwrap();
        assert_eq!(res.headers()["connection"], "upgrade");
        assert_eq!(res.headers()["upgrade"], "websocket");
        assert_eq!(
            seen.lock().unwrap().as_ref().unwrap()["upgrade"],
            "websocket"
        );

        // The upstream refused the upgrade: its answer is stripped as usual.
        let res = echo_svc(Seen::default(), StatusCode::OK, switching)
            .oneshot(upgrade_req())
            .await
            .unwrap();
        assert!(res.headers().is_empty());

        // A 101 to a request that did not ask for a WebSocket is stripped too.
        let res = echo_svc(Seen::default(), StatusCode::SWITCHING_PROTOCOLS, switching)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert!(res.headers().is_empty());
    }

    #[tokio::test]
    async fn clones_share_the_protected_names() {
        let layer = HopByHopLayer::new().protect(HeaderName::from_static("x-keep"));
        let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            assert_eq!(req.headers()["x-keep"], "1");
            Ok::<_, Infallible>(Response::new(()))
        }));
        for svc in [svc.clone(), svc] {
            let req = Request::get("/")
                .header("connection", "x-keep")
                .header("x-keep", "1")
                .body(())
                .unwrap();
            svc.oneshot(req).await.unwrap();
        }
    }
}
