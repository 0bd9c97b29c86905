//! A rate limiter that is given no client address (axum served without
//! `into_make_service_with_connect_info`) cannot tell clients apart: it counts them in one
//! shared budget, and says so once in a `warn` log instead of doing it silently. Logs are
//! captured by a process-wide subscriber, so this file holds this one test.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tower_gateway::rate_limit::{Quota, RateLimitLayer};

/// Everything a tracing subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn status_from(from: IpAddr, addr: SocketAddr) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = "GET /hello HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn without_a_client_address_one_shared_budget_and_one_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(RateLimitLayer::new(
            Quota::new(1, Duration::from_secs(60)).unwrap(),
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Served without `into_make_service_with_connect_info`: no address reaches the layer.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut statuses = Vec::new();
    for n in 2..=5 {
        statuses.push(status_from(IpAddr::from([127, 0, 0, n]), addr).await);
    }
    assert_eq!(statuses, [200, 429, 429, 429], "one budget for all of them");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("no client address"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {logs}");
    assert!(warnings[0].contains("WARN"), "{logs}");
    assert!(
        warnings[0].contains("into_make_service_with_connect_info"),
        "it says how to fix it: {logs}"
    );
}
