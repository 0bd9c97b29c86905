//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tower::Service;
use tower::retry::Policy;

use super::policy::RetryPolicy;
use super::replay_body::RetryBody;

type Retrying<S, C, B> =
    tower::retry::future::ResponseFuture<RetryPolicy<C>, S, Request<RetryBody<B>>>;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, C, B>
    where
        S: Service<Request<RetryBody<B>>>,
        RetryPolicy<C>: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
    {
        #[pin]
        state: State<S, C, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, C, B>
    where
        S: Service<Request<RetryBody<B>>>,
        RetryPolicy<C>: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
    {
        Direct { #[pin] fut: S::Future },
        // Boxed: it holds the copy of the request and a clone of the service, about 400
        // bytes that every layer outside would otherwise move along with its own future.
        Retrying { fut: Pin<Box<Retrying<S, C, B>>> },
    }
}

impl<S, C, B> ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
    RetryPolicy<C>: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
{
    pub(super) fn direct(fut: S::Future) -> Self {
        Self {
            state: State::Direct { fut },
        }
    }

    pub(super) fn retrying(fut: Retrying<S, C, B>) -> Self {
        Self {
            state: State::Retrying { fut: Box::pin(fut) },
        }
    }
}

impl<S, C, B> fmt::Debug for ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
    RetryPolicy<C>: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Direct { .. } => "direct",
            State::Retrying { .. } => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, C, B> Future for ResponseFuture<S, C, B>
where
    S: Service<Request<RetryBody<B>>>,
    RetryPolicy<C>: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Direct { fut } => fut.poll(cx),
            StateProj::Retrying { fut } => fut.as_mut().poll(cx),
        }
    }
}
