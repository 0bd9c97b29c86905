//! The server's own clocks and drain, through real sockets: the header-read timeout and the
//! idle timeout each on their own clock, and WebSocket tunnels in the graceful drain.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::server::Server;

use common::read_head;
use common::upstream;

const HEAD: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(1500);

/// A gateway with the route `/api` to a test upstream, served with `server`; the address,
/// the trigger of its shutdown and its task (which ends when `serve` returns).
async fn serve(server: Server) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let (up, _) = upstream::start(false).await;
    let gateway = Gateway::builder()
        .route("/api", Route::to([format!("http://{up}")]))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, gateway, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

fn clocks() -> Server {
    Server::new().header_read_timeout(HEAD).idle_timeout(IDLE)
}

/// Sends a keep-alive `GET` on `stream` and reads its answer (the body is `pong /ping`).
async fn ping(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /api/ping HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 10];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"pong /ping");
}

/// How long until the gateway closes `stream` (reading and dropping anything it sends).
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the connection")
        .ok();
    started.elapsed()
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    let (gw, _stop, _task) = serve(clocks()).await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    ping(&mut stream).await;
    // Idle three times the header-read timeout: still open, and serving.
    tokio::time::sleep(HEAD * 3).await;
    ping(&mut stream).await;
    // Then closed after the idle timeout, not before.
    let closed = closed_after(&mut stream).await;
    assert!(
        closed >= IDLE - Duration::from_millis(50) && closed < IDLE * 2,
        "closed after {closed:?} idle, the idle timeout is {IDLE:?}"
    );
}

#[tokio::test]
async fn a_head_that_never_completes_is_cut_at_the_header_read_timeout() {
    let (gw, _stop, _task) = serve(clocks()).await;
    // After a first request and some idle time, the next head starts and stalls: its clock
    // runs from its first byte.
    let mut stream = TcpStream::connect(gw).await.unwrap();
    ping(&mut stream).await;
    tokio::time::sleep(HEAD * 2).await;
    stream
        .write_all(b"GET /api/ping HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let closed = closed_after(&mut stream).await;
    assert!(
        closed >= HEAD - Duration::from_millis(50) && closed < IDLE,
        "a stalled head closed after {closed:?}"
    );
    // A connection that sends nothing at all gets the header-read timeout too.
    let mut silent = TcpStream::connect(gw).await.unwrap();
    let closed = closed_after(&mut silent).await;
    assert!(closed < IDLE, "a silent connection closed after {closed:?}");
}

/// Opens a WebSocket tunnel through the gateway to the upstream's echo.
async fn tunnel(gw: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"GET /api/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

async fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message).await?;
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("an echo or a close within 5 s")?;
    assert_eq!(echoed, message);
    Ok(())
}

#[tokio::test]
async fn a_websocket_tunnel_gets_the_grace_period_then_the_drain_closes_it() {
    let grace = Duration::from_millis(1200);
    let (gw, stop, task) = serve(clocks().shutdown_grace(grace)).await;
    let mut ws = tunnel(gw).await;
    echo(&mut ws, b"before").await.unwrap();
    // Longer than the idle timeout: a tunnel has no idle clock.
    tokio::time::sleep(IDLE + HEAD).await;
    echo(&mut ws, b"after a quiet while").await.unwrap();

    let started = Instant::now();
    stop.send(()).unwrap();
    // During the grace period the tunnel still carries messages...
    tokio::time::sleep(grace / 3).await;
    echo(&mut ws, b"during the drain").await.unwrap();
    assert!(!task.is_finished(), "the server waits for the open tunnel");
    // ...and at its end the server closes it and returns.
    let closed = closed_after(&mut ws).await + grace / 3;
    assert!(
        closed >= grace - Duration::from_millis(100) && closed < grace * 3,
        "the tunnel closed {closed:?} after the shutdown began, the grace is {grace:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns once the tunnel is closed")
        .unwrap();
    assert!(started.elapsed() < grace * 3);
}

#[tokio::test]
async fn a_tunnel_that_ends_before_the_shutdown_does_not_hold_it() {
    let (gw, stop, task) = serve(clocks().shutdown_grace(Duration::from_secs(30))).await;
    let mut ws = tunnel(gw).await;
    echo(&mut ws, b"hello").await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("nothing in flight: serve returns at once")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_idle_clock_starts_even_when_hyper_does_not_read_again() {
    // With `Expect: 100-continue` hyper's last look at the socket comes while the request
    // is in flight; the idle clock must start without another one (the fuzz found this).
    let (gw, _stop, _task) = serve(clocks()).await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"PUT /api/item HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
              Expect: 100-continue\r\n\r\nGE",
        )
        .await
        .unwrap();
    let closed = closed_after(&mut stream).await;
    assert!(
        closed < IDLE * 2,
        "an idle connection after a 100-continue exchange closed after {closed:?}"
    );
}

#[tokio::test]
async fn a_101_that_hands_nothing_over_closes_the_socket_and_holds_no_drain() {
    // A service that answers 101 without taking the upgrade: hyper keeps the socket in the
    // connection, which must go, or the socket and the drain wait on it for good.
    let service = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        let res = http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        Ok::<_, std::convert::Infallible>(res)
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(clocks().shutdown_grace(Duration::from_secs(30)).serve(
        listener,
        service,
        async {
            let _ = stopped.await;
        },
    ));
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.contains(" 101 "), "{head}");
    let closed = closed_after(&mut stream).await;
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("nothing holds the drain")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_response_still_being_written_is_not_cut_by_the_idle_clock() {
    // The response body is done (all of it in hyper's buffer and the kernel's) long before
    // a client that is not reading takes it: the connection is busy until it is written.
    let (gw, _stop, _task) = serve(
        Server::new()
            .header_read_timeout(HEAD)
            .idle_timeout(Duration::from_millis(200)),
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw).await.unwrap();
    stream
        .write_all(b"GET /api/download?kib=96 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    // Not reading for five idle timeouts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let complete = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.ends_with(b"\r\n0\r\n\r\n") {
                return true;
            }
        }
    })
    .await
    .expect("the whole response within 5 s");
    assert!(complete, "the response was cut after {} bytes", raw.len());
    assert!(raw.len() > 96 * 1024);
}

#[tokio::test]
async fn an_upload_that_flows_on_after_an_early_answer_is_not_cut() {
    // An upstream that answers at once and reads the upload after: the body keeps flowing
    // for longer than the header-read timeout after the answer is done.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&received);
    let up = common::serve_hyper(tower::service_fn(
        move |req: http::Request<hyper::body::Incoming>| {
            let counted = std::sync::Arc::clone(&counted);
            async move {
                let mut body = req.into_body();
                tokio::spawn(async move {
                    use http_body_util::BodyExt;
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Some(data) = frame.data_ref() {
                            counted.fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"early"),
                )))
            }
        },
    ))
    .await;
    let gateway = Gateway::builder()
        .route("/api", Route::to([format!("http://{up}")]))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(clocks().serve(listener, gateway, std::future::pending()));

    const TOTAL: usize = 2 << 20;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    let head = format!("POST /api/up HTTP/1.1\r\nHost: gw\r\ncontent-length: {TOTAL}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; TOTAL / 32];
    let started = Instant::now();
    for _ in 0..32 {
        stream
            .write_all(&chunk)
            .await
            .expect("the upload is not cut");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        started.elapsed() > HEAD * 3,
        "the upload outlasted the header timeout"
    );
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for _ in 0..200 {
        if received.load(std::sync::atomic::Ordering::SeqCst) == TOTAL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), TOTAL);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_the_idle_timeout() {
    // A download to a client that reads nothing: the write stalls, and after the idle
    // timeout the gateway gives up on the connection instead of holding it for good.
    let (gw, _stop, _task) = serve(clocks()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw).await.unwrap();
    stream
        .write_all(b"GET /api/download?mib=8 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(IDLE * 2).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(read_all.is_ok(), "the connection was closed");
    assert!(
        received < 8 << 20,
        "the stalled download was cut, not sent whole ({received} bytes)"
    );
}
