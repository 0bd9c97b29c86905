//! The response future of [`Bulkhead`](super::Bulkhead).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::limit::Slot;

pin_project! {
    /// Response future of [`Bulkhead`](super::Bulkhead): holds the request's permit until the response head
    /// arrives, then hands it to the [`ResponseBody`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Forward {
            #[pin]
            fut: F,
            permit: Option<Slot>,
        },
        Answer { res: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// The inner service's answer is on its way; `permit` goes to its body.
    pub(super) fn forward(fut: F, permit: Option<Slot>) -> Self {
        Self {
            state: State::Forward { fut, permit },
        }
    }

    /// The bulkhead's own answer, ready at once.
    pub(super) fn answer(res: Response<ResponseBody<B>>) -> Self {
        Self {
            state: State::Answer { res: Some(res) },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = matches!(self.state, State::Answer { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Forward { fut, permit } => {
                let result = ready!(fut.poll(cx));
                // On an error the permit is dropped, and so released, right here.
                let permit = permit.take();
                Poll::Ready(result.map(|res| res.map(|body| ResponseBody::holding(body, permit))))
            }
            StateProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}
