//! A mutation fuzz of the gateway through real sockets: valid requests (simple, sized and
//! chunked uploads, pipelined ones, bodies that carry a whole second request) are mutated
//! byte by byte and frame by frame (junk chunk sizes, wrong lengths, conflicting framing,
//! bad header bytes, truncation, stalls, fragmented writes) and sent to the real server with
//! a route behind a circuit breaker.
//!
//! Asserted over every case: no 5xx that the upstream did not send (it never sends one), no
//! panic anywhere in the process, no connection the gateway leaves hanging, the upstream
//! never parses a request out of a body (every request it sees carries the gateway's own
//! `X-Forwarded-For`; the smuggled ones in the seeds carry none), and the breaker is still
//! closed at the end.
//!
//! A fixed seed and 2,000 cases by default (CI); `TOWER_GATEWAY_FUZZ_CASES=20000` for a
//! longer run, `TOWER_GATEWAY_FUZZ_SEED` for another seed. The outcome counts by status are
//! printed (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::server::Server;

const DEFAULT_CASES: usize = 2_000;
const DEFAULT_SEED: u64 = 0x5eed_f00d_2026_1207;
/// Cases in flight at once.
const PARALLEL: usize = 24;
/// The gateway's clocks, short so that stalls end quickly.
const CLOCK: Duration = Duration::from_millis(250);
/// The path of the request that some seeds carry in their body.
const SMUGGLED: &str = "/smuggled";

/// SplitMix64: small, seedable, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What the upstream saw.
#[derive(Debug, Default)]
struct Seen {
    /// Requests that did not come through the gateway's own framing: without the
    /// `X-Forwarded-For` it sets on every request it forwards, so parsed by the upstream out
    /// of another request's body.
    hidden: Mutex<Vec<String>>,
    requests: AtomicUsize,
}

/// Reads each body whole, then answers 200 (never a 5xx).
async fn upstream() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let addr = common::serve_hyper(tower::service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&shared);
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            if !req.headers().contains_key("x-forwarded-for") {
                seen.hidden.lock().unwrap().push(req.uri().to_string());
            }
            let len = match req.into_body().collect().await {
                Ok(body) => body.to_bytes().len(),
                Err(_) => 0,
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("got {len}")))))
        }
    }))
    .await;
    (addr, seen)
}

/// How a case's bytes go out and how the client ends.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// All at once, then a half-close.
    Whole,
    /// In small pieces with short pauses, then a half-close.
    Fragmented,
    /// Cut at some point, then a half-close.
    Truncated,
    /// Cut at some point, then nothing (the gateway's clocks must end it).
    Stalled,
}

/// A valid request to start from.
fn valid_request(rng: &mut Rng) -> Vec<u8> {
    let smuggled = format!("GET /api{SMUGGLED} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let sized = |body: &str| {
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let chunked = |chunks: &[&str]| {
        let mut request =
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_owned();
        for chunk in chunks {
            request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        request.push_str("0\r\n\r\n");
        request
    };
    let text = match rng.below(7) {
        0 => "GET /api/ping?x=1 HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\nX-Correlation-Id: fuzz\r\n\r\n"
            .to_owned(),
        1 => sized("hello, upstream"),
        2 => chunked(&["first", "second chunk", "third"]),
        3 => sized(&smuggled),
        4 => chunked(&[&smuggled[..10], &smuggled[10..]]),
        5 => format!(
            "GET /api/a HTTP/1.1\r\nHost: gw\r\n\r\n{}",
            sized("pipelined after a GET")
        ),
        _ => format!(
            "PUT /api/item HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n{smuggled}",
            smuggled.len()
        ),
    };
    text.into_bytes()
}

/// Replaces the first `from` in `bytes` with `to`.
fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    text.replacen(from, to, 1).into_bytes()
}

/// One to three mutations of `request`.
fn mutate(rng: &mut Rng, mut request: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        request = match rng.below(10) {
            // A random byte anywhere set to something odd.
            0 => {
                let at = rng.below(request.len());
                request[at] = *rng.pick(&[0, b'\n', b'\r', b' ', b':', 0x7f, 0xff, b'\t', b'z']);
                request
            }
            // Junk chunk sizes, or a size larger than the data.
            1 => {
                let junk = *rng.pick(&[
                    "zz",
                    "+3",
                    "0x3",
                    "-1",
                    "ffffffffffffffffff",
                    "64",
                    "3;",
                    " 5",
                ]);
                let text = String::from_utf8_lossy(&request).into_owned();
                match text.find("\r\n\r\n") {
                    Some(end) if text.contains("chunked") => {
                        let (head, body) = text.split_at(end + 4);
                        let cut = body.find("\r\n").unwrap_or(0);
                        format!("{head}{junk}{}", &body[cut..]).into_bytes()
                    }
                    _ => request,
                }
            }
            // A wrong, junk or doubled Content-Length.
            2 => {
                let to = *rng.pick(&[
                    "Content-Length: 1000",
                    "Content-Length: 2",
                    "Content-Length: -5",
                    "Content-Length: 5, 6",
                    "Content-Length: 3\r\nContent-Length: 4",
                    "Content-Length: 99999999999999999999",
                ]);
                let text = String::from_utf8_lossy(&request).into_owned();
                match text.find("Content-Length: ") {
                    Some(at) => {
                        let end = at + text[at..].find("\r\n").unwrap_or(text.len() - at);
                        format!("{}{to}{}", &text[..at], &text[end..]).into_bytes()
                    }
                    None => replace(&request, "Host: gw\r\n", &format!("Host: gw\r\n{to}\r\n")),
                }
            }
            // Conflicting or odd framing.
            3 => {
                let header = *rng.pick(&[
                    "Transfer-Encoding: chunked\r\nContent-Length: 5",
                    "Transfer-Encoding: chunked, identity",
                    "Transfer-Encoding: xchunked",
                    "Transfer-Encoding: Chunked",
                    "Transfer-Encoding:\tchunked",
                    "Transfer-Encoding : chunked",
                    "Transfer-Encoding: gzip",
                ]);
                replace(
                    &request,
                    "Host: gw\r\n",
                    &format!("Host: gw\r\n{header}\r\n"),
                )
            }
            // Odd header lines: obs-fold, bare LF, no colon, a huge one.
            4 => {
                let header = match rng.below(5) {
                    0 => "X-Fold: a\r\n folded".to_owned(),
                    1 => "X-Bare: lf\nX-Next: 1".to_owned(),
                    2 => "NoColonHere".to_owned(),
                    3 => format!("X-Big: {}", "b".repeat(70 * 1024)),
                    _ => "X-Api-Key: \u{1}".to_owned(),
                };
                replace(
                    &request,
                    "Host: gw\r\n",
                    &format!("Host: gw\r\n{header}\r\n"),
                )
            }
            // A mangled request line.
            5 => {
                let from = *rng.pick(&["POST ", "GET ", "PUT ", " HTTP/1.1"]);
                let to = *rng.pick(&[
                    "CONNECT ",
                    "G\0T ",
                    " HTTP/9.9",
                    "  ",
                    "GET http://other.example",
                    " HTTP/1.0",
                ]);
                replace(&request, from, to)
            }
            // Garbage or another request after the end.
            6 => {
                let tails: [&str; 3] = [
                    "\r\n\r\n",
                    "garbage after the request",
                    "GET /api/after HTTP/1.1\r\nHost: gw\r\n\r\n",
                ];
                let tail = *rng.pick(&tails);
                request.extend_from_slice(tail.as_bytes());
                request
            }
            // A chunk extension or a trailer.
            7 => {
                let end = *rng.pick(&["0;ext=1\r\n\r\n", "0\r\nX-Trailer: t\r\n\r\n", "0\r\n"]);
                replace(&request, "0\r\n\r\n", end)
            }
            // Duplicate Host, or none.
            8 => {
                let to = *rng.pick(&["Host: gw\r\nHost: other\r\n", "", "Host: \r\n"]);
                replace(&request, "Host: gw\r\n", to)
            }
            // A body byte dropped.
            _ => {
                if request.len() > 2 {
                    let at = rng.below(request.len());
                    request.remove(at);
                }
                request
            }
        };
    }
    request
}

/// What one case got back.
#[derive(Debug, Default)]
struct Outcome {
    statuses: Vec<u16>,
}

/// Sends `bytes` as `send` says and reads every answer until the gateway closes.
async fn run_case(gw: SocketAddr, bytes: Vec<u8>, send: Delivery, cut: usize) -> Outcome {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    let writing = async {
        let bytes = match send {
            Delivery::Truncated | Delivery::Stalled => &bytes[..cut.min(bytes.len())],
            Delivery::Whole | Delivery::Fragmented => &bytes[..],
        };
        match send {
            Delivery::Fragmented => {
                for piece in bytes.chunks(7) {
                    stream.write_all(piece).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            _ => stream.write_all(bytes).await?,
        }
        if !matches!(send, Delivery::Stalled) {
            stream.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    // The gateway may answer and close before the client is done: that is fine.
    let _ = writing.await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    assert!(
        read.is_ok(),
        "the gateway left a {send:?} connection hanging: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    Outcome {
        statuses: statuses(&raw),
    }
}

/// The status codes of the responses in `raw`, in order (bodies skipped by their length).
fn statuses(raw: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let text = String::from_utf8_lossy(raw);
    let mut rest: &str = &text;
    while let Some(start) = rest.find("HTTP/1.1 ") {
        rest = &rest[start..];
        let Some(status) = rest.get(9..12).and_then(|s| s.parse().ok()) else {
            break;
        };
        statuses.push(status);
        let Some(end) = rest.find("\r\n\r\n") else {
            break;
        };
        let head = rest[..end].to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        rest = rest.get(end + 4 + length..).unwrap_or("");
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_get_a_gateway_5xx_nor_open_the_breaker() {
    let cases: usize = std::env::var("TOWER_GATEWAY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seed: u64 = std::env::var("TOWER_GATEWAY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);

    // Any panic in the process (a connection task's included) is counted.
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let (up, seen) = upstream().await;
    let gateway = Gateway::builder()
        .request_body_timeout(CLOCK)
        .route(
            "/api",
            Route::to([format!("http://{up}")])
                .timeout(Duration::from_secs(2))
                .circuit_breaker(NonZeroU32::new(5).unwrap(), Duration::from_secs(600)),
        )
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(
        Server::new()
            .header_read_timeout(CLOCK)
            .idle_timeout(CLOCK)
            .serve(listener, gateway, std::future::pending()),
    );

    let mut rng = Rng(seed);
    let mut plans = Vec::with_capacity(cases);
    for _ in 0..cases {
        let original = valid_request(&mut rng);
        let bytes = if rng.below(10) == 0 {
            original // a tenth go out unmutated, to be sure the valid ones pass
        } else {
            mutate(&mut rng, original)
        };
        let send = *rng.pick(&[
            Delivery::Whole,
            Delivery::Whole,
            Delivery::Fragmented,
            Delivery::Truncated,
            Delivery::Stalled,
        ]);
        let cut = rng.below(bytes.len().max(1));
        plans.push((bytes, send, cut));
    }

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut gateway_5xx = Vec::new();
    for batch in plans.chunks(PARALLEL) {
        let runs: Vec<_> = batch
            .iter()
            .cloned()
            .map(|(bytes, send, cut)| {
                let case = String::from_utf8_lossy(&bytes).into_owned();
                (case, send, tokio::spawn(run_case(gw, bytes, send, cut)))
            })
            .collect();
        for (case, send, run) in runs {
            let outcome = run.await.expect("the case ran");
            if outcome.statuses.is_empty() {
                *by_status
                    .entry("closed without an answer".into())
                    .or_default() += 1;
            }
            for status in outcome.statuses {
                *by_status.entry(status.to_string()).or_default() += 1;
                if status >= 500 {
                    gateway_5xx.push(format!("{status} for {send:?} {case:?}"));
                }
            }
        }
    }
    println!("fuzz: {cases} cases, seed {seed:#x}; answers by status: {by_status:?}");

    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic in the gateway");
    assert!(
        gateway_5xx.is_empty(),
        "{} gateway-made 5xx (the upstream sends none), e.g. {:?}",
        gateway_5xx.len(),
        &gateway_5xx[..gateway_5xx.len().min(5)]
    );
    // A body that carries a request is only ever a body to the upstream: whatever the
    // client's framing made of it, the gateway's framing is the one the upstream reads.
    let hidden = seen.hidden.lock().unwrap().clone();
    assert!(
        hidden.is_empty(),
        "the upstream parsed {} request(s) out of a body: {hidden:?}",
        hidden.len()
    );
    assert!(
        seen.requests.load(Ordering::SeqCst) > cases / 10,
        "most valid ones went through"
    );
    // The breaker is closed: a plain GET still reaches the upstream.
    let (status, body) = common::get_from("127.0.0.1".parse().unwrap(), gw, "/api/ping").await;
    assert_eq!((status, body.as_str()), (200, "got 0"));
}
