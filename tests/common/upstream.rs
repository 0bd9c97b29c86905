//! A test upstream on `127.0.0.1:0` that records what it receives and answers by path:
//! - `/slow?ms=N`: answers after N ms; a request dropped before that counts as cancelled;
//! - `/echo`: reads the whole body, answers JSON `{method, uri, headers, body_len}`;
//! - `/upload`: reads the body slowly, answers `{len, sum}` (a checksum of the bytes);
//! - `/download?mib=N` (or `kib=N`): streams N MiB (KiB) of a fixed pattern, counting what
//!   it produced;
//! - `/ws`: accepts a WebSocket upgrade (`101`) when asked for one, then echoes every byte;
//! - `/hop`: answers with hop-by-hop headers the gateway must strip;
//! - anything else: `pong <path-and-query>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// What the upstream recorded; shared with the test.
#[derive(Debug, Default)]
pub struct Record {
    pub seen: Mutex<Vec<Seen>>,
    /// `/slow` requests dropped before they answered.
    pub cancelled: AtomicUsize,
    /// `/slow` requests that answered.
    pub completed: AtomicUsize,
    /// Bytes `/download` has handed to hyper so far.
    pub produced: AtomicU64,
    /// Bytes `/upload` has read so far.
    pub consumed: AtomicU64,
}

impl Record {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw a request")
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// One byte of the test pattern at offset `i`.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// A checksum the download and upload tests agree on.
pub fn checksum(sum: &mut u64, offset: u64, chunk: &[u8]) {
    for (i, b) in chunk.iter().enumerate() {
        *sum = sum.wrapping_add(u64::from(*b).wrapping_mul(offset + i as u64 + 1));
    }
}

/// Binds `127.0.0.1:0`, with small socket buffers when `small_buffers` (so the kernel holds
/// little of a stream and a test can bound what sits in between).
pub fn bind(small_buffers: bool) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    if small_buffers {
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(128).unwrap()
}

struct CountDrop(Arc<Record>, bool);

impl Drop for CountDrop {
    fn drop(&mut self) {
        let counter = if self.1 {
            &self.0.completed
        } else {
            &self.0.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(
    mut req: Request<Incoming>,
    record: Arc<Record>,
) -> Result<Response<Body>, Infallible> {
    record.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let res = match path.as_str() {
        "/slow" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000);
            let mut guard = CountDrop(Arc::clone(&record), false);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            guard.1 = true;
            Response::new(full("slow done"))
        }
        "/echo" => {
            let head = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": serde_json::from_str::<serde_json::Value>(
                    &crate::common::headers_json(req.headers())
                ).unwrap(),
            });
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut head = head;
            head["body_len"] = body.len().into();
            Response::new(full(head.to_string()))
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    checksum(&mut sum, len, &data);
                    len += data.len() as u64;
                    record.consumed.store(len, Ordering::SeqCst);
                    // A slow reader, so the sender has to wait on backpressure.
                    if len % (1 << 20) < data.len() as u64 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            Response::new(full(
                serde_json::json!({ "len": len, "sum": sum }).to_string(),
            ))
        }
        "/download" => {
            let total = query_u64(&req, "kib")
                .map(|kib| kib << 10)
                .unwrap_or_else(|| query_u64(&req, "mib").unwrap_or(1) << 20);
            let record = Arc::clone(&record);
            let chunks = futures_util::stream::unfold(0u64, move |offset| {
                let record = Arc::clone(&record);
                async move {
                    if offset >= total {
                        return None;
                    }
                    let len = (64 * 1024).min(total - offset);
                    let chunk: Vec<u8> = (offset..offset + len).map(pattern).collect();
                    record.produced.fetch_add(len, Ordering::SeqCst);
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                        offset + len,
                    ))
                }
            });
            Response::new(StreamBody::new(chunks).boxed())
        }
        // Like a real server, it switches only when asked to.
        "/ws" if req.headers().contains_key("upgrade") => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(Bytes::new()))
                .unwrap()
        }
        "/hop" => Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=99")
            .header("proxy-authenticate", "Basic")
            .header("x-end-to-end", "kept")
            .header("x-correlation-id", "upstream-own")
            .body(full("hop"))
            .unwrap(),
        _ => Response::new(full(format!("pong {}", req.uri()))),
    };
    Ok(res)
}

/// Starts the upstream; `small_buffers` shrinks its sockets' kernel buffers.
pub async fn start(small_buffers: bool) -> (SocketAddr, Arc<Record>) {
    let listener = bind(small_buffers);
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Record::default());
    let shared = Arc::clone(&record);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&shared);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req| handle(req, Arc::clone(&record)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, record)
}
