//! One connection's clocks and state: the header-read and idle timeouts, the requests in
//! flight, and the close of an upgraded tunnel at the end of the drain.
//!
//! hyper's HTTP/1 server has one timer, `header_read_timeout`, which runs whenever it waits
//! for a request head, so it also closes a keep-alive connection that is merely idle. Here
//! each has its own clock, kept by [`ConnIo`], the socket as hyper sees it:
//! - **head**: from a new connection, or from the first byte of the next request, until
//!   the request head is complete: [`Server::header_read_timeout`](super::Server::header_read_timeout),
//!   after which the connection is closed (a slow-headers client);
//! - **busy**: a request is in flight (from its head until its response body is done and
//!   written to the socket): no clock here, the request's own timeouts apply;
//! - **idle**: no request in flight and no byte of the next one: after
//!   [`Server::idle_timeout`](super::Server::idle_timeout) the connection is closed quietly;
//! - **draining**: more bytes than any request head can hold, with no new request: the last
//!   request's body flowing on after its answer (an upstream that answered early and reads
//!   on); the idle timeout from its last byte;
//! - **tunnel**: the connection was upgraded (a WebSocket): no clock; the drain closes it
//!   once the shutdown grace is over.
//!
//! Apart from those, a write that waits the idle timeout on a client that reads nothing
//! fails, and the connection with it (nginx's `send_timeout`): a client cannot hold a
//! connection for good by not reading.
//!
//! The clocks cost no timer operation per request: one timer per connection stays armed
//! at most the shorter of the two timeouts ahead, and when it fires it is moved to the real
//! deadline of the state the connection is in by then. It stays registered while a request
//! is in flight too, because hyper need not look at the socket again once the request is
//! done, and something must wake the connection for its idle clock; the idle time itself
//! runs from the moment the last request was done. That is two clock reads per keep-alive
//! request (its end, and the first byte of the next), where hyper's own timer read the
//! clock and reset a timer for each.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::extensions::{Identity, PeerAddr, TlsInfo};
use crate::time::later;

/// What the connection's socket and its requests share.
#[derive(Debug)]
pub(super) struct Shared {
    start: Instant,
    /// Requests called so far.
    calls: AtomicU64,
    /// Requests whose response body is not done yet.
    in_flight: AtomicUsize,
    /// Nanoseconds from `start` to the moment the last request in flight was done.
    idle_at: AtomicU64,
    /// A response switched protocols: the socket belongs to a tunnel now.
    upgraded: AtomicBool,
    /// The drain is over: a tunnel's reads and writes fail from now on.
    closing: AtomicBool,
    /// The tunnel's task, to wake for the close (kept in tunnel mode only).
    tunnel_waker: Mutex<Option<Waker>>,
    /// The connection speaks HTTP/2: bytes between requests are frames of the connection
    /// (pings, settings, window updates), not the start of a request head.
    http2: AtomicBool,
    /// An HTTP/2 connection's idle time is up: its task closes it gracefully.
    pub(super) idle_close: tokio::sync::Notify,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            calls: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_at: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            tunnel_waker: Mutex::new(None),
            http2: AtomicBool::new(false),
            idle_close: tokio::sync::Notify::new(),
        }
    }

    /// Marks the connection as HTTP/2 (ALPN or its first bytes said so), before it is served.
    pub(super) fn set_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// When the last request in flight was done.
    fn idle_since(&self) -> Instant {
        self.start + Duration::from_nanos(self.idle_at.load(Ordering::Relaxed))
    }

    pub(super) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// Ends the tunnel: its next read or write fails, and its task is woken for it.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let waker = self
            .tunnel_waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn closed_error(&self) -> Option<io::Error> {
        self.closing.load(Ordering::Acquire).then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the tunnel at the end of its shutdown grace",
            )
        })
    }
}

/// The two clocks' lengths.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clocks {
    pub(super) header_read: Duration,
    pub(super) idle: Duration,
    /// The most bytes a request head can take (hyper's read buffer); more bytes without a
    /// new request are a request body still flowing after its answer.
    pub(super) max_head: usize,
}

impl Clocks {
    /// How far ahead the timer is armed at most: the shorter timeout (1 ms at least, so
    /// that a zero setting closes connections instead of spinning).
    fn step(&self) -> Duration {
        self.header_read.min(self.idle).max(TIMER_RESOLUTION)
    }
}

/// tokio's timer wheel ticks in milliseconds.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a request head that has begun (or for the first one), since then.
    Head(Instant),
    Busy,
    /// No request in flight, since then.
    Idle(Instant),
    /// A request body still flowing after its answer was done (an upstream that answered
    /// early and reads on): idle clock from its last byte, then.
    Draining(Instant),
    Tunnel,
}

/// The connection's socket, with its clocks; see the [module docs](self).
#[derive(Debug)]
pub(super) struct ConnIo<I> {
    inner: I,
    shared: Arc<Shared>,
    clocks: Clocks,
    state: State,
    /// `shared.calls` when the state was last looked at.
    seen_calls: u64,
    /// The last write or flush was pending: hyper is still sending a response, which keeps
    /// the connection busy even after its body is done.
    writing: bool,
    /// When the last pending write completed.
    wrote_at: Option<Instant>,
    /// Bytes read since the current head began.
    head_bytes: usize,
    /// Armed when a write stalls on a client that does not read: made on the first stall.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Armed no later than the current state's deadline.
    timer: Pin<Box<Sleep>>,
    /// Dropped with the socket, which tells the server that a tunnel has ended.
    _done: oneshot::Sender<()>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ConnIo<I> {
    /// `inner` was accepted at `accepted` (its first request head is due the header-read
    /// timeout after that, a TLS handshake included).
    pub(super) fn new(
        inner: I,
        shared: Arc<Shared>,
        clocks: Clocks,
        accepted: Instant,
        done: oneshot::Sender<()>,
    ) -> Self {
        let now = accepted;
        Self {
            inner,
            shared,
            clocks,
            state: State::Head(now),
            seen_calls: 0,
            writing: false,
            wrote_at: None,
            head_bytes: 0,
            write_timer: None,
            timer: Box::pin(tokio::time::sleep_until(later(now, clocks.header_read))),
            _done: done,
        }
    }

    /// The current state, from what the requests did since the last look.
    fn update(&mut self) {
        if self.state == State::Tunnel {
            return;
        }
        if self.shared.is_upgraded() {
            self.state = State::Tunnel;
            return;
        }
        let calls = self.shared.calls.load(Ordering::Relaxed);
        if self.writing || self.shared.in_flight.load(Ordering::Relaxed) > 0 {
            self.state = State::Busy;
        } else if calls != self.seen_calls || self.state == State::Busy {
            // Idle from the end of the last request, or of the write that sent its end.
            let done = self.shared.idle_since();
            let since = self.wrote_at.map_or(done, |wrote| wrote.max(done));
            self.state = State::Idle(since);
            self.rearm_for_idle(since);
        }
        self.seen_calls = calls;
    }

    /// On becoming idle: keeps the timer armed in the future and no later than the idle
    /// deadline or any deadline the connection can reach from now (those are at least the
    /// shorter timeout away). In the common case it already is, and nothing is done.
    fn rearm_for_idle(&mut self, since: Instant) {
        // `since` stands in for now (it is rarely more than a moment ago), which saves a
        // clock read; a target already past fires at once and `poll_clock` moves it on.
        let target = later(since, self.clocks.idle).min(later(since, self.clocks.step()));
        let armed = self.timer.deadline();
        if armed <= since || armed > target {
            self.timer.as_mut().reset(target);
        }
    }

    /// The current state's deadline, and whether its end is an error (a head cut short)
    /// rather than a quiet close (an idle connection).
    fn deadline(&self) -> Option<(Instant, bool)> {
        match self.state {
            State::Head(since) => Some((later(since, self.clocks.header_read), true)),
            State::Idle(since) | State::Draining(since) => {
                Some((later(since, self.clocks.idle), false))
            }
            State::Busy | State::Tunnel => None,
        }
    }

    /// Polls the timer; `Some` when the current state's time is up.
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Option<io::Result<()>> {
        let Some((deadline, is_error)) = self.deadline() else {
            if self.state == State::Busy {
                // hyper need not look at the socket again once the request is done (its
                // read interest is registered already), so the timer keeps a wake-up
                // coming, at most the shorter timeout away, for the idle clock to start.
                while self.timer.as_mut().poll(cx).is_ready() {
                    self.timer
                        .as_mut()
                        .reset(later(Instant::now(), self.clocks.step()));
                }
            }
            return None;
        };
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            // Within the timer's resolution counts as due: tokio fires a deadline in the
            // current millisecond at once, which would otherwise spin here until it passes.
            if later(now, TIMER_RESOLUTION) >= deadline {
                if !is_error && self.shared.http2.load(Ordering::Relaxed) {
                    // HTTP/2 says goodbye with a GOAWAY, which tells the client that no
                    // request of its was lost (it may send the next on a new connection):
                    // the connection's task sends it. The clock looks again an idle timeout
                    // later, should the client keep the connection.
                    self.shared.idle_close.notify_one();
                    let again = self.clocks.idle.max(TIMER_RESOLUTION);
                    self.timer.as_mut().reset(later(now, again));
                    continue;
                }
                return Some(if is_error {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within the header-read timeout",
                    ))
                } else {
                    Ok(())
                });
            }
            self.timer
                .as_mut()
                .reset(deadline.min(later(now, self.clocks.step())));
        }
        None
    }

    fn poll_tunnel_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(error) = self.shared.closed_error() {
            return Poll::Ready(Err(error));
        }
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_pending() {
            *self
                .shared
                .tunnel_waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cx.waker().clone());
            // A close between the first look and the waker's registration.
            if let Some(error) = self.shared.closed_error() {
                return Poll::Ready(Err(error));
            }
        }
        read
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.update();
        if this.state == State::Tunnel {
            return this.poll_tunnel_read(cx, buf);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let bytes = buf.filled().len() - before;
                match this.state {
                    // Between HTTP/2 requests come the connection's own frames; a request
                    // makes it busy, and the idle clock runs on until one does.
                    State::Idle(_) if this.shared.http2.load(Ordering::Relaxed) => {}
                    State::Idle(_) => {
                        // The first byte of the next request: its head has the header-read
                        // timeout, which the armed timer cannot be later than.
                        this.state = State::Head(Instant::now());
                        this.head_bytes = bytes;
                    }
                    State::Head(_) if this.shared.http2.load(Ordering::Relaxed) => {}
                    State::Head(_) => {
                        this.head_bytes = this.head_bytes.saturating_add(bytes);
                        if this.head_bytes > this.clocks.max_head {
                            // No head is this long (hyper would have refused it): these
                            // are the last request's body, flowing on after its answer.
                            this.state = State::Draining(Instant::now());
                        }
                    }
                    State::Draining(_) => this.state = State::Draining(Instant::now()),
                    State::Busy | State::Tunnel => {}
                }
                read
            }
            Poll::Pending => match this.poll_clock(cx) {
                // An idle connection ends as if the client had closed it: quietly.
                Some(end) => Poll::Ready(end),
                None => Poll::Pending,
            },
            read => read,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> ConnIo<I> {
    /// The error of a tunnel the drain has closed (only a tunnel is ever closed, so other
    /// states skip the shared flag).
    #[inline]
    fn tunnel_closed(&self) -> Option<io::Error> {
        if self.state == State::Tunnel {
            self.shared.closed_error()
        } else {
            None
        }
    }

    /// Notes whether a write is waiting on the client: a response still on its way keeps
    /// the connection busy, and its end starts the idle clock. A write that waits for the
    /// idle timeout on a client that does not read fails (nginx's `send_timeout`), so such
    /// a client cannot hold its connection for good.
    #[inline]
    fn wrote<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match write {
            Poll::Pending => {
                let idle = self.clocks.idle;
                if !self.writing {
                    self.writing = true;
                    let deadline = later(Instant::now(), idle);
                    match &mut self.write_timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => {
                            self.write_timer = Some(Box::pin(tokio::time::sleep_until(deadline)))
                        }
                    }
                }
                let stalled = self
                    .write_timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if stalled {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for the idle timeout",
                    )));
                }
                Poll::Pending
            }
            Poll::Ready(_) if self.writing => {
                self.writing = false;
                self.wrote_at = Some(Instant::now());
                write
            }
            Poll::Ready(_) => write,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.tunnel_closed() {
            return Poll::Ready(Err(error));
        }
        let write = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.tunnel_closed() {
            return Poll::Ready(Err(error));
        }
        let write = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flush = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(cx, flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request in flight until dropped (with its response body, or with its future).
#[derive(Debug)]
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.calls.fetch_add(1, Ordering::Relaxed);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &self.0;
        if shared.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // The idle clock starts now, whenever the socket is next looked at.
            let nanos = u64::try_from(shared.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.idle_at.store(nanos, Ordering::Relaxed);
        }
    }
}

/// The service as one connection serves it: the client's address (and the TLS session, and
/// the identity its client certificate gives, if any) in each request, each request counted
/// in flight until its response body is done.
#[derive(Clone, Debug)]
pub(super) struct Served<S> {
    inner: S,
    peer: PeerAddr,
    shared: Arc<Shared>,
    tls: Option<TlsInfo>,
    identity: Option<Identity>,
    max_headers: usize,
}

impl<S> Served<S> {
    pub(super) fn new(
        inner: S,
        peer: PeerAddr,
        shared: Arc<Shared>,
        tls: Option<(TlsInfo, Option<Identity>)>,
        max_headers: usize,
    ) -> Self {
        let (tls, identity) = match tls {
            Some((tls, identity)) => (Some(tls), identity),
            None => (None, None),
        };
        Self {
            inner,
            peer,
            shared,
            tls,
            identity,
            max_headers,
        }
    }
}

impl<S, B> Service<Request<Incoming>> for Served<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<ServedBody<B>>;
    type Error = S::Error;
    type Future = ServedFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = Some(InFlight::enter(&self.shared));
        if req.version() == Version::HTTP_2 {
            // A client may split `cookie` into one field per cookie; they are joined into
            // one before the request goes on, to layers and upstreams that may speak
            // HTTP/1.1 (RFC 9113 §8.2.3).
            join_cookies(req.headers_mut());
            // hyper's HTTP/1 parser counts header fields; HTTP/2's frames only bound their
            // size (SETTINGS_MAX_HEADER_LIST_SIZE), so the count is checked here.
            if req.headers().len() > self.max_headers {
                return ServedFuture {
                    in_flight,
                    inner: None,
                    answer: Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                };
            }
        }
        let extensions = req.extensions_mut();
        extensions.insert(self.peer);
        if let Some(tls) = &self.tls {
            extensions.insert(tls.clone());
        }
        if let Some(identity) = &self.identity {
            extensions.insert(identity.clone());
        }
        ServedFuture {
            in_flight,
            inner: Some(self.inner.call(req)),
            answer: None,
        }
    }
}

pin_project! {
    /// Response future of [`Served`].
    pub(super) struct ServedFuture<F> {
        #[pin]
        inner: Option<F>,
        in_flight: Option<InFlight>,
        answer: Option<StatusCode>,
    }
}

/// Joins several `cookie` fields into one, separated by `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut cookies = headers.get_all(http::header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for cookie in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    // Joined valid values with `; ` are a valid value.
    if let Ok(value) = http::HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, value);
    }
}

impl<F, B, E> Future for ServedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ServedBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let status = this.answer.take().expect("polled after completion");
            let mut res = Response::new(ServedBody {
                inner: None,
                _in_flight: this.in_flight.take(),
            });
            *res.status_mut() = status;
            return Poll::Ready(Ok(res));
        };
        let res = match inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        };
        let in_flight = this.in_flight.take();
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(InFlight(shared)) = &in_flight {
                shared.upgraded.store(true, Ordering::Release);
            }
        }
        Poll::Ready(Ok(res.map(|inner| ServedBody {
            inner: Some(inner),
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until it is done or dropped
    /// (`None`: the empty body of the server's own answer).
    pub(super) struct ServedBody<B> {
        #[pin]
        inner: Option<B>,
        _in_flight: Option<InFlight>,
    }
}

impl<B> Body for ServedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.as_pin_mut() {
            Some(inner) => inner.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
