//! [`RetryBody`]: a request body that a retry can send again.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

type BoxError = Box<dyn StdError + Send + Sync>;

pin_project! {
    /// The request body as the service behind a [`RetryLayer`](super::RetryLayer) sees it.
    ///
    /// - A request that will not be retried (a method that is not retried, an upgrade, a
    ///   body that is known to be too large) passes its body through untouched.
    /// - An empty body is sent as an empty body by every attempt.
    /// - Any other body streams to the first attempt as it arrives, while the frames that
    ///   pass are kept, up to the replay limit (64 KiB by default). An attempt that fails is
    ///   retried only if every frame it read was kept: the next attempt replays them and
    ///   then goes on reading the client's body where the last one stopped. A body that
    ///   outgrows the limit stops being kept (its memory is freed) and its request is not
    ///   retried.
    ///
    /// Every frame, the size hint and the end of the stream are the client's; errors of the
    /// client's body pass through, boxed.
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Direct { #[pin] body: B },
        Empty,
        // Boxed: a replay is rare (a retried request with a body), and every request moves
        // this body through hyper's client; unboxed it would add ~90 bytes to each.
        Replay { replay: Box<Replay<B>> },
    }
}

/// One attempt's view of a replayable body.
struct Replay<B> {
    /// Where the tape waits between attempts.
    shared: Arc<Mutex<Shared<B>>>,
    /// The tape, while this attempt reads it.
    tape: Option<Tape<B>>,
    /// This body's place in the order of attempts (0 for the first).
    generation: u64,
    /// How many frames this attempt has sent.
    pos: usize,
    hint: SizeHint,
}

/// What the attempts of one request share.
struct Shared<B> {
    /// The tape, when no attempt holds it.
    tape: Option<Tape<B>>,
    /// The generation of the attempt the tape belongs to: an older attempt's body (one that
    /// a stale connection polls late) may not take it.
    current: u64,
    /// The generation the next copy of the body gets.
    next: u64,
}

/// The client's body and what has been read of it so far.
struct Tape<B> {
    body: Pin<Box<B>>,
    /// The frames read from the client's body, while they are all kept.
    frames: Vec<Recorded>,
    /// How many frames were read from the client's body (kept or not).
    read: usize,
    len: usize,
    limit: usize,
    state: TapeState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TapeState {
    /// Every frame read so far is recorded; the body may have more.
    Recording,
    /// The body ended and every frame is recorded.
    Ended,
    /// The body outgrew the limit: nothing is recorded any more (`done` once it ended).
    Overflowed { done: bool },
    /// The body failed; the error went to the attempt that read it.
    Failed,
}

enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Recorded {
    fn to_frame(&self) -> Frame<Bytes> {
        match self {
            Self::Data(data) => Frame::data(data.clone()),
            Self::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

/// The tape was not there for an attempt to read, or belongs to a later attempt: this body
/// is an abandoned attempt's (polled late by a stale connection), or the retry started
/// while an earlier attempt still held the tape, which the policy does not do. The attempt
/// fails rather than send a truncated body.
#[derive(Debug, thiserror::Error)]
#[error("the request body is held by another attempt")]
struct TapeBusy;

/// Frames this attempt would have to send again were not kept (the body outgrew the replay
/// limit after an earlier attempt read part of it): it fails rather than send a truncated
/// body.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not kept whole for another attempt")]
struct TapeIncomplete;

/// The client's body failed earlier (that error went to the attempt that read it).
#[derive(Debug, thiserror::Error)]
#[error("the request body failed in an earlier attempt")]
struct TapeFailed;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding the lock; a poisoned one still holds a consistent tape.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Body> RetryBody<B> {
    /// Passes `body` through; the request cannot be retried.
    pub(super) fn direct(body: B) -> Self {
        Self {
            kind: Kind::Direct { body },
        }
    }

    /// Makes `body` replayable when it is empty or may fit in `limit` bytes; else passes it
    /// through.
    pub(super) fn replayable(body: B, limit: usize) -> Self {
        if body.is_end_stream() {
            return Self { kind: Kind::Empty };
        }
        let hint = body.size_hint();
        if hint.lower() > limit as u64 {
            return Self::direct(body);
        }
        let tape = Tape {
            body: Box::pin(body),
            frames: Vec::new(),
            read: 0,
            len: 0,
            limit,
            state: TapeState::Recording,
        };
        Self {
            kind: Kind::Replay {
                replay: Box::new(Replay {
                    shared: Arc::new(Mutex::new(Shared {
                        tape: Some(tape),
                        current: 0,
                        next: 1,
                    })),
                    tape: None,
                    generation: 0,
                    pos: 0,
                    hint,
                }),
            },
        }
    }

    /// A body for another attempt of the same request, replaying from the start; `None` when
    /// the body passes through and cannot be sent twice.
    pub(super) fn try_clone(&self) -> Option<Self> {
        let kind = match &self.kind {
            Kind::Direct { .. } => return None,
            Kind::Empty => Kind::Empty,
            Kind::Replay { replay } => Kind::Replay {
                replay: Box::new(Replay {
                    shared: Arc::clone(&replay.shared),
                    tape: None,
                    generation: {
                        let mut shared = lock(&replay.shared);
                        shared.next += 1;
                        shared.next - 1
                    },
                    pos: 0,
                    hint: replay.hint,
                }),
            },
        };
        Some(Self { kind })
    }

    /// Readies this body for the next attempt: `true` when it can be sent whole (it is
    /// empty, or every frame read so far was kept and no attempt holds the tape). From then
    /// on the tape is this body's: an earlier attempt's body can no longer take it.
    pub(super) fn claim(&self) -> bool {
        match &self.kind {
            Kind::Direct { .. } => false,
            Kind::Empty => true,
            Kind::Replay { replay } => {
                let mut shared = lock(&replay.shared);
                let whole = shared.tape.as_ref().is_some_and(|tape| {
                    matches!(tape.state, TapeState::Recording | TapeState::Ended)
                });
                if whole {
                    shared.current = shared.current.max(replay.generation);
                }
                whole
            }
        }
    }

    /// Whether the body is replayed from memory rather than passed through.
    pub fn is_replayable(&self) -> bool {
        !matches!(self.kind, Kind::Direct { .. })
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        // Hand the tape back for the next attempt.
        if let Some(tape) = self.tape.take() {
            lock(&self.shared).tape = Some(tape);
        }
    }
}

impl<B> Replay<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.tape.is_none() {
            let mut shared = lock(&self.shared);
            if self.generation < shared.current {
                return Poll::Ready(Some(Err(TapeBusy.into())));
            }
            match shared.tape.take() {
                Some(tape) => {
                    shared.current = self.generation;
                    self.tape = Some(tape);
                }
                None => return Poll::Ready(Some(Err(TapeBusy.into()))),
            }
        }
        let Some(tape) = self.tape.as_mut() else {
            unreachable!("the tape was taken just above");
        };
        // Replay what was kept; the kept frames are always the first ones read.
        if self.pos < tape.frames.len() {
            let frame = tape.frames[self.pos].to_frame();
            self.pos += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        // Only an attempt that has sent every frame read so far may read on.
        if self.pos != tape.read {
            return Poll::Ready(Some(Err(TapeIncomplete.into())));
        }
        match tape.state {
            TapeState::Ended | TapeState::Overflowed { done: true } => return Poll::Ready(None),
            TapeState::Failed => return Poll::Ready(Some(Err(TapeFailed.into()))),
            TapeState::Recording | TapeState::Overflowed { done: false } => {}
        }
        let frame = match tape.body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                tape.state = match tape.state {
                    TapeState::Recording => TapeState::Ended,
                    _ => TapeState::Overflowed { done: true },
                };
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => {
                tape.state = TapeState::Failed;
                tape.frames = Vec::new();
                return Poll::Ready(Some(Err(error.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        tape.read += 1;
        self.pos += 1;
        if tape.state == TapeState::Recording {
            let recorded = if let Some(data) = frame.data_ref() {
                tape.len = tape.len.saturating_add(data.remaining());
                (tape.len <= tape.limit).then(|| Recorded::Data(data.clone()))
            } else {
                // Trailers are kept; a kind of frame this version of http-body does not
                // know cannot be, so the body is not replayed.
                frame.trailers_ref().cloned().map(Recorded::Trailers)
            };
            match recorded {
                Some(recorded) => tape.frames.push(recorded),
                None => {
                    tape.state = TapeState::Overflowed { done: false };
                    tape.frames = Vec::new();
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.tape {
            Some(tape) => match tape.state {
                TapeState::Ended => self.pos == tape.read,
                TapeState::Overflowed { done } => done && self.pos == tape.read,
                TapeState::Recording => self.pos == tape.read && tape.body.is_end_stream(),
                TapeState::Failed => false,
            },
            // Not read yet: a replayable body was not empty when the request came.
            None => false,
        }
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Direct { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Empty => Poll::Ready(None),
            KindProj::Replay { replay } => replay.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct { body } => body.is_end_stream(),
            Kind::Empty => true,
            Kind::Replay { replay } => replay.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct { body } => body.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Replay { replay } => replay.hint,
        }
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Direct { .. } => "direct",
            Kind::Empty => "empty",
            Kind::Replay { .. } => "replay",
        };
        f.debug_struct("RetryBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> + use<> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read<B>(body: RetryBody<B>) -> Result<Bytes, BoxError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn every_attempt_reads_the_whole_body() {
        let first = RetryBody::replayable(chunks(&["ab", "cd", "ef"]), 64);
        let second = first.try_clone().unwrap();
        let third = second.try_clone().unwrap();
        assert_eq!(read(first).await.unwrap(), "abcdef");
        assert!(second.claim());
        assert_eq!(read(second).await.unwrap(), "abcdef");
        assert_eq!(read(third).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn an_attempt_that_stopped_early_is_continued_by_the_next() {
        let mut first = RetryBody::replayable(chunks(&["ab", "cd", "ef"]), 64);
        let second = first.try_clone().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first); // the upstream failed after one frame
        assert!(second.claim());
        assert_eq!(read(second).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_whole_but_is_not_replayed() {
        let first = RetryBody::replayable(chunks(&["abcd", "efgh", "ij"]), 6);
        let second = first.try_clone().unwrap();
        assert_eq!(read(first).await.unwrap(), "abcdefghij", "nothing lost");
        assert!(!second.claim());
    }

    #[tokio::test]
    async fn a_body_known_to_be_too_large_passes_through() {
        let body = RetryBody::replayable(Full::new(Bytes::from(vec![7u8; 100])), 64);
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert_eq!(body.size_hint().exact(), Some(100));
        assert_eq!(read(body).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn an_empty_body_is_empty_for_every_attempt() {
        let body = RetryBody::replayable(Full::new(Bytes::new()), 64);
        assert!(body.is_end_stream());
        assert!(body.claim());
        let again = body.try_clone().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(again.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn the_size_hint_is_the_clients_for_every_attempt() {
        let first = RetryBody::replayable(Full::new(Bytes::from_static(b"hello")), 64);
        let second = first.try_clone().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        assert_eq!(read(first).await.unwrap(), "hello");
        assert_eq!(second.size_hint().exact(), Some(5));
        assert!(!second.is_end_stream());
        assert_eq!(read(second).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "42".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let first = RetryBody::replayable(StreamBody::new(futures_util::stream::iter(frames)), 64);
        let second = first.try_clone().unwrap();
        let collected = first.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        let collected = second.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "data");
    }

    #[tokio::test]
    async fn a_tape_held_by_a_live_attempt_is_not_replayable() {
        let mut first = RetryBody::replayable(chunks(&["ab", "cd"]), 64);
        let second = first.try_clone().unwrap();
        let _ = first.frame().await;
        assert!(!second.claim(), "the first attempt still reads it");
        let error = read(second).await.unwrap_err();
        assert!(
            error.to_string().contains("held by another attempt"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_attempt_polled_late_cannot_take_the_tape() {
        // The first attempt's body was never polled (say, it timed out waiting for flow
        // control); the retry claims the tape, and the stale body polled late gets an error
        // instead of eating the frames the retry must send.
        let mut stale = RetryBody::replayable(chunks(&["ab", "cd"]), 64);
        let retry = stale.try_clone().unwrap();
        assert!(retry.claim());
        let error = stale.frame().await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("held by another attempt"),
            "{error}"
        );
        assert_eq!(read(retry).await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn a_body_that_overflows_after_a_retry_is_never_sent_in_part() {
        let mut first = RetryBody::replayable(chunks(&["abcd", "efgh", "ij"]), 6);
        let second = first.try_clone().unwrap();
        let third = second.try_clone().unwrap();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abcd"
        );
        drop(first);
        assert!(second.claim(), "all read so far was kept");
        assert_eq!(
            read(second).await.unwrap(),
            "abcdefghij",
            "whole, past the limit"
        );
        assert!(!third.claim(), "no longer kept whole");
        let error = read(third).await.unwrap_err();
        assert!(error.to_string().contains("not kept whole"), "{error}");
    }

    #[tokio::test]
    async fn a_failed_body_is_not_replayed() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("client went away")),
        ];
        let first = RetryBody::replayable(StreamBody::new(futures_util::stream::iter(frames)), 64);
        let second = first.try_clone().unwrap();
        assert!(read(first).await.is_err());
        assert!(!second.claim());
    }

    #[tokio::test]
    async fn direct_bodies_pass_through() {
        let body = RetryBody::direct(Full::new(Bytes::from_static(b"post")));
        assert!(!body.claim());
        assert!(body.try_clone().is_none());
        assert_eq!(read(body).await.unwrap(), "post");
    }
}
