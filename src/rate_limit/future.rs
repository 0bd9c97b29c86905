//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::decide::{Pending, State, StateProj, decide};
use super::store::Decision;
use crate::rejection::RenderRejection;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, F, R, ReqB, ResB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, F, R, ReqB, ResB>,
    }
}

impl<S, F, R, ReqB, ResB> ResponseFuture<S, F, R, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
{
    pub(super) fn new(state: State<S, F, R, ReqB, ResB>) -> Self {
        Self { state }
    }
}

impl<S, F, R, ReqB, ResB> fmt::Debug for ResponseFuture<S, F, R, ReqB, ResB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, F, R, ReqB, ResB> Future for ResponseFuture<S, F, R, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    F: Future<Output = Decision>,
    R: RenderRejection<ResB>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Check { check, pending } => {
                    let Poll::Ready(decision) = check.poll(cx) else {
                        return Poll::Pending;
                    };
                    let Pending {
                        req,
                        mut inner,
                        headers,
                        mut render,
                    } = *pending.take().expect("polled after completion");
                    decide(&mut inner, &headers, &mut render, decision, req)
                }
                StateProj::Forward { fut, usage } => {
                    let mut res = match fut.poll(cx) {
                        Poll::Ready(Ok(res)) => res,
                        other => return other,
                    };
                    if let Some((usage, headers)) = usage.take() {
                        headers.apply(res.headers_mut(), usage);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Answer { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
