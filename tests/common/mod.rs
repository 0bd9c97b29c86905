//! Helpers for tests that go through real sockets: servers on `127.0.0.1:0` and a raw
//! HTTP/1.1 client that shows exactly which headers crossed the wire.
#![allow(dead_code, unreachable_pub)]

pub mod gauge;
pub mod redis;
pub mod switch;
pub mod tls;
pub mod upstream;

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tower::Service;

/// Serves `router` with axum on a fresh loopback port.
pub async fn serve_axum(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Serves a tower service with a plain hyper HTTP/1.1 server on a fresh loopback port.
pub async fn serve_hyper<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A response as it arrived on the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends `head` (request line and headers, without the blank line; `Connection: close` is
/// the caller's business) and `body`, then reads until the server closes the connection.
pub async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = head.replace('\n', "\r\n").trim_end().to_owned();
    request.push_str("\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("the server closes the connection after answering")
    .unwrap();
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// The request headers a handler saw, as a JSON object of name to list of values.
pub fn headers_json(headers: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::from(v.to_str().unwrap_or("<binary>")))
            .collect();
        map.insert(name.as_str().to_owned(), serde_json::Value::Array(values));
    }
    serde_json::Value::Object(map).to_string()
}

/// Parses what [`headers_json`] wrote.
pub fn seen_headers(body: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_slice(body).unwrap() {
        serde_json::Value::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

/// Reads a response head (through the blank line) byte by byte, so that whatever follows
/// (a body, a tunnel) stays in the stream; 5 s at most.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_exact(&mut byte),
        )
        .await
        .expect("a response head")
        .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The most requests one budget of `quota` admits in `elapsed`: the whole burst, plus one
/// request per period that passed, plus the one in progress.
pub fn budget_bound(
    quota: tower_gateway::rate_limit::Quota,
    elapsed: std::time::Duration,
) -> usize {
    quota.requests().get() as usize
        + (elapsed.as_secs_f64() / quota.period().as_secs_f64()) as usize
        + 1
}

/// Asserts that `admitted` requests of one client spent exactly one budget of `quota` in
/// `elapsed`: at least the whole burst, and no more than [`budget_bound`].
pub fn assert_one_budget(
    admitted: usize,
    quota: tower_gateway::rate_limit::Quota,
    elapsed: std::time::Duration,
) {
    let burst = quota.requests().get() as usize;
    assert!(admitted >= burst, "the whole burst is admitted: {admitted}");
    assert!(
        admitted <= budget_bound(quota, elapsed),
        "{admitted} admitted in {elapsed:?}: more than one budget of {quota:?} allows"
    );
}

/// The value of the Prometheus text-format sample `name{labels}` in `text`, whatever the
/// order of its labels; `None` when there is no such sample.
pub fn prometheus_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let found: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key, value.trim_matches('"')))
            .collect();
        (found.len() == labels.len() && labels.iter().all(|label| found.contains(label)))
            .then(|| value.parse().expect("a sample value is a number"))
    })
}

/// Everything a tracing subscriber writes, kept in memory (for tests that read the logs).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a process-wide subscriber that writes every event up to `level`, from every
    /// thread, here. Process-wide, so a test file that reads the logs holds one test: a
    /// scoped subscriber can miss the first events of callsites another test hit first.
    pub fn install(level: tracing::Level) -> Self {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `GET path` from a socket bound to `from` (any loopback address), on a connection of its
/// own: the status and the body.
pub async fn get_from(from: IpAddr, addr: SocketAddr, path: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}
