//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use super::policy::{RetryPolicy, copy_parts};
use super::replay_body::RetryBody;
use crate::classify::FailureClassifier;
use crate::extensions::HandBack;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        #[pin]
        state: State<S::Future>,
        // `None` for a request that is never retried.
        retry: Option<Retrying<S, C, B>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is under way.
        Called { #[pin] fut: F },
        // The wait before the next attempt.
        Waiting { #[pin] sleep: Sleep },
        // The next attempt waits for the service to be ready.
        Ready,
    }
}

/// What a request that may be retried keeps between its attempts.
struct Retrying<S, C, B> {
    /// A clone of the service, for the attempts after the first (polled ready before each).
    service: S,
    policy: RetryPolicy<C>,
    /// Where the request's head comes back from, for the next attempt.
    kept: Kept,
    /// The body the next attempt sends; `None` when no attempt may follow.
    next_body: Option<RetryBody<B>>,
    /// The next attempt's request, while it waits.
    next: Option<Box<Request<RetryBody<B>>>>,
}

/// Where the head of a failed attempt's request comes from.
enum Kept {
    /// The service inside hands it back.
    HandBack(HandBack),
    /// A copy made before the attempt.
    Copy(Option<Box<http::request::Parts>>),
}

impl Kept {
    fn take(&mut self) -> Option<http::request::Parts> {
        match self {
            Self::HandBack(slot) => slot.take(),
            Self::Copy(copy) => copy.take().map(|parts| *parts),
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // What was handed back goes now: parts that (against the protocol) hold their own
        // `HandBack` would otherwise keep each other alive.
        if let Self::HandBack(slot) = self {
            drop(slot.take());
        }
    }
}

impl<S, C, B> Retrying<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
    C: FailureClassifier,
    B: Body<Data = Bytes>,
{
    /// Readies `req` to be sent: leaves a way back for its head when another attempt may
    /// follow.
    fn prepare(&mut self, req: &mut Request<RetryBody<B>>) {
        self.next_body = None;
        if !self.policy.has_retries_left() {
            return;
        }
        let Some(body) = req.body().try_clone() else {
            return;
        };
        match &mut self.kept {
            Kept::HandBack(slot) => {
                req.extensions_mut().insert(slot.clone());
            }
            Kept::Copy(copy) => *copy = Some(Box::new(copy_parts(req))),
        }
        self.next_body = Some(body);
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
{
    /// An attempt that is not retried, whatever its answer.
    pub(super) fn direct(fut: S::Future) -> Self {
        Self {
            state: State::Called { fut },
            retry: None,
        }
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
    C: FailureClassifier,
    B: Body<Data = Bytes>,
{
    /// Sends `req` with `ready` (the service polled ready), keeping what another attempt
    /// needs: `service` (a clone) and, when `hand_back`, a [`HandBack`] for the head, else a
    /// copy of it. `req`'s body must be replayable.
    pub(super) fn retrying(
        ready: &mut S,
        service: S,
        policy: RetryPolicy<C>,
        hand_back: bool,
        mut req: Request<RetryBody<B>>,
    ) -> Self {
        let mut retrying = Retrying {
            service,
            policy,
            kept: if hand_back {
                Kept::HandBack(HandBack::new())
            } else {
                Kept::Copy(None)
            },
            next_body: None,
            next: None,
        };
        retrying.prepare(&mut req);
        Self {
            state: State::Called {
                fut: ready.call(req),
            },
            retry: Some(retrying),
        }
    }
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Ready => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field(
                "attempts",
                &self.retry.as_ref().map(|retry| retry.policy.attempts()),
            )
            .finish()
    }
}

impl<S, C, B, ResB> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>>,
    C: FailureClassifier,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let result = ready!(fut.poll(cx));
                    let Some(retry) = this.retry.as_mut() else {
                        return Poll::Ready(result);
                    };
                    let Some(failure) = retry.policy.failed(&result) else {
                        return Poll::Ready(result);
                    };
                    let (Some(body), Some(parts)) = (retry.next_body.take(), retry.kept.take())
                    else {
                        return Poll::Ready(result);
                    };
                    let next = Request::from_parts(parts, body);
                    let Some(wait) = retry.policy.admit(failure, &next) else {
                        return Poll::Ready(result);
                    };
                    // The failed answer goes, and with it its connection's claim on the body.
                    drop(result);
                    retry.next = Some(Box::new(next));
                    this.state.set(State::Waiting {
                        sleep: tokio::time::sleep(wait),
                    });
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let retry = this
                        .retry
                        .as_mut()
                        .expect("only a retried request waits for a next attempt");
                    if let Err(error) = ready!(retry.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error));
                    }
                    let mut req = *retry
                        .next
                        .take()
                        .expect("the next attempt's request is kept while it waits");
                    retry.prepare(&mut req);
                    let fut = retry.service.call(req);
                    this.state.set(State::Called { fut });
                }
            }
        }
    }
}
