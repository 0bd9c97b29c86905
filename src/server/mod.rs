//! A hardened HTTP/1.1 and HTTP/2 server for the gateway (or any tower service), with TLS
//! and graceful shutdown.
//!
//! [`Server::serve`] accepts connections on a `TcpListener` and serves each with hyper:
//! - **protocols**: on plaintext, HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart
//!   by the connection's first bytes ([`http2_cleartext`](Server::http2_cleartext) turns h2c
//!   off); with [`tls`](Server::tls) (feature `tls`), TLS 1.3 and 1.2 and HTTP/2 or HTTP/1.1
//!   as ALPN decides, the certificates chosen by SNI and reloaded in place (see
//!   [`tls`](crate::tls)); every request of a TLS connection carries its
//!   [`TlsInfo`], and a verified client certificate's name
//!   becomes its [`Identity`]
//!   ([`client_certificate_identity`](Server::client_certificate_identity));
//! - request heads over [`max_header_bytes`](Server::max_header_bytes) (default 64 KiB,
//!   request line included) or with more than [`max_headers`](Server::max_headers) fields
//!   (default 100) get `431`, a malformed request line or header gets `400`, both from hyper
//!   before a request exists (so with an empty body), and the connection is closed; over
//!   HTTP/2 the size is the announced `SETTINGS_MAX_HEADER_LIST_SIZE` (hyper answers `431`)
//!   and the count is checked per request (`431`, the connection stays);
//! - a client that has not sent a whole request head within
//!   [`header_read_timeout`](Server::header_read_timeout) (default 10 s) of its first byte
//!   (or of connecting, a TLS handshake included) is disconnected; over HTTP/2 this bounds
//!   the first request;
//! - a keep-alive connection with no request in flight is closed after
//!   [`idle_timeout`](Server::idle_timeout) (default 60 s), on a clock of its own (hyper's
//!   one timer would close it after the header-read timeout); over HTTP/2 the clock runs
//!   from the end of the last stream, pings and settings notwithstanding;
//! - HTTP/2 limits: at most [128 streams](Server::http2_max_concurrent_streams) open per
//!   connection (more are refused with `REFUSED_STREAM`, which clients retry), at most
//!   64 KiB of a response queued per stream for a client that does not read, a
//!   [keep-alive ping](Server::http2_keep_alive) every 20 s that must be answered within
//!   20 s, an idle connection closed with a GOAWAY (and cut an idle timeout later if the
//!   client holds on), `cookie` fields joined into one (RFC 9113 §8.2.3), and the h2 crate's
//!   own guards (flow-control windows, reset-flood limits, a bound on `CONTINUATION`
//!   frames);
//! - keep-alive is on, and HTTP/1.1 upgrades (WebSocket) are supported;
//! - every request gets the client's address as a [`PeerAddr`] extension.
//!
//! A request body that stalls is the proxy's to judge
//! ([`request_body_timeout`](crate::proxy::ProxyService::request_body_timeout)): the server
//! cannot tell an upload the proxy is not reading yet from one the client stopped sending.
//!
//! When `shutdown` completes the server stops accepting, asks every connection to close
//! after its in-flight request, waits up to [`shutdown_grace`](Server::shutdown_grace) for
//! them, and returns. Upgraded connections (WebSocket tunnels) are part of the drain: they
//! keep running for the grace period, then the server closes them (its next read or write
//! of the client's side fails; a tunnel whose client has half-closed its side ends when the
//! upstream's does).
//!
//! # Example
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::time::Duration;
//! use tower_gateway::server::Server;
//!
//! let svc = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let ctrl_c = async { tokio::signal::ctrl_c().await.ok(); };
//! Server::new()
//!     .shutdown_grace(Duration::from_secs(30))
//!     .serve(listener, svc, ctrl_c)
//!     .await
//! # }
//! ```
//!
//! The same server serves an axum `Router` (or any tower service of
//! `Request<Incoming>`), TLS included: see the example in [`tls`](crate::tls).
//!
//! Embedding the gateway in a server of your own? Set the same limits on hyper's
//! `http1::Builder` (`max_header_size`, `max_headers`, `header_read_timeout` with a timer,
//! which there also bounds idle connections) and `http2::Builder`
//! (`max_header_list_size`, `max_concurrent_streams`, `keep_alive_interval`), and insert
//! [`PeerAddr`] (and, over TLS, the [`TlsInfo`] that
//! [`ServerTls::accept`](crate::tls::ServerTls::accept) returns) into each request.

mod conn;

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tower::Service;

use self::conn::{Clocks, ConnIo, Served, Shared};
use crate::extensions::{Identity, PeerAddr, TlsInfo};
use crate::time::later;

/// The default [header-read timeout](Server::header_read_timeout): 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [idle timeout](Server::idle_timeout): 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default [HTTP/2 stream limit](Server::http2_max_concurrent_streams): 128 (nginx's).
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// The default interval of [HTTP/2 keep-alive pings](Server::http2_keep_alive): 20 s.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// The default time a [keep-alive ping](Server::http2_keep_alive) waits for its answer: 20 s.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The hardened HTTP/1.1 and HTTP/2 server; see the [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct Server {
    max_header_bytes: usize,
    max_headers: usize,
    clocks: Clocks,
    shutdown_grace: Duration,
    http2: Http2,
    #[cfg(feature = "tls")]
    client_identity: bool,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ServerTls>,
}

/// The HTTP/2 settings.
#[derive(Clone, Copy, Debug)]
struct Http2 {
    /// h2c with prior knowledge on a plaintext listener.
    cleartext: bool,
    max_concurrent_streams: u32,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// 64 KiB and 100 header fields at most, 10 s to send a request head, idle connections
    /// closed after 60 s, 30 s of grace; HTTP/1.1 and h2c on plaintext, at most 128 streams
    /// per HTTP/2 connection, a keep-alive ping every 20 s.
    pub fn new() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            clocks: Clocks {
                header_read: DEFAULT_HEADER_READ_TIMEOUT,
                idle: DEFAULT_IDLE_TIMEOUT,
                max_head: 0,
            },
            shutdown_grace: Duration::from_secs(30),
            http2: Http2 {
                cleartext: true,
                max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
                keep_alive_interval: Some(DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL),
                keep_alive_timeout: DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            },
            #[cfg(feature = "tls")]
            client_identity: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The largest request head, request line included, in bytes; larger gets `431`. Over
    /// HTTP/2 it is the header list size the server announces
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`, which counts 32 bytes more per field).
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// The most header fields a request may have; more gets `431`.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// How long a client may take to send a whole request head, from its first byte (or
    /// from connecting, for the first request, a TLS handshake included); then the
    /// connection is closed (default 10 s). Over HTTP/2, where the frames between requests
    /// are the connection's own, it bounds the first request only.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.clocks.header_read = timeout;
        self
    }

    /// How long a keep-alive connection may sit with no request in flight and no byte of
    /// the next one; then it is closed quietly (default 60 s). Over HTTP/2 it runs from the
    /// end of the last stream, whatever pings or settings come meanwhile. It also bounds
    /// how long a write may wait on a client that reads nothing, and a request body that
    /// flows on after its answer may pause.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.clocks.idle = timeout;
        self
    }

    /// How long shutdown waits for in-flight requests.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether a plaintext listener also speaks HTTP/2 with prior knowledge (h2c), beside
    /// HTTP/1.1 (default `true`). Over TLS, ALPN decides.
    pub fn http2_cleartext(mut self, enabled: bool) -> Self {
        self.http2.cleartext = enabled;
        self
    }

    /// The most streams (requests) an HTTP/2 client may have open on one connection at
    /// once (default 128); more are refused with `REFUSED_STREAM`, which clients retry.
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.http2.max_concurrent_streams = max;
        self
    }

    /// Sends an HTTP/2 ping every `interval` (`None`: never) and closes the connection when
    /// one gets no answer within `timeout` (defaults 20 s and 20 s): a peer that vanished
    /// without a word is found out.
    pub fn http2_keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.http2.keep_alive_interval = interval;
        self.http2.keep_alive_timeout = timeout;
        self
    }

    /// Speaks TLS with `tls`'s certificates (see [`tls`](crate::tls)): HTTP/2 or HTTP/1.1 as
    /// ALPN decides. Every request gets the session's
    /// [`TlsInfo`].
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether a verified client certificate's name ([`TlsInfo::client_name`]) becomes the
    /// [`Identity`] of each request of its connection (default `true`), for the rate limiter
    /// to key on; an authentication layer further in may
    /// replace it with a credential's.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn client_certificate_identity(mut self, enabled: bool) -> Self {
        self.client_identity = enabled;
        self
    }

    /// Serves `service` on `listener` until `shutdown` completes, then drains; see the
    /// [module docs](self).
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let read_buffer = self.max_header_bytes.max(8192) + 8192;
        let clocks = Clocks {
            max_head: read_buffer,
            ..self.clocks
        };
        let protocols = Arc::new(Protocols::new(&self, read_buffer));
        let settings = Arc::new(ConnSettings {
            clocks,
            max_headers: self.max_headers,
            #[cfg(feature = "tls")]
            client_identity: self.client_identity,
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        });

        // Each connection has its own drain signal, registered here before it is spawned (so
        // none is missed) and polled only by its own task: no lock shared between
        // connections on the request path. Each also holds a `watch` receiver it never polls;
        // once all are dropped, `closed` says every connection is done.
        let connections = Arc::new(Mutex::new(Connections::default()));
        let (alive_tx, alive_rx) = watch::channel(());
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let open = Open::register(&connections, alive_rx.clone());
            tokio::spawn(serve_connection(
                Arc::clone(&protocols),
                Arc::clone(&settings),
                stream,
                peer,
                service.clone(),
                open,
            ));
        }
        drop(listener);
        drop(alive_rx);
        // One deadline for every connection, tunnels included.
        let deadline = later(Instant::now(), self.shutdown_grace);
        let open = std::mem::take(&mut connections.lock().expect("never poisoned").open);
        for drain in open.into_values() {
            let _ = drain.send(deadline);
        }
        if tokio::time::timeout_at(deadline, alive_tx.closed())
            .await
            .is_err()
        {
            // Tunnels are being closed at this very deadline: a moment for them to go.
            let closing = tokio::time::timeout(TUNNEL_CLOSE, alive_tx.closed()).await;
            if closing.is_err() {
                tracing::warn!(grace = ?self.shutdown_grace, "shutdown grace elapsed with requests in flight");
            }
        }
        Ok(())
    }
}

/// What every connection of a listener is served with.
struct ConnSettings {
    clocks: Clocks,
    max_headers: usize,
    #[cfg(feature = "tls")]
    client_identity: bool,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ServerTls>,
}

/// hyper's connection builders, set up once per listener: HTTP/1.1 and HTTP/2, one of
/// which serves each connection, as ALPN or its first bytes (h2c) say.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// h2c with prior knowledge on plaintext.
    cleartext_h2: bool,
}

impl Protocols {
    fn new(server: &Server, read_buffer: usize) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_header_size(server.max_header_bytes)
            .max_buf_size(read_buffer)
            .max_headers(server.max_headers)
            // The connection's own clocks take its place (see `conn`).
            .header_read_timeout(None);
        let h2 = &server.http2;
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(h2.keep_alive_interval)
            .keep_alive_timeout(h2.keep_alive_timeout)
            // What a stream may queue for a client that does not read (hyper's default is
            // 400 KiB, times 128 streams): like one HTTP/1.1 response's worth.
            .max_send_buf_size(HTTP2_SEND_BUFFER);
        Self {
            http1,
            http2,
            cleartext_h2: h2.cleartext,
        }
    }
}

/// The most a stream's response may queue for the client before it waits (per stream).
const HTTP2_SEND_BUFFER: usize = 64 * 1024;

/// The client preface every HTTP/2 connection begins with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the plaintext connection `stream` begins with the HTTP/2 preface, by peeking at
/// its first bytes (nothing is consumed, so hyper reads them as if no one had looked). An
/// HTTP/1.1 request line differs from it by its second byte at the latest; a client that
/// sends a part of the preface and stops is looked at again after 5 ms, then twice as long
/// each time (at most a second), until the caller's deadline.
async fn is_http2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(5);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // The bytes that came stay readable, so the socket reads as ready at once: look
        // again later, less and less often (a preface cut in two is rare; one that stalls
        // is a client wasting the header-read timeout, and gets few wake-ups for it).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// How long the end of the drain waits for the tunnels it closed to go.
const TUNNEL_CLOSE: Duration = Duration::from_millis(500);

/// The open connections, each with the sender that tells it to drain, and by when.
#[derive(Default)]
struct Connections {
    next: u64,
    open: HashMap<u64, oneshot::Sender<Instant>>,
}

/// One open connection's place in [`Connections`]; dropping it deregisters the connection.
struct Open {
    id: u64,
    connections: Arc<Mutex<Connections>>,
    drain: Option<oneshot::Receiver<Instant>>,
    _alive: watch::Receiver<()>,
}

impl Open {
    fn register(connections: &Arc<Mutex<Connections>>, alive: watch::Receiver<()>) -> Self {
        let (tx, rx) = oneshot::channel();
        let mut guard = connections.lock().expect("never poisoned");
        let id = guard.next;
        guard.next += 1;
        guard.open.insert(id, tx);
        drop(guard);
        Self {
            id,
            connections: Arc::clone(connections),
            drain: Some(rx),
            _alive: alive,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.connections.lock() {
            guard.open.remove(&self.id);
        }
    }
}

async fn serve_connection<S, B>(
    protocols: Arc<Protocols>,
    settings: Arc<ConnSettings>,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    mut open: Open,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let drain = open
        .drain
        .take()
        .expect("a new connection has its drain signal");
    #[cfg(feature = "tls")]
    if let Some(tls) = &settings.tls {
        let mut drain = drain;
        // The handshake counts against the first request head's time.
        let deadline = later(accepted, settings.clocks.header_read);
        let handshake = tokio::select! {
            biased;
            _ = &mut drain => return,
            handshake = tokio::time::timeout_at(deadline, tls.accept(stream)) => handshake,
        };
        let (stream, info) = match handshake {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let http2 = info.alpn() == Some(b"h2");
        let identity = info
            .client_name()
            .filter(|_| settings.client_identity)
            .map(Identity::new);
        let conn = Conn {
            protocol: if http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
            tls: Some((info, identity)),
        };
        serve_io(
            &protocols, &settings, conn, stream, peer, service, accepted, drain,
        )
        .await;
        drop(open);
        return;
    }
    let mut drain = drain;
    let http2 = if protocols.cleartext_h2 {
        // The first request's head is due by then anyway.
        let deadline = later(accepted, settings.clocks.header_read);
        tokio::select! {
            biased;
            _ = &mut drain => return,
            sniffed = tokio::time::timeout_at(deadline, is_http2(&stream)) => match sniffed {
                Ok(Ok(http2)) => http2,
                // A client that sent nothing in time, or a broken socket.
                _ => return,
            },
        }
    } else {
        false
    };
    let conn = Conn {
        protocol: if http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        },
        tls: None,
    };
    serve_io(
        &protocols, &settings, conn, stream, peer, service, accepted, drain,
    )
    .await;
    drop(open);
}

/// What is known of a connection before it is served.
struct Conn {
    protocol: Protocol,
    tls: Option<(TlsInfo, Option<Identity>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves the connection `io` (plaintext or TLS), then keeps an upgraded one counted until
/// its tunnel ends or the drain closes it.
#[allow(clippy::too_many_arguments)]
async fn serve_io<I, S, B>(
    protocols: &Protocols,
    settings: &ConnSettings,
    conn: Conn,
    io: I,
    peer: SocketAddr,
    service: S,
    accepted: Instant,
    mut drain: oneshot::Receiver<Instant>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let shared = Arc::new(Shared::new());
    if conn.protocol == Protocol::Http2 {
        shared.set_http2();
    }
    let (done, mut socket_closed) = oneshot::channel();
    let mut drained = None;
    {
        let io = TokioIo::new(ConnIo::new(
            io,
            Arc::clone(&shared),
            settings.clocks,
            accepted,
            done,
        ));
        let service = TowerToHyperService::new(Served::new(
            service,
            PeerAddr(peer),
            Arc::clone(&shared),
            conn.tls,
            settings.max_headers,
        ));
        let result: Result<(), Box<dyn StdError + Send + Sync>> = match conn.protocol {
            Protocol::Http1 => {
                let conn = protocols
                    .http1
                    .serve_connection(io, service)
                    .with_upgrades();
                drive(conn, None, &mut drain, &mut drained)
                    .await
                    .map_err(Into::into)
            }
            Protocol::Http2 => {
                let conn = protocols.http2.serve_connection(io, service);
                let idle = (&shared.idle_close, settings.clocks.idle);
                drive(conn, Some(idle), &mut drain, &mut drained)
                    .await
                    .map_err(Into::into)
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
        // The connection goes here, and the socket with it unless a tunnel took it over
        // (hyper keeps the socket of a 101 that it did not hand over, to the end).
    }
    if shared.is_upgraded() {
        // A tunnel owns the socket now: it stays counted until it ends, and the drain
        // gives it the grace period, then closes it.
        let deadline = match drained {
            Some(deadline) => deadline,
            None => tokio::select! {
                _ = &mut socket_closed => return,
                deadline = &mut drain => match deadline {
                    Ok(deadline) => deadline,
                    // The server is gone without a drain: nothing more to wait for.
                    Err(_) => return,
                },
            },
        };
        tokio::select! {
            _ = &mut socket_closed => {}
            () = tokio::time::sleep_until(deadline) => {
                shared.close();
                tracing::debug!(%peer, "tunnel closed at the end of the shutdown grace");
            }
        }
    }
}

/// Runs a hyper connection to its end; when the drain signal comes first, asks it to close
/// after its requests in flight (noting the drain's deadline in `drained`).
///
/// `idle` (HTTP/2 only) is the connection's idle signal and how long a client may then take
/// to let go: an idle connection is closed the same way (a GOAWAY, then the close once no
/// stream is left), and one whose client holds on after the GOAWAY (not answering its
/// ping, say) is cut when that time is up.
async fn drive<C, E>(
    conn: C,
    idle: Option<(&Notify, Duration)>,
    drain: &mut oneshot::Receiver<Instant>,
    drained: &mut Option<Instant>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + GracefulShutdown,
{
    tokio::pin!(conn);
    let (idle, grace) = match idle {
        Some((notify, grace)) => (Some(notify), grace),
        None => (None, Duration::ZERO),
    };
    tokio::select! {
        biased;
        result = conn.as_mut() => result,
        deadline = drain => {
            *drained = deadline.ok();
            conn.as_mut().shutdown_gracefully();
            conn.await
        }
        () = async { idle.expect("the branch runs with a signal").notified().await }, if idle.is_some() => {
            conn.as_mut().shutdown_gracefully();
            // Cut when the time is up: dropping the connection closes the socket.
            tokio::time::timeout(grace, conn).await.unwrap_or(Ok(()))
        }
    }
}

/// hyper's connections, each with its own `graceful_shutdown`.
trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdown for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulShutdown for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the client's end and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_preface_is_told_from_a_request_line_even_in_pieces() {
        for (first, rest, http2) in [
            (&b"GET / HTTP/1.1\r\n"[..], &b""[..], false),
            (b"POST / HTTP/1.1\r\n", b"", false),
            (b"PRI", b" / HTTP/1.1\r\n", false),
            (b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n", true),
            (PREFACE, b"", true),
        ] {
            let (mut client, server) = pair().await;
            client.write_all(first).await.unwrap();
            let rest = rest.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                client.write_all(&rest).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
            let sniffed = tokio::time::timeout(Duration::from_secs(2), is_http2(&server))
                .await
                .expect("decided")
                .unwrap();
            assert_eq!(sniffed, http2, "{:?}", String::from_utf8_lossy(first));
            // Nothing was consumed: the first bytes are still there for hyper.
            let mut buf = [0u8; 3];
            server.peek(&mut buf).await.unwrap();
            assert_eq!(&buf, &first[..3]);
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_inside_the_preface_is_undecided_until_the_deadline() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * ").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), is_http2(&server)).await;
        assert!(waited.is_err());
        // A client that closes: plain HTTP/1.1 (hyper then sees the end).
        drop(client);
        let (client, server) = pair().await;
        drop(client);
        assert!(!is_http2(&server).await.unwrap());
    }
}
