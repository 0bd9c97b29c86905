//! [`GatewayBody`]: a streamed body, or a small answer of the gateway's own.
//!
//! Rejecting layers render their answers into the inner service's body type, which must
//! therefore be buildable from [`Bytes`] (see [`rejection`](crate::rejection#the-body-type-and-why)).
//! Bodies that stream from a socket, such as hyper's [`Incoming`], cannot be, so the proxy
//! answers with `GatewayBody<Incoming>`: the upstream stream on the pass-through arm, whose
//! every poll, `size_hint` and `is_end_stream` forward to the stream unchanged, or an
//! in-memory body for the gateway's own answers.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_gateway::body::GatewayBody;
//!
//! let upstream: GatewayBody<Full<Bytes>> = GatewayBody::stream(Full::from("streamed"));
//! let answer: GatewayBody<Full<Bytes>> = GatewayBody::from(Bytes::from_static(b"{}"));
//! assert_eq!(upstream.collect().await.unwrap().to_bytes(), "streamed");
//! assert_eq!(answer.collect().await.unwrap().to_bytes(), "{}");
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// A response body that is either a stream `B` passed through untouched, or a small
    /// in-memory body made by the gateway (a rejection, say).
    ///
    /// `GatewayBody<B>: From<Bytes>`, so any layer of this crate can answer in it.
    pub struct GatewayBody<B = Incoming> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Stream { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> GatewayBody<B> {
    /// Passes `body` through.
    pub fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    /// An in-memory body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    /// Whether this body passes a stream through (as opposed to being the gateway's own).
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }
}

impl<B> Default for GatewayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> From<Bytes> for GatewayBody<B> {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl<B> From<String> for GatewayBody<B> {
    fn from(data: String) -> Self {
        Self::full(data)
    }
}

impl<B> From<&'static str> for GatewayBody<B> {
    fn from(data: &'static str) -> Self {
        Self::full(data)
    }
}

impl<B> fmt::Debug for GatewayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Stream { .. } => f.write_str("GatewayBody::Stream"),
            Kind::Full { data } => f
                .debug_struct("GatewayBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for GatewayBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Stream { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    #[tokio::test]
    async fn full_body_reports_its_exact_size_and_ends() {
        let body: GatewayBody<Full<Bytes>> = GatewayBody::from("problem");
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        assert!(!body.is_stream());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "problem");

        let empty: GatewayBody<Full<Bytes>> = GatewayBody::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn stream_arm_passes_every_frame_and_the_size_hint_through() {
        let chunks = futures_util::stream::iter(
            ["a", "bb", "ccc"].map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        let body = GatewayBody::stream(StreamBody::new(chunks));
        assert!(body.is_stream());
        let mut body = std::pin::pin!(body);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(seen, ["a", "bb", "ccc"]);

        let sized = GatewayBody::stream(Full::from("12345"));
        assert_eq!(sized.size_hint().exact(), Some(5));
    }
}
