//! The bundled example gateway: a TOML config in, a hardened gateway out.
//!
//! Run it with `cargo run --example gateway`, then:
//! ```text
//! curl -i -H 'x-api-key: dev-key' localhost:5050/api/a/ping
//! curl -i -H 'x-api-key: dev-key' localhost:5050/api/b/echo
//! curl -i localhost:5050/api/a/health     # anonymous: no key needed
//! ```
//! With no `--config` it serves the embedded [`DEFAULT_CONFIG`] and starts two demo upstreams
//! in the same process (see `demo_upstreams.rs`): A on 127.0.0.1:5051 behind `/api/a`, B on
//! 127.0.0.1:5052 behind `/api/b`. With `--config FILE` it serves that file's routes only.
//! `--listen ADDR` overrides `server.listen`; `RUST_LOG` sets the log filter (default `info`).
//!
//! SIGTERM or Ctrl-C stops accepting, lets in-flight requests finish for up to
//! `server.shutdown_grace`, and exits 0. A bad config or argument is one line on stderr and
//! exit code 1 (2 for a bad command line).
//!
//! With `--config FILE` it reloads the file on SIGHUP and when its contents change (checked
//! every second): a valid file replaces the routes and policies atomically (requests in flight
//! finish on the old ones; rate-limit budgets, breaker state and bulkhead slots carry over
//! for routes whose settings did not change); an invalid one is refused with one log line and
//! the running config keeps serving. `[server]` and `[admin]` changes need a restart.
//!
//! With `[admin] listen = "127.0.0.1:9090"` it also serves, on that address: `/metrics`
//! (the gateway's metrics in the Prometheus text format, from metrics-exporter-prometheus),
//! `/healthz` (200 while the process runs), `/upstreams` (every route's pool as JSON) and `/readyz` (200 while it serves, 503 from the
//! moment it starts draining).

mod demo_upstreams;

use std::error::Error;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_gateway::builder::Gateway;
use tower_gateway::config::{Config, ConfigError};
use tower_gateway::reload::{ReloadHandle, reloadable};
use tower_gateway::server::Server;
use tower_gateway::tls::ServerTls;
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: gateway [--config FILE] [--listen ADDR] [--log-format text|json] [--help]";

const HELP: &str = "\
gateway: the tower-gateway example gateway

usage: gateway [--config FILE] [--listen ADDR] [--log-format text|json] [--help]

  --config FILE       serve the routes of a TOML config file (every key is in the
                      README's quick start and the docs of tower_gateway::config)
  --listen ADDR       listen on ADDR instead of server.listen (port 0 picks a free port)
  --log-format FMT    `text` (default: human-readable lines) or `json` (one object a line)
  --help              show this help

Without --config it serves the config below and starts its two demo upstreams, A on
127.0.0.1:5051 and B on 127.0.0.1:5052, each answering /ping, /slow?ms=N, /fail?rate=R,
/echo and /health; auth is on with the key dev-key (/health is anonymous), each client
may make 100 requests a minute per route, and /api/a has at most 64 in flight.
Metrics (Prometheus text) are on 127.0.0.1:9090/metrics, with /healthz, /readyz and /upstreams.
Try: curl -i -H 'x-api-key: dev-key' localhost:5050/api/a/ping
(or --http2-prior-knowledge: the listener speaks HTTP/1.1 and h2c; with [server.tls] in a
config, HTTPS with HTTP/2 by ALPN, certificates reloaded on SIGHUP and on change).

RUST_LOG sets the log filter (default info; every answered request is an info event
inside a `request` span, so RUST_LOG=warn turns the access log off). SIGTERM or Ctrl-C
shuts down gracefully. With --config, SIGHUP or a change of the file reloads it (an
invalid file is refused and the running config keeps serving).

The embedded config:
";

/// The config served without `--config`.
const DEFAULT_CONFIG: &str = r#"[server]
listen = "127.0.0.1:5050"
shutdown_grace = "30s"

[admin]
listen = "127.0.0.1:9090"

[auth]
header = "x-api-key"
[[auth.keys]]
id = "dev"
key = "dev-key"

[[routes]]
prefix = "/api/a"
upstreams = ["http://127.0.0.1:5051"]
timeout = "5s"
anonymous = ["/health"]

[routes.rate_limit]
requests = 100
window = "1m"

[routes.bulkhead]
max_concurrent = 64

[[routes]]
prefix = "/api/b"
upstreams = ["http://127.0.0.1:5052"]
timeout = "5s"
anonymous = ["/health"]

[routes.rate_limit]
requests = 100
window = "1m"

[routes.circuit_breaker]
failure_threshold = 5
cooldown = "10s"

[routes.retry]
max_retries = 2
base_delay = "50ms"
"#;

/// The demo upstreams of [`DEFAULT_CONFIG`].
const DEMO_UPSTREAMS: [(&str, &str); 2] = [("A", "127.0.0.1:5051"), ("B", "127.0.0.1:5052")];

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    json_logs: bool,
    help: bool,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self::default();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--config" => parsed.config = Some(value()?.into()),
                "--listen" => {
                    let addr = value()?;
                    let addr = addr
                        .parse()
                        .map_err(|error| format!("--listen {addr:?}: {error}"))?;
                    parsed.listen = Some(addr);
                }
                "--log-format" => {
                    parsed.json_logs = match value()?.as_str() {
                        "text" => false,
                        "json" => true,
                        other => {
                            return Err(format!(
                                "--log-format {other:?}: expected `text` or `json`"
                            ));
                        }
                    }
                }
                "-h" | "--help" if inline.is_none() => parsed.help = true,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        Ok(parsed)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("gateway: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{HELP}{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    // The bytes the config is parsed from are what the reload watcher compares the file
    // with, so no edit can fall between the load and the watch.
    let loaded = args
        .config
        .as_deref()
        .and_then(|path| std::fs::read(path).ok());
    let mut config = match &args.config {
        Some(path) => parse_config(path, loaded.as_deref())?,
        None => Config::from_toml_str(DEFAULT_CONFIG)?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.json_logs {
        // One JSON object a line, with the request span's fields under "span".
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }

    // One thread when pinned to one CPU (as the benchmark does): cheaper than a scheduler
    // with a single worker.
    let mut runtime = if std::thread::available_parallelism().map_or(1, NonZeroUsize::get) == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = runtime.enable_all().build()?;
    // Before the gateway is built: its layers register their metrics with this recorder.
    let prometheus = match &config.admin {
        Some(_) => Some(
            PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)?
                .install_recorder()?,
        ),
        None => None,
    };
    // Inside the runtime: a shared rate-limit store keeps its Redis connection on it.
    let gateway = {
        let _entered = runtime.enter();
        config.gateway_builder()?.build()?
    };

    let (gateway, reload) = reloadable(gateway);
    let current = reload.clone();
    // The certificates are read now, so a bad file stops the start with one line.
    let tls = match config.server_tls() {
        Some(tls) => Some(
            tls.on_load(tower_gateway::metrics::record_tls_certificates)
                .build()
                .map_err(|error| format!("server.tls: {error}"))?,
        ),
        None => None,
    };

    runtime.block_on(async {
        // SIGHUP would end the process if nobody listened for it.
        tokio::spawn(watch_config(
            args.config.clone(),
            loaded,
            config.clone(),
            args.listen,
            reload,
            tls.clone(),
        )?);
        if let Some(tls) = &tls {
            // New certificates on disk serve new connections; a bad one is refused.
            tokio::spawn(tls.watch(Duration::from_secs(1)));
        }
        if args.config.is_none() {
            for (name, addr) in DEMO_UPSTREAMS {
                demo_upstreams::spawn(name, addr.parse()?).await?;
            }
        }
        // Signal handlers go in before the first connection, so no SIGTERM kills us rudely.
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = {
            let signal = shutdown_signal()?;
            let ready = Arc::clone(&ready);
            async move {
                signal.await;
                // Draining from here on: load balancers watching /readyz stop sending.
                ready.store(false, Ordering::SeqCst);
            }
        };
        if let (Some(admin), Some(prometheus)) = (&config.admin, prometheus) {
            let listener = TcpListener::bind(admin.listen)
                .await
                .map_err(|error| format!("cannot listen on {} (admin): {error}", admin.listen))?;
            // Not "listening on": scripts wait for that line to find the gateway itself.
            tracing::info!(
                "admin endpoints on {}: /metrics /healthz /readyz /upstreams",
                listener.local_addr()?
            );
            tokio::spawn(serve_admin(
                listener,
                prometheus,
                Arc::clone(&ready),
                current,
            ));
        }
        let listen = config.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        let addr = listener.local_addr()?;
        if let Some(tls) = &tls {
            for certificate in tls.certificates() {
                tracing::info!(
                    file = %certificate.path.display(),
                    names = ?certificate.names,
                    "serving TLS (HTTP/2 and HTTP/1.1 by ALPN){}",
                    if tls.requires_client_certificates() { ", client certificates required" } else { "" }
                );
            }
        }
        // Scripts and tests wait for this line, so it is printed whatever the log filter.
        if tracing::enabled!(tracing::Level::INFO) {
            tracing::info!("listening on {addr}");
        } else {
            eprintln!("listening on {addr}");
        }
        ready.store(true, Ordering::SeqCst);
        let mut server = Server::new()
            .shutdown_grace(config.server.shutdown_grace)
            .header_read_timeout(config.server.header_read_timeout)
            .idle_timeout(config.server.idle_timeout);
        if let Some(tls) = tls {
            server = server.tls(tls);
        }
        server.serve(listener, gateway, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The config in `bytes`, the contents of the file at `path`. When they could not be read or
/// are not UTF-8, the file is read again by [`Config::load`], whose error names it.
fn parse_config(path: &Path, bytes: Option<&[u8]>) -> Result<Config, ConfigError> {
    match bytes.and_then(|bytes| std::str::from_utf8(bytes).ok()) {
        Some(text) => Config::from_toml_str(text),
        None => Config::load(path),
    }
}

/// Reloads the config file at `path` on SIGHUP and when its contents change from `seen`
/// (checked every second), swapping the gateway `reload` serves; `listen` is the command
/// line's override of `server.listen`. Logs SIGHUPs and does nothing else without a file.
/// Returns the watching future once the signal handler is in.
fn watch_config(
    path: Option<PathBuf>,
    seen: Option<Vec<u8>>,
    running: Config,
    listen: Option<SocketAddr>,
    reload: ReloadHandle<Gateway>,
    tls: Option<ServerTls>,
) -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        let mut running = running;
        let mut seen = seen;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = tokio::select! {
                _ = hangup.recv() => true,
                _ = every.tick() => false,
            };
            #[cfg(not(unix))]
            let hup = {
                every.tick().await;
                false
            };
            if let (true, Some(tls)) = (hup, &tls) {
                match tls.reload() {
                    Ok(()) => tracing::info!("reloaded the TLS certificates (SIGHUP)"),
                    Err(error) => tracing::error!(
                        "TLS certificate reload refused (SIGHUP), the running certificates keep serving: {error}"
                    ),
                }
            }
            let Some(path) = path.as_deref() else {
                if hup && tls.is_none() {
                    tracing::info!("SIGHUP: nothing to reload (the embedded config is served)");
                }
                continue;
            };
            let now = std::fs::read(path).ok();
            if !hup {
                if now == seen {
                    continue;
                }
                // An editor may be halfway through writing it (an empty file is a valid
                // config without routes): wait until it holds still.
                tokio::time::sleep(Duration::from_millis(250)).await;
                if std::fs::read(path).ok() != now {
                    continue;
                }
            }
            seen = now;
            let why = if hup { "SIGHUP" } else { "the file changed" };
            // Parsing and building take a while: not on the thread that serves requests.
            let load = {
                let (path, current) = (path.to_owned(), reload.current());
                let bytes = seen.clone();
                move || -> Result<(Config, Gateway), String> {
                    let mut config =
                        parse_config(&path, bytes.as_deref()).map_err(|error| error.to_string())?;
                    if let Some(listen) = listen {
                        config.server.listen = listen;
                    }
                    let gateway = config
                        .gateway_builder()
                        .map_err(|error| error.to_string())?
                        .keep_state_of(&current)
                        .build()
                        .map_err(|error| error.to_string())?;
                    Ok((config, gateway))
                }
            };
            let loaded = tokio::task::spawn_blocking(load)
                .await
                .unwrap_or_else(|error| Err(format!("the reload failed: {error}")));
            match loaded {
                Ok((config, gateway)) => {
                    reload.reload(gateway);
                    tracing::info!(
                        routes = config.routes.len(),
                        "reloaded {} ({why})",
                        path.display()
                    );
                    let server = |c: &Config| {
                        let s = &c.server;
                        (
                            s.listen,
                            s.shutdown_grace,
                            s.header_read_timeout,
                            s.idle_timeout,
                            s.tls.clone(),
                        )
                    };
                    if server(&config) != server(&running)
                        || config.admin.as_ref().map(|a| a.listen)
                            != running.admin.as_ref().map(|a| a.listen)
                    {
                        tracing::warn!(
                            "[server] changes (but request_body_timeout and trusted_proxies) and [admin] changes take effect only after a restart"
                        );
                    }
                    running = config;
                }
                Err(error) => tracing::error!(
                    "reload of {} refused ({why}), the running config keeps serving: {error}",
                    path.display()
                ),
            }
        }
    })
}

/// Histogram buckets of the latency metrics, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
];

/// Serves `/metrics`, `/healthz`, `/readyz` and `/upstreams` on the `[admin]` listener until
/// the process ends.
async fn serve_admin(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    ready: Arc<AtomicBool>,
    gateway: ReloadHandle<Gateway>,
) {
    // The recorder folds its histogram samples in on upkeep (and on each scrape).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let admin = tower::service_fn(move |req: Request<Incoming>| {
        let answer = |status: StatusCode, content_type: &'static str, body: String| {
            let mut res = Response::new(Full::new(Bytes::from(body)));
            *res.status_mut() = status;
            res.headers_mut()
                .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
            res
        };
        let res = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => answer(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus.render(),
            ),
            (&Method::GET, "/healthz") => answer(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/upstreams") => answer(
                StatusCode::OK,
                "application/json",
                upstreams_json(&gateway.current()),
            ),
            (&Method::GET, "/readyz") if ready.load(Ordering::SeqCst) => {
                answer(StatusCode::OK, "text/plain", "ready\n".into())
            }
            (&Method::GET, "/readyz") => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n".into(),
            ),
            _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(res))
    });
    if let Err(error) = Server::new()
        .serve(listener, admin, std::future::pending())
        .await
    {
        tracing::error!(%error, "the admin listener failed");
    }
}

/// The admin view of every route's pool (CONTRACT.md §5): `{"routes": [{"prefix", "policy",
/// "endpoints": [{"url", "weight", "state", "in_flight", "ejections", ...}]}]}`.
fn upstreams_json(gateway: &Gateway) -> String {
    let routes: Vec<serde_json::Value> = gateway
        .pools()
        .map(|(prefix, pool)| {
            let status = pool.status();
            serde_json::json!({
                "prefix": prefix,
                "policy": status.policy,
                "endpoints": status.endpoints,
            })
        })
        .collect();
    let mut body = serde_json::json!({ "routes": routes }).to_string();
    body.push('\n');
    body
}

/// Completes on the first SIGTERM or Ctrl-C (SIGINT).
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("interrupted, shutting down"),
                _ = terminate.recv() => tracing::info!("terminated, shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupted, shutting down");
        })
    }
}
