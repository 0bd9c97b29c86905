//! [`RetryLayer`] and its service.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

use super::budget::RetryBudget;
use super::future::ResponseFuture;
use super::policy::{DELETE, GET, HEAD, OPTIONS, PUT, RetryPolicy, Retrying, Settings};
use super::replay_body::RetryBody;
use crate::classify::{FailureClassifier, ServerErrors};

/// The default wait before the first retry (at most; see [`RetryLayer::base_delay`]): 25 ms.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(25);

/// The largest request body kept for a replay by default: 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// Retries safe requests that failed; see the [module docs](super).
#[must_use]
pub struct RetryLayer<C = ServerErrors> {
    settings: Settings<C>,
}

impl RetryLayer {
    /// Retries a failed `GET`, `HEAD` or `OPTIONS` up to `max_retries` times (so the
    /// upstream sees it at most `1 + max_retries` times), after a jittered backoff from
    /// 25 ms, within the default [`RetryBudget`]. `0` turns retrying off.
    pub fn new(max_retries: u32) -> Self {
        Self {
            settings: Settings {
                max_retries,
                base_delay: DEFAULT_BASE_DELAY,
                max_delay: DEFAULT_BASE_DELAY * 10,
                retry_after_cap: None,
                methods: GET | HEAD | OPTIONS,
                replay_limit: DEFAULT_REPLAY_LIMIT,
                budget: Arc::new(RetryBudget::default()),
                classifier: Arc::new(ServerErrors),
                hand_back: false,
                on_retry: None,
            },
        }
    }
}

impl<C> RetryLayer<C> {
    /// The ceiling of the first retry's wait (default 25 ms). Retry `n` waits a random time
    /// up to `base_delay × 2^(n-1)` ("full jitter", so that clients that failed together do
    /// not retry together), never more than [`max_delay`](Self::max_delay). Also sets
    /// `max_delay` to ten times `base_delay`, unless it is set afterwards.
    pub fn base_delay(mut self, base_delay: Duration) -> Self {
        self.settings.base_delay = base_delay;
        self.settings.max_delay = base_delay.saturating_mul(10);
        self
    }

    /// The cap on any backoff wait (default ten times the base delay).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.settings.max_delay = max_delay;
        self
    }

    /// The longest upstream `Retry-After` the layer waits for before retrying (default: the
    /// larger of `max_delay` and 1 s). An answer asking for a longer wait is passed to the
    /// client as it is, not retried.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.settings.retry_after_cap = Some(cap);
        self
    }

    /// Also retries `PUT` and `DELETE`, which HTTP defines as idempotent: turn this on only
    /// for upstreams that keep that promise. `POST` and `PATCH` are never retried.
    pub fn idempotent_writes(mut self, on: bool) -> Self {
        if on {
            self.settings.methods |= PUT | DELETE;
        } else {
            self.settings.methods &= !(PUT | DELETE);
        }
        self
    }

    /// The largest request body kept so that it can be sent again (default 64 KiB). A
    /// request whose body is larger streams through as usual but is not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.settings.replay_limit = bytes;
        self
    }

    /// Spends retries from `budget` instead of a budget of the layer's own (the default,
    /// [`RetryBudget::default`]). Share one budget between layers to cap their retries
    /// together.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.settings.budget = budget;
        self
    }

    /// Retries what `classifier` calls a failure instead of what [`ServerErrors`] does
    /// (every 5xx, including the gateway's own 502 and 504).
    pub fn with_classifier<C2: FailureClassifier>(self, classifier: C2) -> RetryLayer<C2> {
        let s = self.settings;
        RetryLayer {
            settings: Settings {
                max_retries: s.max_retries,
                base_delay: s.base_delay,
                max_delay: s.max_delay,
                retry_after_cap: s.retry_after_cap,
                methods: s.methods,
                replay_limit: s.replay_limit,
                budget: s.budget,
                classifier: Arc::new(classifier),
                hand_back: s.hand_back,
                on_retry: s.on_retry,
            },
        }
    }

    /// Relies on the service inside to hand each request's head back through a
    /// [`HandBack`](crate::extensions::HandBack) instead of keeping a copy of it (default
    /// off: a copy of the method, URI, headers and extensions is made before each attempt
    /// that may be followed by another).
    ///
    /// Turn it on only when the service inside hands requests back, as the
    /// [`ProxyService`](crate::proxy::ProxyService) does (the gateway builder turns it on):
    /// a request whose head does not come back is not retried. It saves the copy of the
    /// extensions and sends the copy of the headers that the proxy has to make anyway.
    pub fn hand_back(mut self, on: bool) -> Self {
        self.settings.hand_back = on;
        self
    }

    /// Calls `hook` each time a retry is decided on, before its wait (after the wait it is
    /// sent, unless the client left). It runs on the request path, so keep it cheap. The
    /// gateway's metrics count `gateway_retries_total{route}` with it.
    pub fn on_retry<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Retrying) + Send + Sync + 'static,
    {
        self.settings.on_retry = Some(Arc::new(hook));
        self
    }

    /// The most retries per request.
    pub fn max_retries(&self) -> u32 {
        self.settings.max_retries
    }

    /// The budget retries are spent from.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.settings.budget
    }
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
        }
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            settings: Arc::new(self.settings.clone()),
        }
    }
}

/// Service of [`RetryLayer`]: sends each request on, and again while a [`RetryPolicy`] says
/// so; requests that are never retried go straight through.
pub struct Retry<S, C = ServerErrors> {
    inner: S,
    settings: Arc<Settings<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S> Retry<S> {
    /// A [`RetryLayer`] retrying up to `max_retries` times.
    pub fn layer(max_retries: u32) -> RetryLayer {
        RetryLayer::new(max_retries)
    }
}

impl<S, C> Retry<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The budget retries are spent from.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.settings.budget
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Retry<S, C>
where
    S: Service<Request<RetryBody<ReqB>>, Response = Response<ResB>> + Clone,
    C: FailureClassifier,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, C, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.settings.max_retries > 0 {
            self.settings.budget.deposit();
        }
        if self.settings.retries(&req) {
            let req = req.map(|body| RetryBody::replayable(body, self.settings.replay_limit));
            if req.body().is_replayable() {
                // The service polled ready sends the first attempt; a clone waits for the
                // others, and is polled ready before each.
                let service = self.inner.clone();
                return ResponseFuture::retrying(
                    &mut self.inner,
                    service,
                    RetryPolicy::new(Arc::clone(&self.settings)),
                    self.settings.hand_back,
                    req,
                );
            }
            return ResponseFuture::direct(self.inner.call(req));
        }
        // Never retried: no copy of the request, nothing kept.
        ResponseFuture::direct(self.inner.call(req.map(RetryBody::direct)))
    }
}
