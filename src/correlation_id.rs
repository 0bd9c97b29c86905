//! Gives every request a correlation ID, sends it upstream and returns it on every response.
//!
//! [`CorrelationIdLayer`] keeps the client's `X-Correlation-Id` when it is 1 to 128 visible
//! ASCII characters, and otherwise (missing, empty, too long, spaces, non-ASCII, or sent more
//! than once) replaces it with a new random ID. The kept or new ID is
//! - set on the request, so the upstream sees it;
//! - put into the request extensions as a typed [`CorrelationId`], for later layers, handlers
//!   and every [`Rejection`](crate::rejection::Rejection) body;
//! - set on the response, replacing whatever the inner service sent, so the client always gets
//!   back the ID its request travelled under, on the gateway's own answers too.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::{correlation_id::CorrelationIdLayer, extensions::CorrelationId};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new())
//!     .service_fn(|req: Request<()>| async move {
//!         let id = req.extensions().get::<CorrelationId>().unwrap();
//!         assert_eq!(req.headers()["x-correlation-id"], id.as_str());
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     });
//!
//! let req = Request::get("/").header("x-correlation-id", "order-42").body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-correlation-id"], "order-42");
//!
//! let res = svc.oneshot(Request::new(())).await.unwrap(); // none sent: one is made
//! assert_eq!(res.headers()["x-correlation-id"].len(), 36);
//! # }
//! ```
//!
//! # Ordering
//! Outermost, before every other layer: the ID must exist before any layer can reject, so
//! that rejection bodies carry it, and the response header is set on every answer, the
//! gateway's own included.
//!
//! # Rejections
//! None: this layer never refuses a request.
//!
//! # Why not tower-http's request ID
//! tower-http's `SetRequestIdLayer` keeps any client value as it is, and
//! `PropagateRequestIdLayer` leaves a response header that the inner service already set. The
//! contract needs both the other way round (a bad client value is replaced; the response
//! always carries the ID the request travelled under) and a validated type that rejections can
//! rely on. Doing it here also costs one header lookup per direction instead of three layers.
//!
//! # Generated IDs
//! [`RandomId`], the default, makes UUID-v4-shaped IDs (36 characters, 122 random bits) from a
//! per-thread generator seeded by the standard library's random hasher keys: no lock, no
//! shared counter, no system call per ID. They are unique, not secret; plug in your own
//! [`MakeCorrelationId`] (any `FnMut() -> CorrelationId + Clone`) for another format.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{Entry, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::extensions::CorrelationId;

/// The default header: `x-correlation-id`.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Makes a new correlation ID when the client sent no usable one.
pub trait MakeCorrelationId {
    /// A fresh ID.
    fn make_correlation_id(&mut self) -> CorrelationId;
}

impl<F> MakeCorrelationId for F
where
    F: FnMut() -> CorrelationId,
{
    fn make_correlation_id(&mut self) -> CorrelationId {
        self()
    }
}

/// Random UUID-v4-shaped IDs from a per-thread generator (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomId;

impl MakeCorrelationId for RandomId {
    fn make_correlation_id(&mut self) -> CorrelationId {
        random_id()
    }
}

thread_local! {
    static RNG_STATE: Cell<u64> = const { Cell::new(0) };
}

/// splitmix64: a bijection of a per-thread counter, so a thread never repeats a value.
fn next_random() -> u64 {
    RNG_STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            // The standard library seeds its hasher keys from the OS once per thread.
            s = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_id() -> CorrelationId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = (next_random() & !0xf000) | 0x4000; // version 4
    let lo = (next_random() & !(0b11 << 62)) | (0b10 << 62); // RFC 9562 variant
    // 8-4-4-4-12 hex digits: `hi` fills the first three groups, `lo` the last two.
    let mut out = [b'-'; 36];
    let positions = (0..8).chain(9..13).chain(14..18).zip(0..16);
    for (pos, nibble) in positions {
        out[pos] = HEX[(hi >> (60 - 4 * nibble) & 0xf) as usize];
    }
    let positions = (19..23).chain(24..36).zip(0..16);
    for (pos, nibble) in positions {
        out[pos] = HEX[(lo >> (60 - 4 * nibble) & 0xf) as usize];
    }
    let value =
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value");
    CorrelationId::from_valid(value)
}

/// Sets a correlation ID on every request and response; see the [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct CorrelationIdLayer<M = RandomId> {
    header: HeaderName,
    make: M,
}

impl CorrelationIdLayer {
    /// Uses `x-correlation-id` and [`RandomId`].
    pub fn new() -> Self {
        Self {
            header: X_CORRELATION_ID,
            make: RandomId,
        }
    }
}

impl Default for CorrelationIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> CorrelationIdLayer<M> {
    /// Reads and writes the ID in `header` instead of `x-correlation-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Makes new IDs with `make`.
    pub fn with_make_id<M2>(self, make: M2) -> CorrelationIdLayer<M2> {
        CorrelationIdLayer {
            header: self.header,
            make,
        }
    }
}

impl<S, M: Clone> Layer<S> for CorrelationIdLayer<M> {
    type Service = SetCorrelationId<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        SetCorrelationId {
            inner,
            header: self.header.clone(),
            make: self.make.clone(),
        }
    }
}

/// Service of [`CorrelationIdLayer`].
///
/// Named `SetCorrelationId` rather than `CorrelationId<S>` because
/// [`CorrelationId`] is the value it sets.
#[derive(Clone, Debug)]
pub struct SetCorrelationId<S, M = RandomId> {
    inner: S,
    header: HeaderName,
    make: M,
}

impl<S> SetCorrelationId<S> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        CorrelationIdLayer::new().layer(inner)
    }

    /// A [`CorrelationIdLayer`] with the default settings.
    pub fn layer() -> CorrelationIdLayer {
        CorrelationIdLayer::new()
    }
}

impl<S, M> SetCorrelationId<S, M> {
    inner_accessors!();
}

impl<S, M, ReqB, ResB> Service<Request<ReqB>> for SetCorrelationId<S, M>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    M: MakeCorrelationId,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // One hash lookup: keep a single valid value, replace anything else.
        let id = match req.headers_mut().entry(&self.header) {
            Entry::Occupied(mut entry) => {
                let mut values = entry.iter();
                let kept = match (values.next(), values.next()) {
                    (Some(value), None) => CorrelationId::from_header_value(value),
                    _ => None,
                };
                kept.unwrap_or_else(|| {
                    let id = self.make.make_correlation_id();
                    entry.insert(id.header_value().clone());
                    id
                })
            }
            Entry::Vacant(entry) => {
                let id = self.make.make_correlation_id();
                entry.insert(id.header_value().clone());
                id
            }
        };
        let value = id.header_value().clone();
        req.extensions_mut().insert(id);
        ResponseFuture {
            inner: self.inner.call(req),
            header: Some((self.header.clone(), value)),
        }
    }
}

pin_project! {
    /// Response future of [`SetCorrelationId`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        header: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("header", &self.header)
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
        let (name, value) = this.header.take().expect("polled after completion");
        response.headers_mut().insert(name, value);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::{Rejection, RejectionKind};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tower::{ServiceBuilder, ServiceExt};

    type Seen = Arc<Mutex<Vec<(Vec<HeaderValue>, Option<CorrelationId>)>>>;

    /// A service that records the correlation headers and extension it saw, and answers
    /// with an upstream-set correlation header (which the layer must overwrite).
    fn recording(
        seen: Seen,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .service_fn(move |req: Request<()>| {
                let seen = Arc::clone(&seen);
                async move {
                    let values = req
                        .headers()
                        .get_all(X_CORRELATION_ID)
                        .iter()
                        .cloned()
                        .collect();
                    let ext = req.extensions().get::<CorrelationId>().cloned();
                    seen.lock().unwrap().push((values, ext));
                    let mut res = Response::new(Full::from("ok"));
                    res.headers_mut()
                        .insert(X_CORRELATION_ID, HeaderValue::from_static("upstream-own"));
                    Ok::<_, Infallible>(res)
                }
            })
    }

    #[tokio::test]
    async fn keeps_a_valid_client_id_end_to_end() {
        let seen = Seen::default();
        let req = Request::get("/")
            .header(X_CORRELATION_ID, "client-id-1")
            .body(())
            .unwrap();
        let res = recording(Arc::clone(&seen)).oneshot(req).await.unwrap();
        assert_eq!(res.headers()[X_CORRELATION_ID], "client-id-1");
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, ["client-id-1"]);
        assert_eq!(seen[0].1.as_ref().unwrap().as_str(), "client-id-1");
    }

    #[tokio::test]
    async fn replaces_missing_and_bad_ids_with_one_new_id_on_both_sides() {
        let long = "x".repeat(129);
        let bad: Vec<Vec<&str>> = vec![
            vec![],
            vec![""],
            vec!["has space"],
            vec![long.as_str()],
            vec!["one", "two"],
        ];
        for values in bad {
            let seen = Seen::default();
            let mut req = Request::get("/").body(()).unwrap();
            for v in &values {
                req.headers_mut()
                    .append(X_CORRELATION_ID, HeaderValue::from_str(v).unwrap());
            }
            let res = recording(Arc::clone(&seen)).oneshot(req).await.unwrap();
            let seen = seen.lock().unwrap();
            let (upstream_values, ext) = &seen[0];
            assert_eq!(upstream_values.len(), 1, "{values:?}");
            let id = ext.as_ref().unwrap();
            assert_eq!(upstream_values[0], id.as_str());
            assert_eq!(res.headers()[X_CORRELATION_ID], id.as_str());
            assert_eq!(id.as_str().len(), 36);
            assert!(!values.contains(&id.as_str()));
        }
    }

    #[tokio::test]
    async fn rejections_of_inner_layers_carry_the_id_in_header_and_body() {
        let svc = ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(
                    Rejection::new(RejectionKind::NotFound)
                        .for_request(&req)
                        .into_response::<Full<Bytes>>(),
                )
            });
        let req = Request::get("/nowhere")
            .header(X_CORRELATION_ID, "trace-me")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()[X_CORRELATION_ID], "trace-me");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["correlation_id"], "trace-me");
    }

    #[tokio::test]
    async fn custom_header_and_generator() {
        let svc = ServiceBuilder::new()
            .layer(
                CorrelationIdLayer::new()
                    .header(HeaderName::from_static("x-request-id"))
                    .with_make_id(|| CorrelationId::from_bytes(b"fixed").unwrap()),
            )
            .service_fn(|req: Request<()>| async move {
                assert_eq!(req.headers()["x-request-id"], "fixed");
                assert!(req.headers().get(X_CORRELATION_ID).is_none());
                Ok::<_, Infallible>(Response::new(()))
            });
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "fixed");
    }

    #[test]
    fn generated_ids_are_uuid_v4_shaped_and_distinct_across_threads() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..10_000)
                            .map(|_| random_id().as_str().to_owned())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in ids.iter().take(100) {
            let b = id.as_bytes();
            assert_eq!(b.len(), 36);
            assert_eq!([b[8], b[13], b[18], b[23]], [b'-'; 4]);
            assert_eq!(b[14], b'4', "version nibble in {id}");
            assert!(
                matches!(b[19], b'8' | b'9' | b'a' | b'b'),
                "variant in {id}"
            );
        }
    }

    #[tokio::test]
    async fn clones_share_configuration_and_work_independently() {
        let layer = CorrelationIdLayer::new().header(HeaderName::from_static("x-trace"));
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        let a = svc.clone().oneshot(Request::new(())).await.unwrap();
        let b = svc.oneshot(Request::new(())).await.unwrap();
        assert_ne!(a.headers()["x-trace"], b.headers()["x-trace"]);
    }
}
