//! A hardened HTTP/1.1 server for the gateway (or any tower service), with graceful shutdown.
//!
//! [`Server::serve`] accepts connections on a `TcpListener` and serves each with hyper's
//! HTTP/1.1 connection, hardened for the open internet:
//! - request heads over [`max_header_bytes`](Server::max_header_bytes) (default 64 KiB,
//!   request line included) or with more than [`max_headers`](Server::max_headers) fields
//!   (default 100) get `431`, a malformed request line or header gets `400`, both from hyper
//!   before a request exists (so with an empty body), and the connection is closed;
//! - a client that has not sent a whole request head within
//!   [`header_read_timeout`](Server::header_read_timeout) (default 10 s) of its first byte
//!   (or of connecting) is disconnected;
//! - a keep-alive connection with no request in flight is closed after
//!   [`idle_timeout`](Server::idle_timeout) (default 60 s), on a clock of its own (hyper's
//!   one timer would close it after the header-read timeout);
//! - keep-alive is on, and HTTP upgrades (WebSocket) are supported;
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
//! Embedding the gateway in a server of your own? Set the same limits on hyper's
//! `http1::Builder` (`max_header_size`, `max_headers`, `header_read_timeout` with a timer,
//! which there also bounds idle connections) and insert [`PeerAddr`] into each request.

mod conn;

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower::Service;

use self::conn::{Clocks, ConnIo, Served, Shared};
use crate::extensions::PeerAddr;
use crate::time::later;

/// The default [header-read timeout](Server::header_read_timeout): 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [idle timeout](Server::idle_timeout): 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The hardened HTTP/1.1 server; see the [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct Server {
    max_header_bytes: usize,
    max_headers: usize,
    clocks: Clocks,
    shutdown_grace: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// 64 KiB and 100 header fields at most, 10 s to send a request head, idle connections
    /// closed after 60 s, 30 s of grace.
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
        }
    }

    /// The largest request head, request line included, in bytes; larger gets `431`.
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
    /// from connecting, for the first request); then the connection is closed (default
    /// 10 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.clocks.header_read = timeout;
        self
    }

    /// How long a keep-alive connection may sit with no request in flight and no byte of
    /// the next one; then it is closed quietly (default 60 s). It also bounds how long a
    /// write may wait on a client that reads nothing, and a request body that flows on
    /// after its answer may pause.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.clocks.idle = timeout;
        self
    }

    /// How long shutdown waits for in-flight requests.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
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
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .keep_alive(true)
            .max_header_size(self.max_header_bytes)
            .max_buf_size(read_buffer)
            .max_headers(self.max_headers)
            // The connection's own clocks take its place (see `conn`).
            .header_read_timeout(None);

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
                http.clone(),
                stream,
                peer,
                service.clone(),
                open,
                clocks,
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
    http: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    mut open: Open,
    clocks: Clocks,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let shared = Arc::new(Shared::new());
    let (done, mut socket_closed) = oneshot::channel();
    let mut drain = open
        .drain
        .take()
        .expect("a new connection has its drain signal");
    let mut drained = None;
    {
        let io = ConnIo::new(stream, Arc::clone(&shared), clocks, done);
        let service = Served::new(service, PeerAddr(peer), Arc::clone(&shared));
        let conn = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            biased;
            result = conn.as_mut() => result,
            deadline = &mut drain => {
                drained = deadline.ok();
                conn.as_mut().graceful_shutdown();
                conn.await
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
    drop(open);
}
