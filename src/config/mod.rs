//! The example gateway's TOML config: its schema, its checks, and a [`GatewayBuilder`] from it.
//!
//! Every table denies unknown keys, durations are in humantime form (`"250ms"`, `"5s"`,
//! `"1m"`), and every error is one line that names the key and the problem
//! (`routes[1].timeout: invalid duration "5 parsecs": ...`). Each table and key is documented
//! on [`Config`] and the types of its fields; the example below uses every one.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::config::Config;
//!
//! let config = Config::from_toml_str(
//!     r#"
//!     [server]
//!     listen = "127.0.0.1:8080"
//!
//!     [[routes]]
//!     prefix = "/api/a"
//!     upstreams = ["http://127.0.0.1:5051"]
//!     timeout = "5s"
//!
//!     [routes.rate_limit]     # per client: auth identity, else client IP
//!     requests = 100
//!     window = "1m"
//!
//!     [routes.bulkhead]       # per route, all clients together
//!     max_concurrent = 64
//!     "#,
//! )?;
//! assert_eq!(config.routes[0].timeout, Duration::from_secs(5));
//! assert_eq!(config.routes[0].bulkhead.as_ref().unwrap().max_concurrent, 64);
//! assert_eq!(config.server.shutdown_grace, Duration::from_secs(30)); // the default
//!
//! let gateway = config.gateway_builder::<hyper::body::Incoming>()?.build()?;
//! # let _ = gateway;
//! # Ok(()) }
//! ```
//!
//! `[server.tls]` makes the listener speak HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a
//! certificate chain and key, more certificates chosen by SNI
//! (`[[server.tls.certificates]]`), and optionally client certificates required against a
//! CA (`client_ca`); [`Config::server_tls`] turns it into the listener's settings.
//! `[routes.upstream_tls]` sets how a route's `https://` upstreams are verified (`ca`,
//! default the system's roots) and the client certificate shown to them (`cert`, `key`).
//! Upstream URLs are `http://`, `https://` or `h2c://` (HTTP/2 with prior knowledge). Both
//! TLS sections, and `https://` upstreams, need the `tls` feature (on by default). Paths are
//! as written, relative ones from the working directory.
//!
//! `[rate_limit_store]` keeps every route's rate-limit budgets in Redis, shared by every
//! instance on the same Redis and `key_prefix` (it needs the `redis` feature, on by
//! default). `[admin]` is the example gateway's metrics and health listener (it needs the
//! `metrics` feature, on by default; the library only parses it). A section whose feature is
//! off is parsed and checked, then refused with [`ConfigError::MissingFeature`], which names
//! the feature to turn on, so that a
//! config never silently runs without something it asks for.

mod de;
mod error;
mod schema;

use std::error::Error as StdError;
use std::num::NonZeroUsize;
use std::path::Path;

use bytes::Bytes;

pub use self::error::ConfigError;
pub use self::schema::{
    ActiveConfig, AdminConfig, ApiKeyConfig, AuthConfig, BalanceConfig, BulkheadConfig,
    CircuitBreakerConfig, Config, HealthConfig, PassiveConfig, PolicyName, RateLimitConfig,
    RateLimitStoreConfig, RetryConfig, RouteConfig, ServerConfig, UpstreamConfig, WhenNoneConfig,
};
use crate::builder::{BuildError, Gateway, GatewayBuilder, Route};
use crate::forwarded::TrustedProxies;
use crate::route::RouteError;
use crate::upstream::PoolError;

impl Config {
    /// Parses and [validates](Config::validate) a config.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|error| ConfigError::from_toml(&error, text))?;
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." { "config".to_owned() } else { key };
            ConfigError::invalid(key, error.into_inner().message())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every value (limits, URLs, prefixes, keys and the variables they name), then
    /// refuses the sections that need a feature this build lacks. The routes are checked by
    /// the gateway builder itself ([`GatewayBuilder::check`]), whose error this maps to the
    /// key path; only what the builder cannot know (the file's own rules) is checked here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(store) = &self.rate_limit_store {
            store.validate()?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(&format!("routes[{i}]"))?;
        }
        self.with_routes(Gateway::<hyper::body::Incoming>::builder())?
            .check()
            .map_err(|error| self.locate(error))?;
        self.check_supported()
    }

    fn check_supported(&self) -> Result<(), ConfigError> {
        let sections = [
            (
                "admin",
                "metrics",
                self.admin.is_some() && !cfg!(feature = "metrics"),
            ),
            (
                "rate_limit_store",
                "redis",
                self.rate_limit_store.is_some() && !cfg!(feature = "redis"),
            ),
            (
                "server.tls",
                "tls",
                self.server.tls.is_some() && !cfg!(feature = "tls"),
            ),
        ];
        if !cfg!(feature = "tls") {
            for (i, route) in self.routes.iter().enumerate() {
                let https = route
                    .upstreams
                    .iter()
                    .any(|u| u.url.starts_with("https://"));
                if route.upstream_tls.is_some() || https {
                    return Err(ConfigError::MissingFeature {
                        key: format!("routes[{i}].upstream_tls"),
                        feature: "tls",
                    });
                }
            }
        }
        match sections.iter().find(|(_, _, missing)| *missing) {
            Some(&(key, feature, _)) => Err(ConfigError::MissingFeature {
                key: key.to_owned(),
                feature,
            }),
            None => Ok(()),
        }
    }

    /// A [`GatewayBuilder`] with this config's routes, trusted proxies, auth and shared
    /// store. Add layers, then `build()`. It expects a config that
    /// [`validate`](Config::validate) accepted, as [`from_toml_str`](Config::from_toml_str)
    /// and [`load`](Config::load) return it: the builder still checks the routes when it
    /// builds, but its error names the route, not the key path.
    pub fn gateway_builder<B>(&self) -> Result<GatewayBuilder<B>, ConfigError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        // Never a gateway without something the file asks for, validated or not.
        self.check_supported()?;
        let trusted = TrustedProxies::new(self.server.trusted_proxies.iter().copied());
        let mut builder = Gateway::builder()
            .trusted_proxies(trusted)
            .request_body_timeout(self.server.request_body_timeout);
        if let Some(auth) = &self.auth {
            builder = builder
                .auth(auth.key_set()?)
                .auth_header(auth.header.clone())
                // With client certificates required, a verified one authenticates too.
                .auth_client_certificates(
                    self.server
                        .tls
                        .as_ref()
                        .is_some_and(|tls| tls.client_ca.is_some()),
                );
        }
        #[cfg(feature = "redis")]
        if let Some(store) = &self.rate_limit_store {
            builder = builder.rate_limit_store(store.backend()?);
        }
        self.with_routes(builder)
    }

    /// The listener's TLS settings of `[server.tls]` (`None` without the section), to add
    /// hooks to and `build()` (which reads the files) for
    /// [`Server::tls`](crate::server::Server::tls).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn server_tls(&self) -> Option<crate::tls::ServerTlsBuilder> {
        let tls = self.server.tls.as_ref()?;
        let mut builder = crate::tls::ServerTls::builder(&tls.cert, &tls.key);
        for more in &tls.certificates {
            builder = builder.certificate(&more.cert, &more.key);
        }
        if let Some(ca) = &tls.client_ca {
            builder = builder.client_ca(ca);
        }
        Some(builder)
    }

    /// `builder` with this config's routes.
    fn with_routes<B>(
        &self,
        mut builder: GatewayBuilder<B>,
    ) -> Result<GatewayBuilder<B>, ConfigError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let trusted = TrustedProxies::new(self.server.trusted_proxies.iter().copied());
        for (i, route) in self.routes.iter().enumerate() {
            let upstreams = route.upstreams.iter().map(|u| (u.url.clone(), u.weight));
            let mut target = route.anonymous.iter().fold(
                Route::to_weighted(upstreams)
                    .strip_prefix(route.strip_prefix)
                    .timeout(route.timeout),
                |target, path| target.anonymous(path.clone()),
            );
            target = route.pool(&format!("routes[{i}]"), target, &trusted)?;
            #[cfg(feature = "tls")]
            if let Some(tls) = &route.upstream_tls {
                let mut settings = crate::tls::UpstreamTls::new();
                if let Some(ca) = &tls.ca {
                    settings = settings.ca(ca);
                }
                if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                    settings = settings.client_certificate(cert, key);
                }
                target = target.upstream_tls(settings);
            }
            if let Some(limit) = &route.rate_limit {
                target = target.rate_limit(limit.quota(&format!("routes[{i}]"))?);
            }
            if let Some(breaker) = &route.circuit_breaker {
                target = target
                    .circuit_breaker(breaker.trip(&format!("routes[{i}]"))?, breaker.cooldown);
            }
            if let Some(bulkhead) = &route.bulkhead {
                let max = NonZeroUsize::new(bulkhead.max_concurrent).ok_or_else(|| {
                    ConfigError::zero(format!("routes[{i}].bulkhead.max_concurrent"))
                })?;
                target = target.bulkhead(max);
            }
            if let Some(retry) = &route.retry {
                target = target
                    .retry(retry.max_retries)
                    .retry_backoff(retry.base_delay, retry.max_delay());
            }
            builder = builder.route(route.prefix.clone(), target);
        }
        Ok(builder)
    }

    /// The builder's `error`, at the key path of the route it is about.
    fn locate(&self, error: BuildError) -> ConfigError {
        // The first route with the prefix, or with `DuplicatePrefix` the second.
        let route_at = |prefix: &str, nth: usize| {
            let i = self
                .routes
                .iter()
                .enumerate()
                .filter(|(_, route)| route.prefix == prefix)
                .nth(nth)
                .map_or(0, |(i, _)| i);
            format!("routes[{i}]")
        };
        match error {
            BuildError::Route(source) => {
                let (prefix, nth) = match &source {
                    RouteError::InvalidPrefix(prefix) => (prefix.clone(), 0),
                    RouteError::DuplicatePrefix(prefix) => (prefix.clone(), 1),
                };
                ConfigError::Route {
                    key: format!("{}.prefix", route_at(&prefix, nth)),
                    source,
                }
            }
            BuildError::Upstream {
                prefix,
                index,
                source,
            } => ConfigError::Upstream {
                key: format!("{}.upstreams[{index}]", route_at(&prefix, 0)),
                source,
            },
            BuildError::Pool { prefix, source } => {
                let route = route_at(&prefix, 0);
                match source {
                    PoolError::Weight { index, weight } => ConfigError::invalid(
                        format!("{route}.upstreams[{index}].weight"),
                        format_args!("{weight} is not between 1 and 1000"),
                    ),
                    PoolError::Duplicate { index } => ConfigError::invalid(
                        format!("{route}.upstreams[{index}]"),
                        "is listed twice (give it a weight instead)",
                    ),
                    PoolError::ProbePath(path) => ConfigError::invalid(
                        format!("{route}.health.active.path"),
                        format_args!("{path:?} must be a path starting with '/'"),
                    ),
                    PoolError::ProbeZero(field) => {
                        ConfigError::zero(format!("{route}.health.active.{field}"))
                    }
                    PoolError::EjectionBounds => ConfigError::invalid(
                        format!("{route}.health.passive.max_ejection"),
                        "is less than base_ejection",
                    ),
                    source => ConfigError::invalid(format!("{route}.health"), source),
                }
            }
            #[cfg(feature = "tls")]
            BuildError::UpstreamTls { prefix, source } => {
                let route = route_at(&prefix, 0);
                let has_settings = self
                    .routes
                    .iter()
                    .find(|r| r.prefix == prefix)
                    .is_some_and(|r| r.upstream_tls.is_some());
                let key = if has_settings {
                    format!("{route}.upstream_tls")
                } else {
                    format!("{route}.upstreams")
                };
                ConfigError::invalid(key, source)
            }
            BuildError::NoUpstreams(prefix) => ConfigError::invalid(
                format!("{}.upstreams", route_at(&prefix, 0)),
                "a route needs at least one upstream",
            ),
            BuildError::ZeroTimeout(prefix) => {
                ConfigError::zero(format!("{}.timeout", route_at(&prefix, 0)))
            }
            BuildError::ZeroCooldown(prefix) => {
                ConfigError::zero(format!("{}.circuit_breaker.cooldown", route_at(&prefix, 0)))
            }
            BuildError::Anonymous {
                prefix,
                index,
                path,
            } => {
                let key = format!("{}.anonymous[{index}]", route_at(&prefix, 0));
                if path.starts_with('/') {
                    ConfigError::invalid(
                        key,
                        format_args!(
                            "{path:?} must not end with '/' (it matches on segment boundaries)"
                        ),
                    )
                } else {
                    ConfigError::invalid(key, format_args!("{path:?} must start with '/'"))
                }
            }
            BuildError::RetryBackoff { prefix, base, max } => ConfigError::invalid(
                format!("{}.retry.max_delay", route_at(&prefix, 0)),
                format_args!(
                    "{} is less than base_delay ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::OnStoreError;
    use ipnet::IpNet;
    use std::time::Duration;

    /// Every key of the format, as the README shows it.
    const FULL: &str = r#"
[server]
listen = "127.0.0.1:5050"
shutdown_grace = "30s"
trusted_proxies = []              # CIDRs whose X-Forwarded-For may name the client
header_read_timeout = "10s"       # a request head must arrive within this
idle_timeout = "60s"              # a keep-alive connection with no request in flight closes after this
request_body_timeout = "30s"      # a request body that sends nothing this long: 408

[server.tls]                      # optional: the listener speaks HTTPS (HTTP/2 and HTTP/1.1 by ALPN)
cert = "server.crt"               # PEM chain
key = "server.key"                # PEM key
client_ca = "clients.pem"         # optional: require client certificates signed by this CA
[[server.tls.certificates]]       # optional: more certificates, each chosen by SNI from its names
cert = "other.crt"
key = "other.key"

[auth]                            # optional; absent = no auth anywhere
header = "x-api-key"              # default
[[auth.keys]]
id = "alice"                      # identity: the rate-limit key and what logs show
key = "alice-secret"              # or key_env = "ALICE_KEY"

[admin]                           # optional: /metrics (Prometheus), /healthz, /readyz
listen = "127.0.0.1:9090"

[rate_limit_store]                # optional: share rate limits between instances
url = "redis://127.0.0.1:6379"
timeout = "50ms"                  # per decision
on_error = "allow"                # "allow" (fail open) or "deny" (fail closed, 503)

[[routes]]
prefix = "/api/a"                 # longest prefix wins, matched on a segment boundary
upstreams = ["http://127.0.0.1:5051"]   # several: round-robin
strip_prefix = true               # default true: /api/a/ping?x=1 -> /ping?x=1
timeout = "5s"                    # per attempt, until the response head arrives; default 30s
anonymous = ["/health"]           # sub-path prefixes (segment boundary) reachable without a key

[routes.rate_limit]               # optional: per route, per client
requests = 100
window = "1m"

[routes.bulkhead]                 # optional: per route, all clients together
max_concurrent = 64

[routes.circuit_breaker]          # optional: per route
failure_threshold = 5             # consecutive failures that open it
cooldown = "30s"

[routes.retry]                    # optional
max_retries = 2                   # extra attempts after the first
base_delay = "100ms"

[[routes]]
prefix = "/api/b"
upstreams = ["http://127.0.0.1:5052", { url = "http://127.0.0.1:5053", weight = 3 }]

[routes.balance]                  # optional
policy = "hash"                   # default "round_robin"; "least_in_flight", "weighted", "hash"
hash_key = "header:x-user-id"     # for "hash": "header:NAME", "cookie:NAME", "client_ip", "path"
when_none_healthy = "closed"      # "open": use every endpoint; "closed": 503

[routes.health.passive]           # on by default with these values
enabled = true
consecutive_failures = 5          # attempt failures in a row that eject an endpoint
base_ejection = "30s"             # the n-th ejection lasts n x base_ejection ...
max_ejection = "300s"             # ... at most this
max_ejected_percent = 50          # at most floor(pool x 50 / 100) at once (at least 1 of 2+), never the last

[routes.health.active]            # optional: background probes
path = "/health"
interval = "10s"
timeout = "2s"
healthy_threshold = 2             # passes in a row that make an endpoint healthy
unhealthy_threshold = 3           # failures in a row that make it unhealthy

[[routes]]
prefix = "/api/c"
upstreams = ["https://10.0.0.7:8443", "h2c://10.0.0.8:50051"]
[routes.upstream_tls]             # optional, for https upstreams
ca = "upstream-ca.pem"            # default: the system's roots
cert = "client.crt"               # optional client certificate (mTLS to the upstream)
key = "client.key"
"#;

    const ROUTE: &str =
        "[[routes]]\nprefix = \"/api/a\"\nupstreams = [\"http://127.0.0.1:5051\"]\n";

    /// Parses without the support check, so the unsupported sections can be inspected.
    fn parse_only(text: &str) -> Config {
        let deserializer = toml::de::Deserializer::parse(text).unwrap();
        serde_path_to_error::deserialize(deserializer).unwrap()
    }

    /// The error for `text`, checked to be one line.
    fn error(text: &str) -> String {
        let message = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(!message.contains('\n'), "not one line: {message:?}");
        assert!(!message.ends_with('.'), "trailing period: {message:?}");
        message
    }

    #[test]
    fn the_full_contract_example_parses() {
        let config = parse_only(FULL);
        assert_eq!(config.server.listen, "127.0.0.1:5050".parse().unwrap());
        let auth = config.auth.as_ref().unwrap();
        assert_eq!(auth.header, "x-api-key");
        assert_eq!(auth.keys[0].id, "alice");
        assert!(!format!("{auth:?}").contains("alice-secret"));
        assert_eq!(config.admin.as_ref().unwrap().listen.port(), 9090);
        let store = config.rate_limit_store.as_ref().unwrap();
        assert_eq!(store.timeout, Duration::from_millis(50));
        assert_eq!(store.on_error, OnStoreError::Allow);
        let route = &config.routes[0];
        assert_eq!(route.timeout, Duration::from_secs(5));
        assert_eq!(route.anonymous, ["/health"]);
        let limit = route.rate_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests, limit.window),
            (100, Duration::from_secs(60))
        );
        assert_eq!(route.bulkhead.as_ref().unwrap().max_concurrent, 64);
        let breaker = route.circuit_breaker.as_ref().unwrap();
        assert_eq!(
            (breaker.failure_threshold, breaker.cooldown),
            (Some(5), Duration::from_secs(30))
        );
        let retry = route.retry.as_ref().unwrap();
        assert_eq!(
            (retry.max_retries, retry.base_delay),
            (2, Duration::from_millis(100))
        );
        let pooled = &config.routes[1];
        assert_eq!(
            pooled
                .upstreams
                .iter()
                .map(|u| (u.url.as_str(), u.weight))
                .collect::<Vec<_>>(),
            [("http://127.0.0.1:5052", 1), ("http://127.0.0.1:5053", 3)]
        );
        let balance = pooled.balance.as_ref().unwrap();
        assert_eq!(balance.policy, PolicyName::Hash);
        assert_eq!(balance.hash_key.as_deref(), Some("header:x-user-id"));
        assert_eq!(balance.when_none_healthy, WhenNoneConfig::Closed);
        let health = pooled.health.as_ref().unwrap();
        let passive = health.passive.as_ref().unwrap();
        assert_eq!(
            (
                passive.enabled,
                passive.consecutive_failures,
                passive.max_ejected_percent
            ),
            (true, 5, 50)
        );
        assert_eq!(passive.max_ejection, Duration::from_secs(300));
        let active = health.active.as_ref().unwrap();
        assert_eq!(active.path, "/health");
        assert_eq!(
            (
                active.interval,
                active.healthy_threshold,
                active.unhealthy_threshold
            ),
            (Duration::from_secs(10), 2, 3)
        );

        let tls = config.server.tls.as_ref().unwrap();
        assert_eq!(
            (
                tls.cert.to_str(),
                tls.key.to_str(),
                tls.client_ca.as_deref()
            ),
            (
                Some("server.crt"),
                Some("server.key"),
                Some(Path::new("clients.pem"))
            )
        );
        assert_eq!(tls.certificates[0].cert, Path::new("other.crt"));
        let upstream_tls = config.routes[2].upstream_tls.as_ref().unwrap();
        assert_eq!(
            (
                upstream_tls.ca.as_deref(),
                upstream_tls.cert.as_deref(),
                upstream_tls.key.as_deref()
            ),
            (
                Some(Path::new("upstream-ca.pem")),
                Some(Path::new("client.crt")),
                Some(Path::new("client.key"))
            )
        );

        // Every value checks out; only the support check refuses it, section by section.
        // (The TLS route's files do not exist here: the TLS tests build with real ones.)
        let mut config = config;
        config.routes.truncate(2);
        let mut refused = Vec::new();
        while let Err(error) = config.validate() {
            let ConfigError::MissingFeature { key, .. } = error else {
                panic!("{error}");
            };
            match key.as_str() {
                "admin" => config.admin = None,
                "rate_limit_store" => config.rate_limit_store = None,
                "server.tls" => config.server.tls = None,
                other => panic!("unexpected {other}"),
            }
            refused.push(key);
        }
        let expected: Vec<&str> = [
            (!cfg!(feature = "metrics")).then_some("admin"),
            (!cfg!(feature = "redis")).then_some("rate_limit_store"),
            (!cfg!(feature = "tls")).then_some("server.tls"),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(refused, expected);
        // The Redis connection is made lazily, on a runtime: nothing listens on 6379 here.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        assert!(config.gateway_builder::<hyper::body::Incoming>().is_ok());
        if !cfg!(feature = "metrics") {
            assert_eq!(
                Config::from_toml_str(FULL).unwrap_err().to_string(),
                "admin: needs tower-gateway's `metrics` feature, which this build lacks"
            );
        }
    }

    #[test]
    fn rate_limit_windows_are_checked() {
        let limit = |requests: u32, window: &str| {
            format!("{ROUTE}[routes.rate_limit]\nrequests = {requests}\nwindow = \"{window}\"\n")
        };
        assert_eq!(
            error(&limit(1, "600years")),
            "routes[0].rate_limit.window: 600years is longer than the longest window, a year"
        );
        assert_eq!(
            error(&limit(10, "5ns")),
            "routes[0].rate_limit.window: 5ns is too short for 10 requests (under 1ns per request)"
        );
        assert_eq!(
            error(&limit(0, "1s")),
            "routes[0].rate_limit.requests: must be greater than zero"
        );
        assert!(Config::from_toml_str(&limit(100, "365days")).is_ok());
    }

    #[test]
    fn defaults() {
        let config = Config::from_toml_str(ROUTE).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:5050".parse().unwrap());
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
        assert!(config.server.trusted_proxies.is_empty());
        assert_eq!(
            (
                config.server.header_read_timeout,
                config.server.idle_timeout,
                config.server.request_body_timeout
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(30)
            )
        );
        let route = &config.routes[0];
        assert!(route.strip_prefix);
        assert_eq!(route.timeout, Duration::from_secs(30));
        assert!(route.anonymous.is_empty());
        assert!(route.rate_limit.is_none() && route.retry.is_none());

        let auth = parse_only("[auth]\n[[auth.keys]]\nid = \"a\"\nkey = \"k\"\n")
            .auth
            .unwrap();
        assert_eq!(auth.header, "x-api-key");
        let store = parse_only("[rate_limit_store]\nurl = \"redis://h\"\n")
            .rate_limit_store
            .unwrap();
        assert_eq!(
            (store.timeout, store.on_error),
            (Duration::from_millis(50), OnStoreError::Allow)
        );
    }

    #[test]
    fn server_values_parse() {
        let config = Config::from_toml_str(&format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\nshutdown_grace = \"1m 30s\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nheader_read_timeout = \"5s\"\n\
             idle_timeout = \"2m\"\nrequest_body_timeout = \"15s\"\n{ROUTE}"
        ))
        .unwrap();
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.server.request_body_timeout, Duration::from_secs(15));
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.server.shutdown_grace, Duration::from_secs(90));
        assert_eq!(
            config.server.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
    }

    #[test]
    fn no_retries_is_a_valid_setting() {
        let config =
            Config::from_toml_str(&format!("{ROUTE}[routes.retry]\nmax_retries = 0\n")).unwrap();
        assert_eq!(config.routes[0].retry.as_ref().unwrap().max_retries, 0);
        assert!(config.gateway_builder::<hyper::body::Incoming>().is_ok());
    }

    #[test]
    fn bad_configs_name_the_key() {
        let route = |extra: &str| format!("{ROUTE}{extra}\n");
        let cases: Vec<(String, &str)> = vec![
            ("[server]\nlisten = ".into(), "syntax error at line 2, column 10: "),
            (route("foo = 1"), "routes[0].foo: unknown field `foo`"),
            ("[sever]\n".into(), "sever: unknown field `sever`"),
            ("[[routes]]\nprefix = \"/a\"\n".into(), "routes[0]: missing field `upstreams`"),
            (route("timeout = \"5 parsecs\""), "routes[0].timeout: invalid duration \"5 parsecs\": "),
            (route("timeout = 5"), "routes[0].timeout: invalid type: integer `5`"),
            (route("timeout = \"0s\""), "routes[0].timeout: must be greater than zero"),
            (
                "[server]\nlisten = \"localhost\"\n".into(),
                "server.listen: invalid socket address \"localhost\"",
            ),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n".into(),
                "server.trusted_proxies[1]: invalid CIDR \"nope\"",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"http://h:1\", \"ftp://h\"]\n".into(),
                "routes[0].upstreams[1]: unsupported scheme",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"not a url\"]\n".into(),
                "routes[0].upstreams[0]: invalid upstream URL",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = []\n".into(),
                "routes[0].upstreams: a route needs at least one upstream",
            ),
            (
                "[[routes]]\nprefix = \"a/\"\nupstreams = [\"http://h\"]\n".into(),
                "routes[0].prefix: invalid route prefix \"a/\"",
            ),
            (
                format!("{ROUTE}{ROUTE}"),
                "routes[1].prefix: duplicate route prefix \"/api/a\"",
            ),
            (
                route("[routes.rate_limit]\nrequests = 0\nwindow = \"1m\""),
                "routes[0].rate_limit.requests: must be greater than zero",
            ),
            (
                route("[routes.rate_limit]\nrequests = 10\nwindow = \"0s\""),
                "routes[0].rate_limit.window: must be greater than zero",
            ),
            (
                route("[routes.rate_limit]\nrequests = -1\nwindow = \"1s\""),
                "routes[0].rate_limit.requests: invalid value: integer `-1`",
            ),
            (
                route("[routes.bulkhead]\nmax_concurrent = 0"),
                "routes[0].bulkhead.max_concurrent: must be greater than zero",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_threshold = 0\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.failure_threshold: must be greater than zero",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_threshold = 1\ncooldown = \"0ms\""),
                "routes[0].circuit_breaker.cooldown: must be greater than zero",
            ),
            (
                route("[routes.circuit_breaker]\ncooldown = \"1s\""),
                "routes[0].circuit_breaker: needs failure_threshold (consecutive failures) or failure_rate",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_threshold = 3\nfailure_rate = 0.5\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.failure_rate: set failure_threshold or failure_rate, not both",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_threshold = 3\nwindow = \"10s\"\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.window: only goes with failure_rate",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_rate = 1.5\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.failure_rate: rate must be greater than 0 and at most 1, got 1.5",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_rate = 0.5\nwindow = \"1ms\"\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.window: window must be at least 10ms",
            ),
            (
                route("[routes.circuit_breaker]\nfailure_rate = 0.5\nmin_calls = 0\ncooldown = \"1s\""),
                "routes[0].circuit_breaker.min_calls: must be greater than zero",
            ),
            (
                route("[routes.retry]\nmax_retries = 1\nbase_delay = \"soon\""),
                "routes[0].retry.base_delay: invalid duration \"soon\"",
            ),
            (
                route("anonymous = [\"health\"]"),
                "routes[0].anonymous[0]: \"health\" must start with '/'",
            ),
            (
                route("anonymous = [\"/health/\"]"),
                "routes[0].anonymous[0]: \"/health/\" must not end with '/'",
            ),
            (
                "[auth]\n[[auth.keys]]\nid = \"alice\"\nkey_env = \"TOWER_GATEWAY_TEST_UNSET_VAR\"\n"
                    .into(),
                "auth.keys[0].key_env: environment variable TOWER_GATEWAY_TEST_UNSET_VAR is not set",
            ),
            (
                "[auth]\n[[auth.keys]]\nid = \"alice\"\nkey = \"k\"\nkey_env = \"K\"\n".into(),
                "auth.keys[0]: set exactly one of `key` and `key_env`",
            ),
            (
                "[auth]\n[[auth.keys]]\nid = \"alice\"\n".into(),
                "auth.keys[0]: set exactly one of `key` and `key_env`",
            ),
            (
                "[auth]\n[[auth.keys]]\nid = \"alice\"\nkey = \"\"\n".into(),
                "auth.keys[0].key: the key must not be empty",
            ),
            (
                "[auth]\nheader = \"bad header\"\n".into(),
                "auth.header: invalid header name \"bad header\"",
            ),
            (
                "[rate_limit_store]\nurl = \"redis://h\"\non_error = \"maybe\"\n".into(),
                "rate_limit_store.on_error: unknown variant `maybe`",
            ),
            (
                "[rate_limit_store]\nurl = \"http://h\"\n".into(),
                "rate_limit_store.url: expected a redis:// or rediss:// URL",
            ),
            (
                "[admin]\nlisten = \"localhost:9090\"\n".into(),
                "admin.listen: invalid socket address \"localhost:9090\"",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1:9090\"\npath = \"/m\"\n".into(),
                "admin.path: unknown field `path`",
            ),
            (
                "[server]\nrequest_body_timeout = \"0s\"\n".into(),
                "server.request_body_timeout: must be greater than zero",
            ),
            (
                "[server]\nidle_timeout = \"0s\"\n".into(),
                "server.idle_timeout: must be greater than zero",
            ),
            (
                route("[routes.retry]\nmax_retries = 11"),
                "routes[0].retry.max_retries: 11 is more than 10",
            ),
            (
                route("[routes.retry]\nmax_retries = 2\nbase_delay = \"1s\"\nmax_delay = \"100ms\""),
                "routes[0].retry.max_delay: 100ms is less than base_delay (1s)",
            ),
            (
                route("[routes.retry]\nmax_retries = 2\nattempts = 3"),
                "routes[0].retry.attempts: unknown field `attempts`",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"http://h:1\", { url = \"http://h:2\", weight = 0 }]\n".into(),
                "routes[0].upstreams[1].weight: 0 is not between 1 and 1000",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [{ url = \"http://h:2\", wieght = 2 }]\n".into(),
                "routes[0].upstreams[0].wieght: unknown field `wieght`",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [7]\n".into(),
                "routes[0].upstreams[0]: invalid type: integer `7`, expected a URL string or a table",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"http://h:1\", \"http://h:1\"]\n".into(),
                "routes[0].upstreams[1]: is listed twice",
            ),
            (
                route("[routes.balance]\npolicy = \"random\""),
                "routes[0].balance.policy: unknown variant `random`",
            ),
            (
                route("[routes.balance]\npolicy = \"hash\""),
                "routes[0].balance.hash_key: policy \"hash\" needs a hash_key",
            ),
            (
                route("[routes.balance]\npolicy = \"hash\"\nhash_key = \"query:q\""),
                "routes[0].balance.hash_key: \"query:q\" is not",
            ),
            (
                route("[routes.balance]\nhash_key = \"path\""),
                "routes[0].balance.hash_key: only goes with policy = \"hash\"",
            ),
            (
                route("[routes.balance]\nwhen_none_healthy = \"maybe\""),
                "routes[0].balance.when_none_healthy: unknown variant `maybe`",
            ),
            (
                route("[routes.health.passive]\nconsecutive_failures = 0"),
                "routes[0].health.passive.consecutive_failures: must be greater than zero",
            ),
            (
                route("[routes.health.passive]\nmax_ejected_percent = 101"),
                "routes[0].health.passive.max_ejected_percent: 101 is more than 100",
            ),
            (
                route("[routes.health.passive]\nbase_ejection = \"1m\"\nmax_ejection = \"10s\""),
                "routes[0].health.passive.max_ejection: is less than base_ejection",
            ),
            (
                route("[routes.health.active]\ninterval = \"5s\""),
                "routes[0].health.active: missing field `path`",
            ),
            (
                route("[routes.health.active]\npath = \"health\""),
                "routes[0].health.active.path: \"health\" must be a path starting with '/'",
            ),
            (
                route("[routes.health.active]\npath = \"/h\"\ninterval = \"0s\""),
                "routes[0].health.active.interval: must be greater than zero",
            ),
            (
                route("[routes.health.active]\npath = \"/h\"\nhealthy_threshold = 0"),
                "routes[0].health.active.healthy_threshold: must be greater than zero",
            ),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.starts_with(expected), "{message:?} for\n{text}");
        }
    }

    #[test]
    fn syntax_errors_point_at_line_and_column() {
        let message = error("[server]\nlisten = \"127.0.0.1:1\"\nshutdown_grace = 30s\n");
        assert!(
            message.starts_with("syntax error at line 3, column 18: "),
            "{message}"
        );
        // Columns count characters, not bytes.
        let message = error("# é\n[[routes]]\nprefix = \"/é\" x\n");
        assert!(
            message.starts_with("syntax error at line 3, column 15: "),
            "{message}"
        );
    }

    #[test]
    fn a_set_key_env_variable_is_accepted() {
        // The variable every test process has.
        let text = format!(
            "[auth]\n[[auth.keys]]\nid = \"alice\"\nkey_env = \"PATH\"\n{ROUTE}anonymous = [\"/health\"]\n"
        );
        let config = Config::from_toml_str(&text).unwrap();
        let set = config.auth.as_ref().unwrap().key_set().unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(set.find(path.as_bytes()).unwrap().id(), "alice");
        assert!(
            config
                .gateway_builder::<hyper::body::Incoming>()
                .unwrap()
                .build()
                .is_ok()
        );
    }

    #[test]
    fn load_names_the_file() {
        let path = Path::new("/nonexistent/tower-gateway.toml");
        let message = Config::load(path).unwrap_err().to_string();
        assert!(
            message.starts_with("cannot read /nonexistent/tower-gateway.toml: "),
            "{message}"
        );
    }

    #[test]
    fn the_builder_gets_every_route() {
        let config = Config::from_toml_str(&format!(
            "{ROUTE}[[routes]]\nprefix = \"/b\"\nupstreams = [\"http://127.0.0.1:1/base\"]\n\
             strip_prefix = false\n"
        ))
        .unwrap();
        let gateway = config
            .gateway_builder::<hyper::body::Incoming>()
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            format!("{gateway:?}"),
            r#"Gateway { routes: ["/api/a", "/b"], .. }"#
        );
    }

    #[test]
    fn the_pool_settings_reach_the_gateway() {
        let config = Config::from_toml_str(&format!(
            "{ROUTE}[[routes]]\nprefix = \"/b\"\n\
             upstreams = [\"http://127.0.0.1:1\", {{ url = \"http://127.0.0.1:2\", weight = 3 }}]\n\
             [routes.balance]\npolicy = \"weighted\"\n"
        ))
        .unwrap();
        let gateway = config
            .gateway_builder::<hyper::body::Incoming>()
            .unwrap()
            .build()
            .unwrap();
        let pools: Vec<_> = gateway
            .pools()
            .map(|(prefix, pool)| (prefix.to_owned(), pool.status()))
            .collect();
        assert_eq!(pools[0].0, "/api/a");
        assert_eq!(pools[0].1.policy, "round_robin");
        assert_eq!(pools[1].1.policy, "weighted");
        let weights: Vec<u32> = pools[1].1.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights, [1, 3]);
        assert!(pools[1].1.endpoints.iter().all(|e| e.state == "healthy"));
    }
}
