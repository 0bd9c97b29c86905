//! The two demo upstreams the embedded default config routes to: small hyper servers that
//! say who they are (`x-upstream: A`) and can be slow, fail or echo on request.
//!
//! | path | answer |
//! |---|---|
//! | `/ping` | `pong` |
//! | `/slow?ms=N` | waits N ms (at most 60 000), then answers |
//! | `/fail?rate=R` | `500` with probability R in [0, 1] (default 1), else `200` |
//! | `/echo` | the method, path and query, version and headers it received, as JSON |
//! | `/health` | `ok` |
//! | anything else | `404` |

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The longest `/slow` wait.
const MAX_SLOW: Duration = Duration::from_secs(60);

/// Binds `addr` and serves upstream `name` there in the background.
pub(crate) async fn spawn(name: &'static str, addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} for demo upstream {name}: {error}"),
        )
    })?;
    tracing::info!(upstream = name, %addr, "demo upstream listening");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(upstream = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = service_fn(move |req| handle(name, req));
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn handle(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query();
    let (status, body) = match req.uri().path() {
        "/ping" => (StatusCode::OK, "pong\n".to_owned()),
        "/health" => (StatusCode::OK, "ok\n".to_owned()),
        "/slow" => match param(query, "ms").map(str::parse::<u64>) {
            Some(Ok(ms)) => {
                let wait = Duration::from_millis(ms).min(MAX_SLOW);
                tokio::time::sleep(wait).await;
                (StatusCode::OK, format!("slept {} ms\n", wait.as_millis()))
            }
            _ => (StatusCode::BAD_REQUEST, "expected /slow?ms=N\n".to_owned()),
        },
        "/fail" => match param(query, "rate").map_or(Ok(1.0), str::parse::<f64>) {
            Ok(rate) if (0.0..=1.0).contains(&rate) => {
                if random() < rate {
                    (StatusCode::INTERNAL_SERVER_ERROR, "failed\n".to_owned())
                } else {
                    (StatusCode::OK, "ok\n".to_owned())
                }
            }
            _ => (
                StatusCode::BAD_REQUEST,
                "expected /fail?rate=R, R in [0, 1]\n".to_owned(),
            ),
        },
        "/echo" => {
            let mut headers = serde_json::Map::new();
            for (header, value) in req.headers() {
                let value = String::from_utf8_lossy(value.as_bytes());
                match headers.get_mut(header.as_str()) {
                    // Repeated fields are joined, as HTTP allows.
                    Some(serde_json::Value::String(joined)) => {
                        joined.push_str(", ");
                        joined.push_str(&value);
                    }
                    _ => {
                        headers.insert(header.as_str().to_owned(), value.into());
                    }
                }
            }
            let echo = serde_json::json!({
                "upstream": name,
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            let mut res = answer(name, StatusCode::OK, format!("{echo:#}\n"));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(res);
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Ok(answer(name, status, body))
}

fn answer(name: &'static str, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::from(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert("x-upstream", HeaderValue::from_static(name));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The value of `key` in a `k=v&k=v` query.
fn param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// A uniform float in [0, 1): SplitMix64 over a shared counter, good enough for a demo.
fn random() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
