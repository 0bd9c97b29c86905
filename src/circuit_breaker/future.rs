//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::state::{Breaker, ProbeTicket};
use crate::classify::{FailureClassifier, ResponseHead};

/// What a service and its requests' futures share: one reference count a request.
pub(super) struct Shared<C> {
    pub(super) breaker: Arc<Breaker>,
    pub(super) classifier: Arc<C>,
}

/// Where a request's outcome goes.
pub(super) enum Recorder {
    /// Admitted while closed, in the closed period the word names: to the failure count. A
    /// request that is dropped before its answer reports nothing.
    Closed(u64),
    /// A probe: closes or reopens the breaker; dropped, it counts as a failure.
    Probe(ProbeTicket),
}

impl Recorder {
    /// Reports `failed` to `breaker`, or nothing when the answer said nothing about the
    /// upstream.
    fn record(self, breaker: &Breaker, failed: Option<bool>) {
        match (self, failed) {
            (Self::Closed(admitted), Some(failed)) => breaker.record(admitted, failed),
            (Self::Closed(..), None) => {}
            (Self::Probe(ticket), Some(failed)) => ticket.finish(failed),
            (Self::Probe(ticket), None) => ticket.release(),
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C, B> {
        #[pin]
        state: State<F, C, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, B> {
        Forward {
            #[pin]
            fut: F,
            recorder: Option<Recorder>,
            shared: Arc<Shared<C>>,
        },
        Answer { res: Option<Response<B>> },
    }
}

impl<F, C, B> ResponseFuture<F, C, B> {
    pub(super) fn forward(fut: F, recorder: Recorder, shared: Arc<Shared<C>>) -> Self {
        Self {
            state: State::Forward {
                fut,
                recorder: Some(recorder),
                shared,
            },
        }
    }

    pub(super) fn answer(res: Response<B>) -> Self {
        Self {
            state: State::Answer { res: Some(res) },
        }
    }
}

impl<F, C, B> fmt::Debug for ResponseFuture<F, C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: FailureClassifier,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forward {
                fut,
                recorder,
                shared,
            } => {
                let result = ready!(fut.poll(cx));
                let failed = match &result {
                    Ok(res) => {
                        let head = ResponseHead::from(res);
                        // A refusal of the gateway's own (a full bulkhead) never reached
                        // the upstream: no verdict either way.
                        head.is_about_upstream()
                            .then(|| shared.classifier.is_failure(&head))
                    }
                    Err(_) => Some(true),
                };
                if let Some(recorder) = recorder.take() {
                    recorder.record(&shared.breaker, failed);
                }
                Poll::Ready(result)
            }
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}
