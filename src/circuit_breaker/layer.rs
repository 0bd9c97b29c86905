//! [`CircuitBreakerLayer`] and its service.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use super::future::{Recorder, ResponseFuture, Shared};
use super::state::{Admission, Breaker, BreakerState, Hook, Transition, Trip};
use crate::classify::{FailureClassifier, ServerErrors};
use crate::rejection::{ProblemJson, Rejection, RejectionKind, RenderRejection};

/// Opens after `failure_threshold` consecutive failures ([`new`](Self::new)) or at a
/// failure rate over a sliding window (a [`Trip`]), refuses with
/// `503` for `cooldown`, then lets probes through; see the [module docs](super).
///
/// The breaker's state lives in the layer: every service it makes, and every clone of
/// those, shares one breaker. Build one layer per route (or per upstream) you want guarded
/// separately.
#[must_use]
pub struct CircuitBreakerLayer<C = ServerErrors, R = ProblemJson> {
    breaker: Arc<Breaker>,
    classifier: Arc<C>,
    render: R,
}

impl CircuitBreakerLayer {
    /// Opens when `trip` says (5xx, timeouts and unreachable upstreams are failures) and
    /// stays open for `cooldown`; then one probe at a time goes through. `trip` is a
    /// [`Trip`], or what converts into one: a `NonZeroU32` of consecutive failures, or a
    /// [`FailureRate`](super::FailureRate) over a sliding window (see the
    /// [module docs](super#which-policy) for when to pick which).
    pub fn new(trip: impl Into<Trip>, cooldown: Duration) -> Self {
        Self {
            breaker: Arc::new(Breaker::new(trip.into(), cooldown, 1, None)),
            classifier: Arc::new(ServerErrors),
            render: ProblemJson,
        }
    }
}

impl<C, R> CircuitBreakerLayer<C, R> {
    /// Lets `probes` requests through at once after the cooldown (default 1). Starts a new
    /// breaker (closed), so set it before the layer is used.
    pub fn probes(self, probes: NonZeroU32) -> Self {
        Self {
            breaker: Arc::new(
                self.breaker
                    .renewed(probes.get(), self.breaker.hook.clone()),
            ),
            ..self
        }
    }

    /// Calls `hook` on every change of state (after the tracing event). Starts a new breaker
    /// (closed), so set it before the layer is used.
    pub fn on_state_change<F>(self, hook: F) -> Self
    where
        F: Fn(Transition) + Send + Sync + 'static,
    {
        let hook: Hook = Arc::new(hook);
        Self {
            breaker: Arc::new(self.breaker.renewed(self.breaker.max_probes, Some(hook))),
            ..self
        }
    }

    /// Counts failures with `classifier` instead of [`ServerErrors`].
    pub fn with_classifier<C2: FailureClassifier>(
        self,
        classifier: C2,
    ) -> CircuitBreakerLayer<C2, R> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier: Arc::new(classifier),
            render: self.render,
        }
    }

    /// Renders the `503` with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> CircuitBreakerLayer<C, R2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier: self.classifier,
            render,
        }
    }

    /// Where the breaker stands now.
    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// This layer with `other`'s breaker, when both trip, cool down and probe alike: its
    /// state, counts and [hook](Self::on_state_change) carry over, while this layer's
    /// classifier and rendering apply, so an open circuit stays open. With other settings
    /// this layer keeps its own breaker. For a reload that replaces a stack while it serves
    /// (`GatewayBuilder::keep_state_of` calls it for every route with a breaker).
    pub fn keep_state_of<C2, R2>(self, other: &CircuitBreakerLayer<C2, R2>) -> Self {
        if !self.breaker.same_settings(&other.breaker) {
            return self;
        }
        Self {
            breaker: Arc::clone(&other.breaker),
            ..self
        }
    }
}

impl<C, R: Clone> Clone for CircuitBreakerLayer<C, R> {
    fn clone(&self) -> Self {
        Self {
            breaker: Arc::clone(&self.breaker),
            classifier: Arc::clone(&self.classifier),
            render: self.render.clone(),
        }
    }
}

impl<C, R> fmt::Debug for CircuitBreakerLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, R: Clone> Layer<S> for CircuitBreakerLayer<C, R> {
    type Service = CircuitBreaker<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            shared: Arc::new(Shared {
                breaker: Arc::clone(&self.breaker),
                classifier: Arc::clone(&self.classifier),
            }),
            render: self.render.clone(),
        }
    }
}

/// Service of [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, C = ServerErrors, R = ProblemJson> {
    inner: S,
    shared: Arc<Shared<C>>,
    render: R,
}

impl<S: Clone, C, R: Clone> Clone for CircuitBreaker<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            render: self.render.clone(),
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for CircuitBreaker<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, R> CircuitBreaker<S, C, R> {
    inner_accessors!();

    /// Where the breaker stands now.
    pub fn state(&self) -> BreakerState {
        self.shared.breaker.state()
    }
}

impl<S, C, R, ReqB, ResB> Service<Request<ReqB>> for CircuitBreaker<S, C, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: FailureClassifier,
    R: RenderRejection<ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission is decided in `call`; nothing is reserved here.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let recorder = match self.shared.breaker.admit() {
            Admission::Pass(word) => Recorder::Closed(word),
            Admission::Probe(ticket) => Recorder::Probe(ticket),
            Admission::Refuse(wait) => {
                let mut rejection = Rejection::new(RejectionKind::CircuitOpen)
                    .with_detail("the upstream is failing; the circuit breaker is open")
                    .for_request(&req);
                if !wait.is_zero() {
                    rejection = rejection.with_retry_after(wait);
                }
                return ResponseFuture::answer(rejection.into_response_with(&mut self.render));
            }
        };
        ResponseFuture::forward(self.inner.call(req), recorder, Arc::clone(&self.shared))
    }
}
