//! [`SentBody`]: the client's request body as the proxy sends it upstream, which tells a
//! failure of the client's body apart from a failure of the upstream.
//!
//! hyper's client reads the request body while it writes it to the upstream. When that read
//! fails (a malformed chunk, a body cut short, a client that reset) or stalls, the client's
//! error and the upstream's would look alike at the proxy. So every body error leaves here
//! as a [`ClientBodyError`], whose type hyper keeps in the error's `source()` chain, and the
//! proxy finds it there: a failure with one in its chain is the client's, whatever else
//! happened.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::time::later;
use crate::upstream::Picked;

type BoxError = Box<dyn StdError + Send + Sync>;

/// How the client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Bad framing: a junk chunk size, a chunk longer than it said.
    Malformed,
    /// The client ended it (a half-close) before the length it announced.
    Truncated,
    /// Nothing arrived for the request-body timeout.
    Stalled,
    /// The client reset the connection or went away.
    Gone,
}

impl BodyFault {
    /// What the inner body's error says, read off its `source()` chain: hyper's server
    /// reports framing errors as `InvalidData`/`InvalidInput`, an early end as
    /// `UnexpectedEof`, and a dead socket as its own I/O error.
    fn of(error: &(dyn StdError + 'static)) -> Self {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(error) = error.downcast_ref::<io::Error>() {
                return match error.kind() {
                    io::ErrorKind::UnexpectedEof => Self::Truncated,
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => Self::Malformed,
                    io::ErrorKind::TimedOut => Self::Stalled,
                    _ => Self::Gone,
                };
            }
            if let Some(error) = error.downcast_ref::<hyper::Error>() {
                if error.is_incomplete_message() {
                    return Self::Truncated;
                }
                if error.is_parse() {
                    return Self::Malformed;
                }
            }
            next = error.source();
        }
        // A body type of the embedder's that failed for reasons of its own: the request
        // could not be read, which is about the request, not the upstream.
        Self::Malformed
    }
}

/// The request body failed on the client's side; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct ClientBodyError {
    fault: BodyFault,
    source: Option<BoxError>,
}

impl ClientBodyError {
    pub(crate) fn fault(&self) -> BodyFault {
        self.fault
    }

    /// The `ClientBodyError` somewhere in `error`'s chain, if there is one.
    pub(crate) fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.fault {
            BodyFault::Malformed => "the client's request body is malformed",
            BodyFault::Truncated => "the client's request body ended early",
            BodyFault::Stalled => "the client's request body stalled",
            BodyFault::Gone => "the client went away while sending its request body",
        })
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|error| error as &(dyn StdError + 'static))
    }
}

/// Set by the proxy once the response head has arrived: from then on the request body may
/// take as long as it likes (a long-lived stream stays up).
#[derive(Debug, Default)]
pub(crate) struct HeadArrived(AtomicBool);

impl HeadArrived {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pin_project! {
    /// The request body on its way upstream: the client's frames unchanged, its errors as
    /// [`ClientBodyError`], and, for a body still to come, an idle timer that runs only while
    /// hyper waits on the client (never while the upstream is slow to read or connect).
    pub(crate) struct SentBody<B> {
        #[pin]
        inner: B,
        // Boxed so that the body stays `Unpin` (hyper's client wants that), and made on the
        // first wait only: a body that never waits on the client never has a timer.
        idle: Option<Pin<Box<Sleep>>>,
        // Whether `idle` is set for the current wait.
        armed: bool,
        // `None`: no idle limit (no body to come, or the limit is off).
        watch: Option<(Duration, Arc<HeadArrived>)>,
    }
}

impl<B: Body> SentBody<B> {
    /// Wraps `inner`; with `idle`, a body that sends nothing that long while it is awaited
    /// fails as [`BodyFault::Stalled`], until `head` is set.
    pub(crate) fn new(inner: B, idle: Option<(Duration, Arc<HeadArrived>)>) -> Self {
        Self {
            inner,
            idle: None,
            armed: false,
            watch: idle,
        }
    }
}

impl<B> Body for SentBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                let source: BoxError = error.into();
                let fault = BodyFault::of(&*source);
                Poll::Ready(Some(Err(ClientBodyError {
                    fault,
                    source: Some(source),
                })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some((timeout, head)) = this.watch.as_ref() else {
                    return Poll::Pending;
                };
                if head.get() {
                    *this.watch = None;
                    return Poll::Pending;
                }
                if let Some(sleep) = this.idle.as_mut().filter(|_| *this.armed) {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(ClientBodyError {
                            fault: BodyFault::Stalled,
                            source: None,
                        })));
                    }
                    return Poll::Pending;
                }
                let deadline = later(Instant::now(), *timeout);
                let sleep = match this.idle {
                    Some(sleep) => {
                        sleep.as_mut().reset(deadline);
                        sleep
                    }
                    None => this
                        .idle
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                *this.armed = true;
                // Registers the timer's waker; it cannot be due yet.
                let _ = sleep.as_mut().poll(cx);
                Poll::Pending
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_off_the_chain() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "early eof");
        assert_eq!(BodyFault::of(&eof), BodyFault::Truncated);
        let junk = io::Error::new(io::ErrorKind::InvalidData, "invalid chunk size");
        assert_eq!(BodyFault::of(&junk), BodyFault::Malformed);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(BodyFault::of(&reset), BodyFault::Gone);
        let wrapped = ClientBodyError {
            fault: BodyFault::Truncated,
            source: Some(Box::new(eof)),
        };
        // As hyper's client error holds it: as the source of an error of its own.
        #[derive(Debug)]
        struct Outer(ClientBodyError);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(wrapped);
        assert_eq!(
            ClientBodyError::find(&outer).map(ClientBodyError::fault),
            Some(BodyFault::Truncated)
        );
        assert!(ClientBodyError::find(&junk).is_none());
    }
}

pin_project! {
    /// The upstream's response body as the proxy hands it back: hyper's [`Incoming`], every
    /// frame, size hint and end unchanged, counting the request in flight at its endpoint
    /// (for the pool's `least_in_flight` and its admin view) until the body ends, fails or
    /// is dropped.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        picked: Option<Picked>,
    }
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, picked: Option<Picked>) -> Self {
        let picked = picked.filter(|_| !inner.is_end_stream());
        Self { inner, picked }
    }

    /// Unwraps hyper's body; the request stops counting in flight.
    pub fn into_inner(self) -> Incoming {
        self.inner
    }
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if this.picked.is_some() && matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            *this.picked = None;
        }
        frame
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
