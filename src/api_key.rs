//! API-key authentication: a key header checked against a key store, an [`Identity`] in the
//! request extensions, and a `401` for everyone else.
//!
//! [`ApiKeyAuthLayer`] reads the key from one header (default `x-api-key`), asks its
//! [`KeyStore`] who it belongs to, and then
//! - removes the key header, so the key never travels further (not upstream, not into logs);
//! - puts the key's [`Identity`] in the request extensions, for the rate limiter, handlers
//!   and logs;
//! - answers `401` when the key is missing or unknown, unless the path is *anonymous*
//!   ([`anonymous`](ApiKeyAuthLayer::anonymous) prefixes, matched on a segment boundary);
//! - answers `403` when a [required scope](ApiKeyAuthLayer::require_scope) is not granted.
//!
//! With [`client_certificates`](ApiKeyAuthLayer::client_certificates) on, a request that
//! sends no key but came over a TLS connection whose client certificate the server verified
//! (a [`TlsInfo`] with a
//! [`client_name`](crate::extensions::TlsInfo::client_name)) is authenticated by that
//! certificate: its identity is the certificate's common name.
//!
//! The built-in store, [`KeySet`], holds only the SHA-256 digests of its keys: a memory dump
//! or a `Debug` print shows no key. A presented key is hashed, looked up by its digest (which
//! an attacker cannot steer) and confirmed with a constant-time comparison of the digests.
//! Stores of your own (a database, a remote service) implement [`KeyStore`], whose lookup
//! may be asynchronous.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::api_key::{ApiKeyAuthLayer, KeySet};
//! use tower_gateway::extensions::Identity;
//!
//! let keys = KeySet::new().key("alice", "alice-secret").key("bob", "bob-secret");
//! let svc = ServiceBuilder::new()
//!     .layer(ApiKeyAuthLayer::new(keys).anonymous("/health"))
//!     .service_fn(|req: Request<()>| async move {
//!         assert!(req.headers().get("x-api-key").is_none()); // never forwarded
//!         let who = req.extensions().get::<Identity>().map_or("anonymous", |i| i.id()).to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::from(who)))
//!     });
//!
//! let with_key = Request::get("/orders").header("x-api-key", "alice-secret").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(with_key).await.unwrap().status(), 200);
//! let without = Request::get("/orders").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(without).await.unwrap().status(), 401);
//! let health = Request::get("/health").body(()).unwrap();
//! assert_eq!(svc.oneshot(health).await.unwrap().status(), 200);
//! # }
//! ```
//!
//! # Ordering
//! After routing, before the rate limiter: a `404` costs no key lookup, and a `401` costs no
//! rate-limit token; the limiter then keys on the identity.
//!
//! # Rejections
//! - `401 Unauthorized`, kind [`RejectionKind::Unauthorized`], with
//!   `WWW-Authenticate: ApiKey header="<header>"`. The body never echoes the key.
//! - `403 Forbidden`, kind [`RejectionKind::Forbidden`]: the key is valid but lacks the
//!   required scope.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, Ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::extensions::{Identity, TlsInfo};
use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// The default key header: `x-api-key`.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Who a key belongs to. Implement it to check keys against a store of your own.
///
/// `lookup` gets the raw header value and answers the key's [`Identity`], or `None` for an
/// unknown key, at once ([`Lookup::Ready`]) or later ([`Lookup::Pending`]). It must not log
/// or keep the key.
pub trait KeyStore: Send + Sync + 'static {
    /// The asynchronous lookup; [`Ready`] for a store that always answers at once.
    type Future: Future<Output = Option<Identity>> + Send;

    /// Who `key` belongs to, if anyone.
    fn lookup(&self, key: &HeaderValue) -> Lookup<Self::Future>;
}

impl<K: KeyStore> KeyStore for Arc<K> {
    type Future = K::Future;

    #[inline]
    fn lookup(&self, key: &HeaderValue) -> Lookup<Self::Future> {
        (**self).lookup(key)
    }
}

/// A [`KeyStore`]'s answer: now, or when the future resolves.
#[derive(Debug)]
pub enum Lookup<F> {
    /// The answer, now: the request is decided in `call`, with nothing to wait for.
    Ready(Option<Identity>),
    /// The answer comes when `F` resolves.
    Pending(F),
}

type Digest32 = [u8; 32];

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniformly random.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes; keep the first eight.
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
}

/// An in-memory [`KeyStore`] that keeps only the SHA-256 digests of its keys.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<Digest32, Identity, BuildHasherDefault<DigestHasher>>,
}

impl KeySet {
    /// An empty set: every key is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, belonging to `id`. A key added twice keeps its last identity. An empty key
    /// never matches: the layer treats an empty header as no key.
    pub fn key(self, id: impl Into<Box<str>>, key: impl AsRef<[u8]>) -> Self {
        self.identity(Identity::new(id), key)
    }

    /// Adds `key`, belonging to `identity` (with its scopes).
    pub fn identity(mut self, identity: Identity, key: impl AsRef<[u8]>) -> Self {
        self.keys
            .insert(Sha256::digest(key.as_ref()).into(), identity);
        self
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Who `key` belongs to, if anyone: the synchronous lookup behind [`KeyStore`].
    pub fn find(&self, key: &[u8]) -> Option<&Identity> {
        let digest: Digest32 = Sha256::digest(key).into();
        let (stored, identity) = self.keys.get_key_value(&digest)?;
        // The map compared the digests already; confirm without a data-dependent exit, a
        // word at a time.
        let words = |d: &Digest32| -> [u64; 4] {
            std::array::from_fn(|i| {
                u64::from_ne_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            })
        };
        bool::from(words(stored).ct_eq(&words(&digest))).then_some(identity)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("len", &self.keys.len())
            .finish()
    }
}

impl KeyStore for KeySet {
    type Future = Ready<Option<Identity>>;

    #[inline]
    fn lookup(&self, key: &HeaderValue) -> Lookup<Self::Future> {
        Lookup::Ready(self.find(key.as_bytes()).cloned())
    }
}

struct Settings<K> {
    store: Arc<K>,
    header: HeaderName,
    challenge: HeaderValue,
    anonymous: Vec<Box<str>>,
    scope: Option<Box<str>>,
    client_certificates: bool,
}

impl<K> Clone for Settings<K> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            header: self.header.clone(),
            challenge: self.challenge.clone(),
            anonymous: self.anonymous.clone(),
            scope: self.scope.clone(),
            client_certificates: self.client_certificates,
        }
    }
}

impl<K> Settings<K> {
    fn is_anonymous(&self, path: &str) -> bool {
        self.anonymous.iter().any(|prefix| {
            &**prefix == "/"
                || path
                    .strip_prefix(&**prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

fn challenge(header: &HeaderName) -> HeaderValue {
    HeaderValue::try_from(format!("ApiKey header=\"{header}\""))
        .expect("a header name is a valid header value")
}

/// Authenticates requests by API key; see the [module docs](self).
///
/// Cloning is a reference-count bump: the store and settings are shared.
#[must_use]
pub struct ApiKeyAuthLayer<K = KeySet, R = ProblemJson> {
    settings: Arc<Settings<K>>,
    render: R,
}

impl<K> ApiKeyAuthLayer<K> {
    /// Checks keys against `store`, in the `x-api-key` header.
    pub fn new(store: K) -> Self {
        Self {
            settings: Arc::new(Settings {
                store: Arc::new(store),
                header: X_API_KEY,
                challenge: challenge(&X_API_KEY),
                anonymous: Vec::new(),
                scope: None,
                client_certificates: false,
            }),
            render: ProblemJson,
        }
    }
}

impl<K, R> ApiKeyAuthLayer<K, R> {
    /// This layer's settings, copied first when clones share them: a setter changes this
    /// layer only, never clones made before.
    fn settings_mut(&mut self) -> &mut Settings<K> {
        Arc::make_mut(&mut self.settings)
    }

    /// Reads the key from `header` instead of `x-api-key`.
    pub fn header(mut self, header: HeaderName) -> Self {
        let settings = self.settings_mut();
        settings.challenge = challenge(&header);
        settings.header = header;
        self
    }

    /// Lets requests whose path is under `prefix` (on a segment boundary) through without a
    /// key; a valid key there still sets the identity.
    pub fn anonymous(mut self, prefix: impl Into<Box<str>>) -> Self {
        self.settings_mut().anonymous.push(prefix.into());
        self
    }

    /// Answers `403` to keys whose identity lacks `scope`.
    pub fn require_scope(mut self, scope: impl Into<Box<str>>) -> Self {
        self.settings_mut().scope = Some(scope.into());
        self
    }

    /// Whether a verified client certificate authenticates a request that sends no key
    /// (default `false`): see the [module docs](self). The identity is the
    /// [`Identity`] already in the request (what the [`Server`](crate::server::Server) made
    /// of the certificate), else one named by the certificate's common name. A key that is
    /// sent is checked all the same, and a wrong one is refused.
    pub fn client_certificates(mut self, accept: bool) -> Self {
        self.settings_mut().client_certificates = accept;
        self
    }

    /// Renders the `401` and `403` with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> ApiKeyAuthLayer<K, R2> {
        ApiKeyAuthLayer {
            settings: self.settings,
            render,
        }
    }
}

impl<K, R: Clone> Clone for ApiKeyAuthLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
            render: self.render.clone(),
        }
    }
}

impl<K: fmt::Debug, R> fmt::Debug for ApiKeyAuthLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuthLayer")
            .field("store", &self.settings.store)
            .field("header", &self.settings.header)
            .field("anonymous", &self.settings.anonymous)
            .field("scope", &self.settings.scope)
            .finish_non_exhaustive()
    }
}

impl<S, K, R: Clone> Layer<S> for ApiKeyAuthLayer<K, R> {
    type Service = ApiKeyAuth<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            settings: Arc::clone(&self.settings),
            render: self.render.clone(),
        }
    }
}

/// Service of [`ApiKeyAuthLayer`].
pub struct ApiKeyAuth<S, K = KeySet, R = ProblemJson> {
    inner: S,
    settings: Arc<Settings<K>>,
    render: R,
}

impl<S: Clone, K, R: Clone> Clone for ApiKeyAuth<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
            render: self.render.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, R> fmt::Debug for ApiKeyAuth<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field("store", &self.settings.store)
            .finish_non_exhaustive()
    }
}

impl<S, K, R> ApiKeyAuth<S, K, R> {
    inner_accessors!();
}

impl<S, K, R, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S, K, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    K: KeyStore,
    R: RenderRejection<ResB> + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, K, R, ReqB, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let settings = &*self.settings;
        // Taken out of the request at once: whatever happens next, the key goes no further.
        // An empty value is no key at all, whatever a store holds.
        let key = req
            .headers_mut()
            .remove(&settings.header)
            .filter(|key| !key.is_empty());
        let key_sent = key.is_some();
        let identity = match key.map(|key| settings.store.lookup(&key)) {
            None => None,
            Some(Lookup::Ready(identity)) => identity,
            Some(Lookup::Pending(lookup)) => {
                // The ready service goes with the request; this one's clone waits for
                // `poll_ready`.
                let inner = self.inner.clone();
                let inner = mem::replace(&mut self.inner, inner);
                return ResponseFuture {
                    state: State::Lookup {
                        lookup,
                        pending: Some(Pending {
                            req,
                            inner,
                            settings: Arc::clone(&self.settings),
                            render: self.render.clone(),
                        }),
                    },
                };
            }
        };
        let state = admit(
            &mut self.inner,
            settings,
            &mut self.render,
            identity,
            key_sent,
            req,
        );
        ResponseFuture { state }
    }
}

/// Forwards `req` to `inner`, or answers for it, once its key is looked up.
fn admit<S, K, R, ReqB, ResB>(
    inner: &mut S,
    settings: &Settings<K>,
    render: &mut R,
    identity: Option<Identity>,
    key_sent: bool,
    mut req: Request<ReqB>,
) -> State<S, K, R, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    K: KeyStore,
    R: RenderRejection<ResB>,
{
    match decide(settings, identity, key_sent, &req) {
        Verdict::Admit(identity) => {
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity);
            }
            State::Forward {
                fut: inner.call(req),
            }
        }
        Verdict::Refuse(rejection) => State::Answer {
            res: Some(rejection.for_request(&req).into_response_with(render)),
        },
    }
}

struct Pending<S, K, R, ReqB> {
    req: Request<ReqB>,
    inner: S,
    settings: Arc<Settings<K>>,
    render: R,
}

pin_project! {
    /// Response future of [`ApiKeyAuth`].
    pub struct ResponseFuture<S, K, R, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        K: KeyStore,
    {
        #[pin]
        state: State<S, K, R, ReqB, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, K, R, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
        K: KeyStore,
    {
        Lookup {
            #[pin]
            lookup: K::Future,
            pending: Option<Pending<S, K, R, ReqB>>,
        },
        Forward { #[pin] fut: S::Future },
        Answer { res: Option<Response<ResB>> },
    }
}

impl<S, K, R, ReqB, ResB> fmt::Debug for ResponseFuture<S, K, R, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
    K: KeyStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, K, R, ReqB, ResB> Future for ResponseFuture<S, K, R, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    K: KeyStore,
    R: RenderRejection<ResB>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Lookup { lookup, pending } => {
                    let Poll::Ready(identity) = lookup.poll(cx) else {
                        return Poll::Pending;
                    };
                    let Pending {
                        req,
                        mut inner,
                        settings,
                        mut render,
                    } = pending.take().expect("polled after completion");
                    admit(&mut inner, &settings, &mut render, identity, true, req)
                }
                StateProj::Forward { fut } => return fut.poll(cx),
                StateProj::Answer { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// What to do with a request once its key is looked up.
enum Verdict {
    /// Admit it, with this identity or anonymously.
    Admit(Option<Identity>),
    /// Refuse it.
    Refuse(Rejection),
}

fn decide<K, B>(
    settings: &Settings<K>,
    identity: Option<Identity>,
    key_sent: bool,
    req: &Request<B>,
) -> Verdict {
    match identity {
        Some(identity) => match &settings.scope {
            Some(scope) if !identity.has_scope(scope) => Verdict::Refuse(
                Rejection::new(RejectionKind::Forbidden)
                    .with_detail("the API key does not grant access to this resource"),
            ),
            _ => Verdict::Admit(Some(identity)),
        },
        None if settings.client_certificates && !key_sent => {
            match certificate_identity(req.extensions()) {
                Some(identity) => decide(settings, Some(identity), true, req),
                None if settings.is_anonymous(req.uri().path()) => Verdict::Admit(None),
                None => refuse(settings),
            }
        }
        None if settings.is_anonymous(req.uri().path()) => Verdict::Admit(None),
        None => refuse(settings),
    }
}

fn refuse<K>(settings: &Settings<K>) -> Verdict {
    Verdict::Refuse(
        Rejection::new(RejectionKind::Unauthorized)
            .with_detail(format!(
                "a valid API key is required in the {} header",
                settings.header
            ))
            .with_header(WWW_AUTHENTICATE, settings.challenge.clone()),
    )
}

/// The identity a verified client certificate gives: the one already in the request, else
/// its common name.
fn certificate_identity(extensions: &http::Extensions) -> Option<Identity> {
    let name = extensions.get::<TlsInfo>()?.client_name()?;
    Some(
        extensions
            .get::<Identity>()
            .cloned()
            .unwrap_or_else(|| Identity::new(name)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt};

    type Seen = Arc<Mutex<Vec<(Option<String>, bool)>>>;

    fn svc(
        layer: ApiKeyAuthLayer,
        seen: Seen,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
    {
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: Request<()>| {
                let id = req
                    .extensions()
                    .get::<Identity>()
                    .map(|i| i.id().to_owned());
                let key_forwarded = req.headers().contains_key(X_API_KEY);
                seen.lock().unwrap().push((id, key_forwarded));
                async { Ok::<_, Infallible>(Response::new(Full::from("upstream"))) }
            })
    }

    fn keys() -> KeySet {
        KeySet::new()
            .key("alice", "alice-secret")
            .identity(Identity::new("bob").with_scopes(["orders"]), "bob-secret")
    }

    fn req(path: &str, key: Option<&str>) -> Request<()> {
        let mut builder = Request::get(path);
        if let Some(key) = key {
            builder = builder.header(X_API_KEY, key);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test]
    async fn a_known_key_sets_the_identity_and_never_travels_on() {
        let seen = Seen::default();
        let res = svc(ApiKeyAuthLayer::new(keys()), Arc::clone(&seen))
            .oneshot(req("/orders", Some("alice-secret")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(*seen.lock().unwrap(), [(Some("alice".to_owned()), false)]);
    }

    #[tokio::test]
    async fn missing_or_wrong_keys_get_401_with_a_challenge_and_no_echo() {
        let long = "x".repeat(4096);
        for key in [None, Some("alice-secreT"), Some(""), Some(long.as_str())] {
            let seen = Seen::default();
            let res = svc(ApiKeyAuthLayer::new(keys()), Arc::clone(&seen))
                .oneshot(req("/orders", key))
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "{key:?}");
            assert_eq!(
                res.headers()[WWW_AUTHENTICATE],
                "ApiKey header=\"x-api-key\""
            );
            assert_eq!(
                res.extensions().get::<Rejection>().unwrap().kind(),
                RejectionKind::Unauthorized
            );
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert!(body.contains("\"status\":401"));
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                assert!(!body.contains(key), "the body echoes the key");
            }
            assert!(
                seen.lock().unwrap().is_empty(),
                "nothing reaches the inner service"
            );
        }
    }

    #[tokio::test]
    async fn an_empty_key_never_matches_even_one_stored_by_mistake() {
        let seen = Seen::default();
        let keys = KeySet::new().key("nobody", "");
        let res = svc(ApiKeyAuthLayer::new(keys), Arc::clone(&seen))
            .oneshot(req("/orders", Some("")))
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert!(seen.lock().unwrap().is_empty(), "nothing reached upstream");
    }

    #[tokio::test]
    async fn anonymous_prefixes_pass_on_a_segment_boundary() {
        let layer = || ApiKeyAuthLayer::new(keys()).anonymous("/health");
        let seen = Seen::default();
        for (path, key, status) in [
            ("/health", None, 200),
            ("/health/deep", None, 200),
            ("/healthz", None, 401),
            ("/health", Some("wrong"), 200),
            ("/health", Some("alice-secret"), 200),
        ] {
            let res = svc(layer(), Arc::clone(&seen))
                .oneshot(req(path, key))
                .await
                .unwrap();
            assert_eq!(res.status(), status, "{path} {key:?}");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[3],
            (Some("alice".to_owned()), false),
            "a valid key still identifies"
        );
        assert!(seen.iter().all(|(_, forwarded)| !forwarded));
    }

    #[tokio::test]
    async fn a_missing_scope_is_403() {
        let layer = || ApiKeyAuthLayer::new(keys()).require_scope("orders");
        let res = svc(layer(), Seen::default())
            .oneshot(req("/orders", Some("alice-secret")))
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        let res = svc(layer(), Seen::default())
            .oneshot(req("/orders", Some("bob-secret")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    #[tokio::test]
    async fn custom_header_and_an_async_store() {
        #[derive(Clone)]
        struct Remote;
        impl KeyStore for Remote {
            type Future = Pin<Box<dyn Future<Output = Option<Identity>> + Send>>;
            fn lookup(&self, key: &HeaderValue) -> Lookup<Self::Future> {
                let known = key == "remote-key";
                Lookup::Pending(Box::pin(async move {
                    tokio::task::yield_now().await;
                    known.then(|| Identity::new("remote"))
                }))
            }
        }
        let header = HeaderName::from_static("authorization-key");
        let svc = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(Remote).header(header.clone()))
            .service_fn(|req: Request<()>| async move {
                assert!(req.headers().get("authorization-key").is_none());
                let id = req.extensions().get::<Identity>().unwrap().id().to_owned();
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(id)))
            });
        let ok = Request::get("/")
            .header(&header, "remote-key")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(ok).await.unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "remote"
        );
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "ApiKey header=\"authorization-key\""
        );
    }

    #[test]
    fn debug_never_shows_a_key() {
        let layer = ApiKeyAuthLayer::new(keys());
        let printed = format!("{layer:?} {:?}", keys());
        assert!(printed.contains("KeySet { len: 2 }"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn lookup_is_exact() {
        let set = keys();
        assert_eq!(set.find(b"alice-secret").unwrap().id(), "alice");
        assert!(set.find(b"alice-secret ").is_none());
        assert!(set.find(b"ALICE-SECRET").is_none());
        assert!(set.find(b"").is_none());
    }
}
