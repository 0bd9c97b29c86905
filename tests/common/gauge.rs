//! A test upstream on `127.0.0.1:0` that measures concurrency, a gateway server and a
//! keep-alive client.
//!
//! The upstream answers by path:
//! - `/hold?ms=N`: holds the request N ms (counted in flight meanwhile), then `held N`;
//! - `/drip?ms=N`: streams an 8-byte chunk every N ms (default 50) until the body is dropped;
//!   counted in flight until then, and a dropped stream counts in [`Gauge::drips_dropped`];
//! - anything else: `pong <path-and-query>` at once.
//!
//! Every request counts in [`Gauge::hits`]; [`Gauge::peak`] is the most requests the
//! upstream held at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_gateway::builder::GatewayBuilder;
use tower_gateway::server::Server;

/// What the upstream measured; shared with the test.
#[derive(Debug, Default)]
pub struct Gauge {
    /// Requests received.
    pub hits: AtomicUsize,
    /// Requests held now (`/hold` waiting, `/drip` streaming).
    pub in_flight: AtomicUsize,
    /// The most requests held at once.
    pub peak: AtomicUsize,
    /// `/drip` streams whose body was dropped (the gateway hung up on them).
    pub drips_dropped: AtomicUsize,
}

impl Gauge {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight until dropped.
struct InFlight(Arc<Gauge>);

impl InFlight {
    fn enter(gauge: &Arc<Gauge>) -> Self {
        let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.peak.fetch_max(now, Ordering::SeqCst);
        Self(Arc::clone(gauge))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a dropped `/drip` stream.
struct DripDrop(Arc<Gauge>);

impl Drop for DripDrop {
    fn drop(&mut self) {
        self.0.drips_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(req: Request<Incoming>, gauge: Arc<Gauge>) -> Result<Response<Body>, Infallible> {
    gauge.hits.fetch_add(1, Ordering::SeqCst);
    let res = match req.uri().path() {
        "/hold" => {
            let ms = query_u64(&req, "ms").unwrap_or(50);
            let _in_flight = InFlight::enter(&gauge);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::new(Bytes::from(format!("held {ms}"))).boxed())
        }
        "/drip" => {
            let ms = query_u64(&req, "ms").unwrap_or(50);
            let guards = (InFlight::enter(&gauge), DripDrop(Arc::clone(&gauge)));
            let chunks = futures_util::stream::unfold(guards, move |guards| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"drip...."))),
                    guards,
                ))
            });
            Response::new(StreamBody::new(chunks).boxed())
        }
        _ => Response::new(Full::new(Bytes::from(format!("pong {}", req.uri()))).boxed()),
    };
    Ok(res)
}

/// Starts the upstream.
pub async fn start() -> (SocketAddr, Arc<Gauge>) {
    let gauge = Arc::new(Gauge::default());
    let shared = Arc::clone(&gauge);
    let addr = super::serve_hyper(tower::service_fn(move |req| {
        handle(req, Arc::clone(&shared))
    }))
    .await;
    (addr, gauge)
}

/// Builds `builder`'s gateway and serves it with [`Server`] on a fresh loopback port.
pub async fn serve_gateway(builder: GatewayBuilder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = builder.build().unwrap();
    tokio::spawn(Server::new().serve(listener, gateway, std::future::pending()));
    addr
}

/// A keep-alive HTTP/1.1 client that keeps at most one idle connection: a task that sends
/// its requests one after another reuses one connection.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http()
}

/// A response, body read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The problem+json body, checking the content type.
    pub fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "a gateway answer is problem+json"
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// GETs `http://{addr}{target}` with `headers`, reading the whole body (10 s at most).
pub async fn fetch(
    client: &HttpClient,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(format!("http://{addr}{target}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let res = client.request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    })
    .await
    .expect("an answer within 10 s")
}
