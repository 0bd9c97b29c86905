//! [`ResponseBody`]: the response body that holds a request's slot until it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::limit::Slot;

pin_project! {
    /// The response body behind a [`BulkheadLayer`](super::BulkheadLayer): the inner body, every frame, size hint and
    /// end unchanged, holding the request's slot until the body ends, fails or is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        pub(super) permit: Option<Slot>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps `body` without holding a slot.
    pub fn new(body: B) -> Self {
        Self {
            inner: body,
            permit: None,
        }
    }

    /// Wraps `body`, holding `permit` until it ends; a body that has already ended lets the
    /// permit go at once.
    pub(super) fn holding(body: B, permit: Option<Slot>) -> Self
    where
        B: Body,
    {
        let permit = if body.is_end_stream() { None } else { permit };
        Self {
            inner: body,
            permit,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the inner body, releasing the slot it held.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B: From<Bytes>> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        Self::new(B::from(data))
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            // The slot is free as soon as the body is done, not when it is dropped later.
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
