//! A test upstream on `127.0.0.1:0` whose answers the test switches while it runs: the
//! status of every answer, and a gate that holds requests until the test lets them go.
//!
//! It answers by path, always with the status set by [`Switch::set_status`] (200 at first):
//! - `/held`: waits for a permit from [`Switch::release`] (counted in [`Switch::held`]
//!   meanwhile), then answers `released`;
//! - `/stream`: answers at once with the chunk `first`, then keeps the body open until the
//!   client hangs up (counted in [`Switch::streaming`] until then);
//! - anything else: `upstream <path-and-query>` at once.
//!
//! Every request is recorded ([`Switch::hits`], [`Switch::requests`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::read_head;
use super::upstream::Seen;

/// The upstream's switches and what it recorded; shared with the test.
#[derive(Debug)]
pub struct Switch {
    status: AtomicU16,
    gate: Semaphore,
    held: AtomicUsize,
    streaming: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

impl Switch {
    /// Every answer from now on has `status`.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Lets `n` held requests (or the next `n` to arrive at `/held`) answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Requests received.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// `/held` requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// `/stream` bodies open now.
    pub fn streaming(&self) -> usize {
        self.streaming.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw a request")
    }
}

/// Counts one in `counter` until dropped.
struct Count(Arc<Switch>, fn(&Switch) -> &AtomicUsize);

impl Count {
    fn enter(switch: &Arc<Switch>, counter: fn(&Switch) -> &AtomicUsize) -> Self {
        counter(switch).fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(switch), counter)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>, switch: Arc<Switch>) -> Result<Response<Body>, Infallible> {
    switch.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let body = match req.uri().path() {
        "/held" => {
            let _held = Count::enter(&switch, |s| &s.held);
            switch.gate.acquire().await.expect("never closed").forget();
            Full::new(Bytes::from_static(b"released")).boxed()
        }
        "/stream" => {
            let open = Count::enter(&switch, |s| &s.streaming);
            let first = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(
                Bytes::from_static(b"first"),
            ))]);
            // Never ends; the guard lives as long as the body.
            let rest = futures_util::stream::unfold(open, |open| async move {
                std::future::pending::<()>().await;
                Some((Ok(Frame::data(Bytes::new())), open))
            });
            StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed()
        }
        _ => Full::new(Bytes::from(format!("upstream {}", req.uri()))).boxed(),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(switch.status.load(Ordering::SeqCst)).unwrap();
    Ok(res)
}

/// Starts the upstream, answering 200 with its gate closed.
pub async fn start() -> (SocketAddr, Arc<Switch>) {
    let switch = Arc::new(Switch {
        status: AtomicU16::new(200),
        gate: Semaphore::new(0),
        held: AtomicUsize::new(0),
        streaming: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
    });
    let shared = Arc::clone(&switch);
    let addr = super::serve_hyper(tower::service_fn(move |req| {
        handle(req, Arc::clone(&shared))
    }))
    .await;
    (addr, switch)
}

/// A request whose response head has arrived while its body may still be flowing: the
/// connection stays open (and so whatever the gateway holds for it) until this is dropped.
#[derive(Debug)]
pub struct Open {
    pub status: u16,
    /// The response head, lowercased.
    pub head: String,
    stream: TcpStream,
}

impl Open {
    /// The value of header `name` (lowercase) in the head.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Sends `GET {target}` with `headers` (each `name: value`) on a connection of its own and
/// reads the response head only.
pub async fn open(gw: SocketAddr, target: &str, headers: &[&str]) -> Open {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    Open {
        status,
        head,
        stream,
    }
}

/// [`open`], reading the first body bytes too: `first` for a `/stream`, proof that the body
/// is flowing.
pub async fn open_stream(gw: SocketAddr, target: &str, headers: &[&str]) -> Open {
    let mut open = open(gw, target, headers).await;
    let mut first = [0u8; 5 + 5]; // chunked framing "5\r\n" + "first" + "\r\n" is 10 bytes
    tokio::time::timeout(HANG_GUARD, open.stream.read_exact(&mut first))
        .await
        .expect("the body starts flowing")
        .unwrap();
    assert_eq!(&first, b"5\r\nfirst\r\n", "{}", open.head);
    open
}

/// The bound on every wait: a hang guard, never a timing assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// Waits until `condition` holds, checking every 10 ms; panics after [`HANG_GUARD`].
pub async fn eventually(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < HANG_GUARD, "still not so: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Repeats `attempt` every 20 ms until `done` accepts its result, which it returns; panics
/// after [`HANG_GUARD`].
pub async fn retry_until<T, F, Fut>(mut attempt: F, mut done: impl FnMut(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let result = attempt().await;
        if done(&result) {
            return result;
        }
        assert!(started.elapsed() < HANG_GUARD, "no acceptable result");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
