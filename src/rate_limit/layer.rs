//! [`RateLimitLayer`] and its service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::Quota;
use super::decide::{Headers, Pending, State, decide};
use super::future::ResponseFuture;
use super::key::{ClientId, ClientKey, KeyExtractor};
use super::local::LocalStore;
use super::store::{Check, RateLimitStore};
use crate::extensions::RequestHead;
use crate::rejection::{ProblemJson, RenderRejection};

/// Limits each client to a [`Quota`]; see the [module docs](super).
///
/// `X` picks the key ([`ClientKey`] by default), `St` decides ([`LocalStore`] by default),
/// `R` renders the `429`. Cloning shares the store: every clone counts against the same
/// budgets.
#[must_use]
pub struct RateLimitLayer<X = ClientKey, St = LocalStore<ClientId>, R = ProblemJson> {
    key: Arc<X>,
    store: Arc<St>,
    headers: Arc<Headers>,
    render: R,
}

impl RateLimitLayer {
    /// `quota` per client ([`ClientKey`]), in an in-process [`LocalStore`].
    pub fn new(quota: Quota) -> Self {
        Self::with_store(ClientKey::new(), LocalStore::new(quota))
    }
}

impl<X, St> RateLimitLayer<X, St>
where
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
{
    /// Keys with `key` and decides with `store` (a shared store, or a [`LocalStore`] set up
    /// your way).
    pub fn with_store(key: X, store: St) -> Self {
        let headers = Arc::new(Headers::new(store.quota()));
        Self {
            key: Arc::new(key),
            store: Arc::new(store),
            headers,
            render: ProblemJson,
        }
    }
}

impl<X, R> RateLimitLayer<X, LocalStore<X::Key>, R>
where
    X: KeyExtractor,
{
    /// Keys with `key` instead, in a new [`LocalStore`] with the same quota and key cap.
    pub fn with_key<X2: KeyExtractor>(self, key: X2) -> RateLimitLayer<X2, LocalStore<X2::Key>, R> {
        let store = LocalStore::new(self.store.quota()).max_keys(self.store.key_cap());
        RateLimitLayer {
            key: Arc::new(key),
            store: Arc::new(store),
            headers: self.headers,
            render: self.render,
        }
    }

    /// Caps the keys the [`LocalStore`] tracks (see [`LocalStore::max_keys`]); starts a new
    /// store.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.store = Arc::new(LocalStore::new(self.store.quota()).max_keys(max_keys));
        self
    }
}

impl<X, St, R> RateLimitLayer<X, St, R>
where
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
{
    /// This layer with `other`'s store, when both have the same quota: the budgets its
    /// clients have spent so far carry over, while this layer's key extractor, headers and
    /// rendering apply. With another quota this layer keeps its own store. For a reload
    /// that replaces a stack while it serves (`GatewayBuilder::keep_state_of` calls it for
    /// routes whose budgets live in the process).
    pub fn keep_state_of<R2>(self, other: &RateLimitLayer<X, St, R2>) -> Self {
        if self.store.quota() != other.store.quota() {
            return self;
        }
        Self {
            store: Arc::clone(&other.store),
            ..self
        }
    }
}

impl<X, St, R> RateLimitLayer<X, St, R> {
    /// Whether responses carry `RateLimit-Policy` and `RateLimit` (default `true`).
    pub fn ietf_headers(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.headers).ietf = on;
        self
    }

    /// Whether responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds until the quota is whole; default `false`).
    pub fn legacy_headers(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.headers).legacy = on;
        self
    }

    /// Renders the `429` (and `503`) with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> RateLimitLayer<X, St, R2> {
        RateLimitLayer {
            key: self.key,
            store: self.store,
            headers: self.headers,
            render,
        }
    }

    /// The store, to inspect it ([`LocalStore::len`], say).
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<X, St, R: Clone> Clone for RateLimitLayer<X, St, R> {
    fn clone(&self) -> Self {
        Self {
            key: Arc::clone(&self.key),
            store: Arc::clone(&self.store),
            headers: Arc::clone(&self.headers),
            render: self.render.clone(),
        }
    }
}

impl<X: fmt::Debug, St: fmt::Debug, R> fmt::Debug for RateLimitLayer<X, St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("key", &self.key)
            .field("store", &self.store)
            .field("ietf_headers", &self.headers.ietf)
            .field("legacy_headers", &self.headers.legacy)
            .finish_non_exhaustive()
    }
}

impl<S, X, St, R: Clone> Layer<S> for RateLimitLayer<X, St, R> {
    type Service = RateLimit<S, X, St, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::new(Shared {
                key: Arc::clone(&self.key),
                store: Arc::clone(&self.store),
                headers: Arc::clone(&self.headers),
            }),
            render: self.render.clone(),
        }
    }
}

pub(super) struct Shared<X, St> {
    key: Arc<X>,
    store: Arc<St>,
    headers: Arc<Headers>,
}

/// Service of [`RateLimitLayer`].
pub struct RateLimit<S, X = ClientKey, St = LocalStore<ClientId>, R = ProblemJson> {
    inner: S,
    shared: Arc<Shared<X, St>>,
    render: R,
}

impl<S: Clone, X, St, R: Clone> Clone for RateLimit<S, X, St, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            render: self.render.clone(),
        }
    }
}

impl<S: fmt::Debug, X: fmt::Debug, St: fmt::Debug, R> fmt::Debug for RateLimit<S, X, St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("key", &self.shared.key)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl<S, X, St, R> RateLimit<S, X, St, R> {
    inner_accessors!();
}

impl<S, X, St, R, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, X, St, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    R: RenderRejection<ResB> + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, St::Future, R, ReqB, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let key = self.shared.key.extract(&RequestHead::from(&req));
        let state = match self
            .shared
            .store
            .check(key.as_ref(), self.shared.headers.any())
        {
            Check::Ready(decision) => decide(
                &mut self.inner,
                &self.shared.headers,
                &mut self.render,
                decision,
                req,
            ),
            Check::Pending(check) => {
                // The ready service goes with the request; this one's clone waits for
                // `poll_ready`.
                let inner = self.inner.clone();
                let inner = mem::replace(&mut self.inner, inner);
                State::Check {
                    check,
                    pending: Some(Box::new(Pending {
                        req,
                        inner,
                        headers: Arc::clone(&self.shared.headers),
                        render: self.render.clone(),
                    })),
                }
            }
        };
        ResponseFuture::new(state)
    }
}
