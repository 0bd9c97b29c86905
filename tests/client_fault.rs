//! Whose fault it is: a client's broken or stalled request body never counts against the
//! upstream, never gets a 5xx, and never makes the gateway refuse other clients.
//!
//! One client (127.0.0.2) sends each broken upload shape 20 times to a route whose breaker
//! opens after 5 consecutive failures; then another client (127.0.0.3) must still get 200,
//! and the upstream's own failures must still open the breaker.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower_gateway::builder::{Gateway, Route};

use common::gauge::serve_gateway;
use common::{RawResponse, get_from};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const ROUNDS: usize = 20;
const BODY_TIMEOUT: Duration = Duration::from_millis(300);

/// What the upstream saw.
#[derive(Debug, Default)]
struct Seen {
    hits: AtomicUsize,
    /// Requests whose body the upstream read whole.
    whole: AtomicUsize,
}

/// Reads each request's body whole before it answers `200 got N`; `/fail` answers 502,
/// `/fail504` 504, and `/early` answers `200 early` at once, without reading the body.
async fn upstream() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    let addr = common::serve_hyper(tower::service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&shared);
        async move {
            seen.hits.fetch_add(1, Ordering::SeqCst);
            if req.uri().path() == "/early" {
                // Answers before it has read the body, and reads the rest meanwhile (closing
                // on an unread body would reset the connection under its own answer).
                let body = req.into_body();
                tokio::spawn(async move { body.collect().await });
                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("early"))));
            }
            let fail = match req.uri().path() {
                "/fail" => Some(StatusCode::BAD_GATEWAY),
                "/fail504" => Some(StatusCode::GATEWAY_TIMEOUT),
                _ => None,
            };
            let body = req.into_body().collect().await;
            let (status, text) = match body {
                _ if fail.is_some() => (fail.unwrap(), "upstream says no".to_owned()),
                Ok(body) => {
                    seen.whole.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::OK, format!("got {}", body.to_bytes().len()))
                }
                Err(_) => (StatusCode::BAD_REQUEST, "broken".to_owned()),
            };
            let mut res = Response::new(Full::new(Bytes::from(text)));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    }))
    .await;
    (addr, seen)
}

async fn gateway(up: SocketAddr) -> SocketAddr {
    let upstream = format!("http://{up}");
    let breaker = || (NonZeroU32::new(5).unwrap(), Duration::from_secs(60));
    serve_gateway(
        Gateway::builder()
            .request_body_timeout(BODY_TIMEOUT)
            .route(
                "/own504",
                Route::to([upstream.clone()]).circuit_breaker(breaker().0, breaker().1),
            )
            .route(
                "/dead",
                // Nothing listens on port 1: every attempt is a connect error.
                Route::to(["http://127.0.0.1:1"]).circuit_breaker(breaker().0, breaker().1),
            )
            .route(
                "/api",
                Route::to([upstream.clone()])
                    .circuit_breaker(NonZeroU32::new(5).unwrap(), Duration::from_secs(60)),
            )
            .route(
                "/put",
                Route::to([upstream])
                    .retry(2)
                    .retry_idempotent_writes(true)
                    .retry_backoff(Duration::from_millis(1), Duration::from_millis(2)),
            ),
    )
    .await
}

/// How the client ends its upload after the bytes it sent.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Half-closes its side and waits for the answer.
    HalfClose,
    /// The same after a pause, by when the request has surely reached the upstream.
    LateHalfClose,
    /// Sends nothing more and waits for the answer.
    Stall,
    /// Resets the connection (`SO_LINGER` 0), reading nothing.
    Reset,
}

async fn connect_from(from: IpAddr, gw: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(gw).await.unwrap()
}

/// Sends `head` and `body` from `from`, ends as `end` says, and reads the answer, if one
/// comes before the server closes.
async fn upload(
    from: IpAddr,
    gw: SocketAddr,
    head: &str,
    body: &[u8],
    end: End,
) -> Option<RawResponse> {
    let mut stream = connect_from(from, gw).await;
    let mut request = head.replace('\n', "\r\n").trim_end().to_owned();
    request.push_str("\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // The upload may be refused half way: what matters is the answer.
    let _ = stream.write_all(body).await;
    match end {
        End::HalfClose => {
            let _ = stream.shutdown().await;
        }
        End::LateHalfClose => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = stream.shutdown().await;
        }
        End::Stall => {}
        End::Reset => {
            // A zero linger never blocks: the close sends a reset at once.
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO)).unwrap();
            drop(stream);
            return None;
        }
    }
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the gateway answers or closes within 10 s");
    (read.is_ok() && !raw.is_empty()).then(|| common::parse_response(&raw))
}

fn assert_problem(res: &RawResponse, status: u16, what: &str) {
    assert_eq!(res.status, status, "{what}: {res:?}");
    assert_eq!(
        res.headers["content-type"], "application/problem+json",
        "{what}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(problem["status"], status, "{what}");
}

const CHUNKED_POST: &str = "POST /api/upload HTTP/1.1\nhost: gw\ntransfer-encoding: chunked";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_are_the_clients_fault_and_leave_the_breaker_closed() {
    let (up, seen) = upstream().await;
    let gw = gateway(up).await;

    // A healthy upload goes through whole.
    let ok = upload(
        ATTACKER,
        gw,
        "POST /api/upload HTTP/1.1\nhost: gw\ncontent-length: 5\nconnection: close",
        b"hello",
        End::Stall,
    )
    .await
    .expect("an answer");
    assert_eq!((ok.status, &ok.body[..]), (200, &b"got 5"[..]));

    for round in 0..ROUNDS {
        // Junk chunk sizes: 400, the response side still open.
        for junk in ["zz", "+3", "0x3"] {
            let body = format!("3\r\nabc\r\n{junk}\r\nabc\r\n0\r\n\r\n");
            let res = upload(ATTACKER, gw, CHUNKED_POST, body.as_bytes(), End::Stall)
                .await
                .unwrap_or_else(|| panic!("an answer to chunk size {junk:?}"));
            assert_problem(&res, 400, &format!("round {round}, chunk size {junk:?}"));
        }
        // A chunk larger than the data, then a half-close: the body ends early.
        let res = upload(ATTACKER, gw, CHUNKED_POST, b"64\r\nabc", End::HalfClose)
            .await
            .expect("an answer to a short chunk");
        assert_problem(&res, 400, &format!("round {round}, short chunk"));
        // Content-Length 100, 10 bytes, half-close.
        let res = upload(
            ATTACKER,
            gw,
            "POST /api/upload HTTP/1.1\nhost: gw\ncontent-length: 100",
            &[b'x'; 10],
            End::HalfClose,
        )
        .await
        .expect("an answer to a short body");
        assert_problem(&res, 400, &format!("round {round}, short body"));
        // A reset in the middle of a 1 MiB upload: nobody to answer.
        upload(
            ATTACKER,
            gw,
            "POST /api/upload HTTP/1.1\nhost: gw\ncontent-length: 1048576",
            &[b'x'; 256 * 1024],
            End::Reset,
        )
        .await;
    }
    // Stalled uploads, all at once: 408 after the request-body timeout, never 504.
    let stalls = (0..ROUNDS).map(|_| {
        tokio::spawn(upload(
            ATTACKER,
            gw,
            "POST /api/upload HTTP/1.1\nhost: gw\ncontent-length: 100",
            &[b'x'; 10],
            End::Stall,
        ))
    });
    for stall in stalls {
        let res = stall.await.unwrap().expect("an answer to a stalled body");
        assert_problem(&res, 408, "stalled body");
    }

    // Another client is served at once: the breaker is closed.
    let (status, body) = get_from(OTHER, gw, "/api/ping").await;
    assert_eq!((status, body.as_str()), (200, "got 0"));

    // And the upstream's own failures still open it: five 502s, then 503 without a call.
    for _ in 0..5 {
        assert_eq!(get_from(OTHER, gw, "/api/fail").await.0, 502);
    }
    let hits = seen.hits.load(Ordering::SeqCst);
    let (status, _) = get_from(OTHER, gw, "/api/ping").await;
    assert_eq!(status, 503, "five upstream 502s open the breaker");
    assert_eq!(seen.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_own_504s_and_a_dead_upstream_still_open_the_breaker() {
    let (up, _) = upstream().await;
    let gw = gateway(up).await;
    for _ in 0..5 {
        assert_eq!(get_from(OTHER, gw, "/own504/fail504").await.0, 504);
        assert_eq!(get_from(OTHER, gw, "/dead/x").await.0, 502);
    }
    assert_eq!(get_from(OTHER, gw, "/own504/ping").await.0, 503);
    assert_eq!(get_from(OTHER, gw, "/dead/x").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_is_never_retried() {
    let (up, seen) = upstream().await;
    let gw = gateway(up).await;
    let res = upload(
        ATTACKER,
        gw,
        "PUT /put/item HTTP/1.1\nhost: gw\ncontent-length: 100",
        &[b'x'; 10],
        End::LateHalfClose,
    )
    .await
    .expect("an answer");
    assert_problem(&res, 400, "short PUT body");
    // Let a retry, if one were made, arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        1,
        "sent once, never retried"
    );
    assert_eq!(seen.whole.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_after_an_early_answer_ends_the_exchange_as_the_clients() {
    // The upstream answers before the upload is done; then the client's body breaks (a
    // reset, or junk framing): the exchange ends, and the breaker counts nothing against
    // the upstream.
    let (up, _) = upstream().await;
    let gw = gateway(up).await;
    for round in 0..ROUNDS {
        upload(
            ATTACKER,
            gw,
            "POST /api/early HTTP/1.1\nhost: gw\ncontent-length: 1048576",
            &[b'x'; 64 * 1024],
            End::Reset,
        )
        .await;
        let res = upload(
            ATTACKER,
            gw,
            CHUNKED_POST.replace("/api/upload", "/api/early").as_str(),
            b"3\r\nabc\r\nzz\r\n",
            End::Stall,
        )
        .await;
        if let Some(res) = res {
            assert!(res.status < 500, "round {round}: {res:?}");
        }
    }
    let (status, body) = get_from(OTHER, gw, "/api/ping").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "got 0"),
        "the breaker is closed"
    );
}
