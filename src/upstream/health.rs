//! Passive health (outlier ejection) and active health checks: their settings, and the
//! probe task.

use std::ops::RangeInclusive;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::endpoint::Endpoint;
use super::pool::{Events, PoolEvent, PoolEventKind};
use super::url::{Transport, Upstream};
use crate::body::GatewayBody;
use crate::random::below;

/// Outlier ejection: an endpoint whose attempts fail `consecutive_failures` times in a row
/// (connection errors, timeouts, and what the pool's classifier calls a failure; never a
/// client's fault) is taken out for `base_ejection` times its ejection count, at most
/// `max_ejection`. When its time is up it takes traffic again on probation, where one
/// failure ejects it again at once. Each `base_ejection` it then spends in service without
/// a failure lowers its ejection count by one. At most `max_ejected_percent` of the pool is
/// out at once (at least one endpoint of two or more), never the last.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct PassiveHealth {
    pub(super) consecutive_failures: u32,
    pub(super) base_ejection: Duration,
    pub(super) max_ejection: Duration,
    pub(super) max_ejected_percent: u8,
    pub(super) jitter: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl PassiveHealth {
    /// The defaults: 5 failures in a row, 30 s growing to at most 300 s, at most 50 % of the
    /// pool out, no jitter.
    pub fn new() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            jitter: Duration::ZERO,
        }
    }

    /// Failures in a row that eject an endpoint (at least 1).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures.max(1);
        self
    }

    /// The first ejection's length; the n-th lasts n times this.
    pub fn base_ejection(mut self, base: Duration) -> Self {
        self.base_ejection = base;
        self
    }

    /// The longest an ejection lasts.
    pub fn max_ejection(mut self, max: Duration) -> Self {
        self.max_ejection = max;
        self
    }

    /// The share of the pool that may be out at once, in percent (capped at 100).
    pub fn max_ejected_percent(mut self, percent: u8) -> Self {
        self.max_ejected_percent = percent.min(100);
        self
    }

    /// A random extra of up to `jitter` on each ejection, so that gateways that saw the
    /// same failures do not bring an endpoint back all at once (default none).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// How many endpoints of a pool of `len` may be ejected at once.
    pub(super) fn max_ejected(&self, len: usize) -> usize {
        if len < 2 {
            return 0;
        }
        (len * usize::from(self.max_ejected_percent) / 100)
            .max(1)
            .min(len - 1)
    }

    pub(super) fn draw_jitter(&self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(below(nanos.saturating_add(1)))
    }
}

/// Active health checks: a `GET path` to every endpoint each `interval` (the first after a
/// random part of it, so that gateways and pools do not probe in step), failing on a
/// connection error, no answer within `timeout`, or a status outside `expect` (200–399 by
/// default). `unhealthy_threshold` failures in a row mark an endpoint unhealthy (it gets no
/// traffic), `healthy_threshold` passes in a row mark it healthy again; a passing probe
/// also ends an ejection. Endpoints start healthy. The probes run as long as the pool
/// lives (with a Tokio runtime).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct ActiveHealth {
    pub(super) path: String,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) healthy_threshold: u32,
    pub(super) unhealthy_threshold: u32,
    pub(super) expect: RangeInclusive<u16>,
}

impl ActiveHealth {
    /// Probes `path` (it must start with `/`) every 10 s with a 2 s timeout, 2 passes to
    /// become healthy and 3 failures to become unhealthy.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect: 200..=399,
        }
    }

    /// Time between probes of an endpoint.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long a probe may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Passes in a row that make an endpoint healthy (at least 1).
    pub fn healthy_threshold(mut self, passes: u32) -> Self {
        self.healthy_threshold = passes.max(1);
        self
    }

    /// Failures in a row that make an endpoint unhealthy (at least 1).
    pub fn unhealthy_threshold(mut self, failures: u32) -> Self {
        self.unhealthy_threshold = failures.max(1);
        self
    }

    /// The statuses that pass (default 200 to 399).
    pub fn expect(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.expect = statuses;
        self
    }

    /// The probed path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The interval.
    pub fn period(&self) -> Duration {
        self.interval
    }
}

/// One endpoint's probe loop, stopped when this is dropped (with the pool that made it, or
/// when a reload replaces the checks).
pub(super) struct Prober {
    pub(super) settings: ActiveHealth,
    tls: ProbeTls,
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// How probes speak TLS to `https://` endpoints (`None` when the pool has none).
pub(super) type ProbeTls = Option<ProbeTlsConfig>;

#[cfg(feature = "tls")]
type ProbeTlsConfig = Arc<rustls::ClientConfig>;
/// Without the `tls` feature there are no `https://` endpoints.
#[cfg(not(feature = "tls"))]
type ProbeTlsConfig = std::convert::Infallible;

impl Prober {
    pub(super) fn new(settings: ActiveHealth, tls: ProbeTls) -> Self {
        Self {
            settings,
            tls,
            task: std::sync::Mutex::new(None),
        }
    }

    /// Starts the loop unless it runs; needs a Tokio runtime. `false` without one.
    pub(super) fn start(
        &self,
        index: usize,
        upstream: &Upstream,
        endpoint: &Arc<Endpoint>,
        events: &Arc<Events>,
    ) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.is_none() {
            let handle = runtime.spawn(probe_loop(
                index,
                self.settings.clone(),
                self.tls.clone(),
                upstream.clone(),
                Arc::downgrade(endpoint),
                Arc::clone(events),
            ));
            *task = Some(handle.abort_handle());
        }
        true
    }
}

impl Prober {
    /// Stops the loop for good.
    pub(super) fn stop(&self) {
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

async fn probe_loop(
    index: usize,
    settings: ActiveHealth,
    tls: ProbeTls,
    upstream: Upstream,
    endpoint: Weak<Endpoint>,
    events: Arc<Events>,
) {
    let interval_nanos = u64::try_from(settings.interval.as_nanos()).unwrap_or(u64::MAX);
    tokio::time::sleep(Duration::from_nanos(below(interval_nanos / 4 + 1))).await;
    loop {
        let started = Instant::now();
        let passed = probe(&settings, tls.as_ref(), &upstream).await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        let (health, ejection) = endpoint.probed(
            passed.is_ok(),
            settings.healthy_threshold,
            settings.unhealthy_threshold,
            Instant::now(),
        );
        events.emit(&PoolEvent {
            index,
            endpoint: upstream.url(),
            kind: PoolEventKind::Probe(passed.err()),
        });
        for change in [health, ejection].into_iter().flatten() {
            events.changed(index, &upstream, change);
        }
        drop(endpoint);
        tokio::time::sleep_until(crate::time::later(started, settings.interval)).await;
    }
}

/// One probe: `Ok` when it passed, else why not.
async fn probe(
    settings: &ActiveHealth,
    tls: Option<&ProbeTlsConfig>,
    upstream: &Upstream,
) -> Result<(), &'static str> {
    match tokio::time::timeout(settings.timeout, exchange(settings, tls, upstream)).await {
        Ok(result) => result,
        Err(_) => Err("timeout"),
    }
}

async fn exchange(
    settings: &ActiveHealth,
    tls: Option<&ProbeTlsConfig>,
    upstream: &Upstream,
) -> Result<(), &'static str> {
    let target = Uri::try_from(settings.path.as_str()).map_err(|_| "path")?;
    let uri = upstream.uri_for(&target).ok_or("path")?;
    let path = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let mut req = Request::get(path)
        .body(GatewayBody::empty())
        .map_err(|_| "path")?;
    req.headers_mut().insert(HOST, upstream.host().clone());
    req.headers_mut().insert(
        USER_AGENT,
        HeaderValue::from_static("tower-gateway-health-check"),
    );

    let authority = upstream.authority();
    let https = upstream.transport() == Transport::Https;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|_| "connect")?;
    let _ = stream.set_nodelay(true);
    let status = match upstream.transport() {
        Transport::H2c => send(stream, true, uri, req).await?,
        #[cfg(feature = "tls")]
        Transport::Https => {
            let config = tls.ok_or("tls")?;
            let name =
                rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| "tls")?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(|_| "tls")?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            send(stream, h2, uri, req).await?
        }
        _ => {
            let _ = tls;
            send(stream, false, uri, req).await?
        }
    };
    if settings.expect.contains(&status.as_u16()) {
        Ok(())
    } else {
        Err("status")
    }
}

/// Sends `req` on the connection `io`, in HTTP/2 (to `uri`) or HTTP/1.1.
async fn send<IO>(
    io: IO,
    h2: bool,
    uri: Uri,
    mut req: Request<GatewayBody>,
) -> Result<StatusCode, &'static str>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let result = if h2 {
        // HTTP/2 takes the authority from the URI (`:authority`), not from `Host`.
        req.headers_mut().remove(HOST);
        *req.uri_mut() = uri;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|_| "connect")?;
        let conn = tokio::spawn(conn);
        let result = sender.send_request(req).await;
        conn.abort();
        result
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|_| "connect")?;
        let conn = tokio::spawn(conn);
        let result = sender.send_request(req).await;
        conn.abort();
        result
    };
    Ok(result.map_err(|_| "exchange")?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ejection_cap_keeps_one_of_two_and_never_the_last() {
        let half = PassiveHealth::new();
        let cap: Vec<usize> = [1, 2, 3, 4, 5, 10].map(|n| half.max_ejected(n)).to_vec();
        assert_eq!(cap, [0, 1, 1, 2, 2, 5]);
        let all = PassiveHealth::new().max_ejected_percent(100);
        assert_eq!([1, 2, 3].map(|n| all.max_ejected(n)), [0, 1, 2]);
        let none = PassiveHealth::new().max_ejected_percent(0);
        assert_eq!(
            [2, 3].map(|n| none.max_ejected(n)),
            [1, 1],
            "at least one of two or more"
        );
    }
}
