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
//! `[rate_limit_store]` keeps every route's rate-limit budgets in Redis, shared by every
//! instance on the same Redis and `key_prefix` (it needs the `redis` feature, on by
//! default). `[admin]` is the example gateway's metrics and health listener (it needs the
//! `metrics` feature, on by default; the library only parses it). A section whose feature is
//! off is parsed and checked, then refused with [`ConfigError::MissingFeature`], which names
//! the feature to turn on, so that a
//! config never silently runs without something it asks for.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use crate::api_key::KeySet;
use crate::builder::{BuildError, DEFAULT_TIMEOUT, Gateway, GatewayBuilder, Route};
use crate::circuit_breaker::{FailureRate, FailureRateError, Trip};
use crate::forwarded::TrustedProxies;
use crate::proxy::UpstreamError;
use crate::rate_limit::{OnStoreError, Quota, QuotaError};
use crate::route::RouteError;

/// Why a config could not be read, parsed or accepted. Displays as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// The line, from 1.
        line: usize,
        /// The column in characters, from 1.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or has a bad value.
    #[error("{key}: {message}")]
    Invalid {
        /// The key path, like `routes[0].timeout`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A limit, window, cooldown or timeout is zero.
    #[error("{key}: must be greater than zero")]
    Zero {
        /// The key path.
        key: String,
    },
    /// An upstream URL is not usable.
    #[error("{key}: {source}")]
    Upstream {
        /// The key path, like `routes[0].upstreams[1]`.
        key: String,
        /// What is wrong with the URL.
        source: UpstreamError,
    },
    /// A route prefix is malformed or taken twice.
    #[error("{key}: {source}")]
    Route {
        /// The key path, like `routes[2].prefix`.
        key: String,
        /// What is wrong with the prefix.
        source: RouteError,
    },
    /// A `key_env` names an environment variable that is not set.
    #[error("{key}: environment variable {var} is not set")]
    MissingEnv {
        /// The key path, like `auth.keys[0].key_env`.
        key: String,
        /// The variable.
        var: String,
    },
    /// The section is valid, but this build of the crate lacks the cargo feature it needs.
    #[error("{key}: needs tower-gateway's `{feature}` feature, which this build lacks")]
    MissingFeature {
        /// The key path, like `rate_limit_store`.
        key: String,
        /// The cargo feature to turn on, like `redis`.
        feature: &'static str,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Invalid {
            key: key.into(),
            message: one_line(&message.to_string()),
        }
    }

    fn zero(key: impl Into<String>) -> Self {
        Self::Zero { key: key.into() }
    }

    /// A parse error of `toml`, located in `text`.
    fn from_toml(error: &toml::de::Error, text: &str) -> Self {
        let message = one_line(error.message());
        match error.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                Self::Syntax {
                    line: before.matches('\n').count() + 1,
                    column: before[line_start..].chars().count() + 1,
                    message,
                }
            }
            None => Self::invalid("config", message),
        }
    }
}

/// The name of the first flag that is set.
fn first_set<'a>(flags: &[(&'a str, bool)]) -> Option<&'a str> {
    flags.iter().find(|(_, set)| *set).map(|(name, _)| *name)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The whole config file: `[server]`, `[auth]`, `[rate_limit_store]`, `[admin]` and the
/// `[[routes]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `[server]`: where to listen and how to stop.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[auth]`: API keys; absent means no auth anywhere.
    pub auth: Option<AuthConfig>,
    /// `[admin]`: the metrics and health listener, which the example gateway serves (needs
    /// the `metrics` feature).
    pub admin: Option<AdminConfig>,
    /// `[rate_limit_store]`: rate limits shared between instances, in Redis.
    pub rate_limit_store: Option<RateLimitStoreConfig>,
    /// `[[routes]]`, matched by longest prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The address the gateway listens on (default `127.0.0.1:5050`).
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests (default 30 s).
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Networks whose `X-Forwarded-*` headers are trusted: CIDRs, or bare IPs (default none).
    #[serde(default, deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace: default_grace(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[auth]`: API-key authentication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The request header that carries the key (default `x-api-key`).
    #[serde(default = "default_auth_header", deserialize_with = "header_name")]
    pub header: HeaderName,
    /// `[[auth.keys]]`: the accepted keys.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

/// `[[auth.keys]]`: one client's key, given inline or by environment variable.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiKeyConfig {
    /// The identity: the rate-limit key and what logs show.
    pub id: String,
    /// The key itself. Exactly one of `key` and `key_env` is set.
    pub key: Option<String>,
    /// The environment variable that holds the key.
    pub key_env: Option<String>,
}

impl fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_env", &self.key_env)
            .finish()
    }
}

/// `[admin]`: the listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Its address.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

/// `[rate_limit_store]`: a Redis store that shares rate limits between instances.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitStoreConfig {
    /// `redis://` or `rediss://` URL.
    pub url: String,
    /// How long one decision may take (default 50 ms).
    #[serde(default = "default_store_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// What to do when the store fails or is too slow (default `allow`).
    #[serde(default)]
    pub on_error: OnStoreError,
    /// The first part of every key (default `tower-gateway`): gateways that must not share
    /// budgets use different prefixes on one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

/// `[[routes]]`: a path prefix and where it goes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// `/` or `/seg(/seg)*`, matched on a segment boundary.
    pub prefix: String,
    /// `http://host[:port][/base]` URLs, used round-robin.
    pub upstreams: Vec<String>,
    /// Whether the prefix is cut off before forwarding (default `true`).
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// Per attempt, until the response head arrives (default 30 s).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Sub-path prefixes (segment boundary, relative to the route prefix) reachable without a
    /// key when `[auth]` is on.
    #[serde(default)]
    pub anonymous: Vec<String>,
    /// `[routes.rate_limit]`: per client of this route.
    pub rate_limit: Option<RateLimitConfig>,
    /// `[routes.bulkhead]`: requests of this route in flight, all clients together.
    pub bulkhead: Option<BulkheadConfig>,
    /// `[routes.circuit_breaker]`: consecutive failures that open this route's circuit.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// `[routes.retry]`: retries of this route's failed `GET`, `HEAD` and `OPTIONS` requests.
    pub retry: Option<RetryConfig>,
}

/// `[routes.rate_limit]`: per route and per client.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Requests admitted per window (also the burst).
    pub requests: u32,
    /// The window.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

/// `[routes.bulkhead]`: per route, all clients together.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// Requests in flight at most.
    pub max_concurrent: usize,
}

/// `[routes.circuit_breaker]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit. Either this or `failure_rate`.
    pub failure_threshold: Option<u32>,
    /// The share of failed requests (above 0, at most 1) over `window` that opens the circuit,
    /// once `min_calls` requests were answered in it. Either this or `failure_threshold`.
    pub failure_rate: Option<f64>,
    /// The sliding window of `failure_rate`. Default 30s.
    #[serde(default, deserialize_with = "optional_duration")]
    pub window: Option<Duration>,
    /// The fewest answered requests in the window before `failure_rate` applies. Default 10.
    pub min_calls: Option<u32>,
    /// How long it stays open before one probe goes through.
    #[serde(deserialize_with = "duration")]
    pub cooldown: Duration,
}

impl CircuitBreakerConfig {
    /// The trip policy this section asks for, checked.
    fn trip(&self, key: &str) -> Result<Trip, ConfigError> {
        let key = format!("{key}.circuit_breaker");
        let rate_keys = [
            ("failure_rate", self.failure_rate.is_some()),
            ("window", self.window.is_some()),
            ("min_calls", self.min_calls.is_some()),
        ];
        match (self.failure_threshold, self.failure_rate) {
            (Some(threshold), None) => {
                if let Some(extra) = first_set(&rate_keys) {
                    return Err(ConfigError::invalid(
                        format!("{key}.{extra}"),
                        "only goes with failure_rate, not failure_threshold",
                    ));
                }
                NonZeroU32::new(threshold)
                    .map(Trip::Consecutive)
                    .ok_or_else(|| ConfigError::zero(format!("{key}.failure_threshold")))
            }
            (None, Some(rate)) => {
                let min_calls = self.min_calls.unwrap_or(10);
                let min_calls = NonZeroU32::new(min_calls)
                    .ok_or_else(|| ConfigError::zero(format!("{key}.min_calls")))?;
                let window = self.window.unwrap_or(Duration::from_secs(30));
                FailureRate::new(rate, window, min_calls)
                    .map(Trip::FailureRate)
                    .map_err(|error| {
                        let field = match error {
                            FailureRateError::RateOutOfRange(_) => "failure_rate",
                            FailureRateError::TooManyMinCalls(_) => "min_calls",
                            _ => "window",
                        };
                        ConfigError::invalid(format!("{key}.{field}"), error)
                    })
            }
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                format!("{key}.failure_rate"),
                "set failure_threshold or failure_rate, not both",
            )),
            (None, None) => Err(ConfigError::invalid(
                key,
                "needs failure_threshold (consecutive failures) or failure_rate",
            )),
        }
    }
}

/// `[routes.retry]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Extra attempts after the first (1 to 10).
    pub max_retries: u32,
    /// The ceiling of the first wait, doubled on each retry; each wait is a random time up
    /// to its ceiling. Default 25ms.
    #[serde(default = "default_base_delay", deserialize_with = "duration")]
    pub base_delay: Duration,
    /// The cap on any wait. Default ten times `base_delay`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_delay: Option<Duration>,
}

/// The most retries a route may ask for.
const MAX_RETRIES: u32 = 10;

fn default_base_delay() -> Duration {
    crate::retry::DEFAULT_BASE_DELAY
}

impl RetryConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_retries > MAX_RETRIES {
            return Err(ConfigError::invalid(
                format!("{key}.retry.max_retries"),
                format_args!("{} is more than {MAX_RETRIES}", self.max_retries),
            ));
        }
        Ok(())
    }

    /// The cap on any wait: as set, else ten times `base_delay` (the retry layer's rule).
    fn max_delay(&self) -> Duration {
        self.max_delay
            .unwrap_or_else(|| self.base_delay.saturating_mul(10))
    }
}

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
        ];
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
        let trusted = TrustedProxies::new(self.server.trusted_proxies.iter().copied());
        let mut builder = Gateway::builder().trusted_proxies(trusted);
        if let Some(auth) = &self.auth {
            builder = builder
                .auth(auth.key_set()?)
                .auth_header(auth.header.clone());
        }
        #[cfg(feature = "redis")]
        if let Some(store) = &self.rate_limit_store {
            builder = builder.rate_limit_store(store.backend()?);
        }
        self.with_routes(builder)
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
        for (i, route) in self.routes.iter().enumerate() {
            let mut target = route.anonymous.iter().fold(
                Route::to(route.upstreams.iter().cloned())
                    .strip_prefix(route.strip_prefix)
                    .timeout(route.timeout),
                |target, path| target.anonymous(path.clone()),
            );
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

impl AuthConfig {
    /// The keys, read from the config or their environment variables.
    fn key_set(&self) -> Result<KeySet, ConfigError> {
        self.keys
            .iter()
            .enumerate()
            .try_fold(KeySet::new(), |set, (i, entry)| {
                Ok(set.key(entry.id.as_str(), entry.secret(i)?))
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for (i, entry) in self.keys.iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            if entry.id.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(entry.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    format_args!("duplicate key id {:?}", entry.id),
                ));
            }
            if entry.secret(i)?.is_empty() {
                let field = if entry.key.is_some() {
                    "key"
                } else {
                    "key_env"
                };
                return Err(ConfigError::invalid(
                    format!("{key}.{field}"),
                    "the key must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl ApiKeyConfig {
    /// The key of `auth.keys[i]`: inline, or read from its environment variable.
    fn secret(&self, i: usize) -> Result<String, ConfigError> {
        let key = format!("auth.keys[{i}]");
        match (&self.key, &self.key_env) {
            (Some(secret), None) => Ok(secret.clone()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(secret) => Ok(secret),
                Err(std::env::VarError::NotPresent) => Err(ConfigError::MissingEnv {
                    key: format!("{key}.key_env"),
                    var: var.clone(),
                }),
                Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::invalid(
                    format!("{key}.key_env"),
                    format_args!("environment variable {var} is not valid unicode"),
                )),
            },
            _ => Err(ConfigError::invalid(
                key,
                "set exactly one of `key` and `key_env`",
            )),
        }
    }
}

impl RateLimitStoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !["redis://", "rediss://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "rate_limit_store.url",
                format_args!("expected a redis:// or rediss:// URL, got {:?}", self.url),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::zero("rate_limit_store.timeout"));
        }
        if self.key_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "rate_limit_store.key_prefix",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The Redis backend this section describes (connected lazily: Redis may be down).
    /// Call it inside a tokio runtime.
    #[cfg(feature = "redis")]
    pub fn backend(&self) -> Result<crate::rate_limit::redis::RedisBackend, ConfigError> {
        use crate::rate_limit::redis::RedisBackend;
        use crate::rate_limit::redis::RedisStoreError;
        let on_error = self.on_error;
        RedisBackend::builder(self.url.as_str())
            .timeout(self.timeout)
            .on_error(on_error)
            .key_prefix(self.key_prefix.as_str())
            .connect()
            .map_err(|error| match error {
                RedisStoreError::Url { source, .. } => {
                    ConfigError::invalid("rate_limit_store.url", source)
                }
                other => ConfigError::invalid("rate_limit_store", other),
            })
    }
}

impl RateLimitConfig {
    /// The quota, or what is wrong with it (`key` is the route's key path).
    fn quota(&self, key: &str) -> Result<Quota, ConfigError> {
        Quota::new(self.requests, self.window).map_err(|error| match error {
            QuotaError::ZeroRequests => ConfigError::zero(format!("{key}.rate_limit.requests")),
            QuotaError::WindowTooLong => ConfigError::invalid(
                format!("{key}.rate_limit.window"),
                format_args!(
                    "{} is longer than the longest window, a year",
                    humantime::format_duration(self.window)
                ),
            ),
            _ => ConfigError::invalid(
                format!("{key}.rate_limit.window"),
                format_args!(
                    "{} is too short for {} requests (under 1ns per request)",
                    humantime::format_duration(self.window),
                    self.requests
                ),
            ),
        })
    }
}

impl RouteConfig {
    /// The file's own rules for a route; the gateway builder checks the rest
    /// ([`Config::validate`]).
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let zero = [
            (
                "rate_limit.window",
                self.rate_limit.as_ref().is_some_and(|r| r.window.is_zero()),
            ),
            (
                "retry.max_retries",
                self.retry.as_ref().is_some_and(|r| r.max_retries == 0),
            ),
        ];
        if let Some(field) = first_set(&zero) {
            return Err(ConfigError::zero(format!("{key}.{field}")));
        }
        if let Some(retry) = &self.retry {
            retry.validate(key)?;
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5050))
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_store_timeout() -> Duration {
    crate::rate_limit::SHARED_TIMEOUT
}

fn default_key_prefix() -> String {
    crate::rate_limit::SHARED_KEY_PREFIX.to_owned()
}

fn default_auth_header() -> HeaderName {
    HeaderName::from_static("x-api-key")
}

fn yes() -> bool {
    true
}

/// Deserializes a string with `parse`, naming `what` and the value when it fails.
fn parse_str<'de, D, T, E>(
    deserializer: D,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(|error| D::Error::custom(format_args!("invalid {what} {text:?}: {error}")))
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    parse_str(deserializer, "socket address", SocketAddr::from_str)
}

fn header_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HeaderName, D::Error> {
    parse_str(deserializer, "header name", HeaderName::from_str)
}

/// A CIDR, or a bare IP meaning just that address.
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_str(deserializer, "CIDR", |text| {
            IpNet::from_str(text)
                .or_else(|error| IpAddr::from_str(text).map(IpNet::from).map_err(|_| error))
        })
        .map(Cidr)
    }
}

fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    // Element by element, so that an error names its index.
    let nets = Vec::<Cidr>::deserialize(deserializer)?;
    Ok(nets.into_iter().map(|Cidr(net)| net).collect())
}

/// A duration in humantime form: `"250ms"`, `"5s"`, `"1m 30s"`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parse_str(deserializer, "duration", humantime::parse_duration)
}

/// An optional [`duration`] (absent when the key is).
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the format, as the README shows it.
    const FULL: &str = r#"
[server]
listen = "127.0.0.1:5050"
shutdown_grace = "30s"
trusted_proxies = []              # CIDRs whose X-Forwarded-For may name the client

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

        // Every value checks out; only the support check refuses it, section by section.
        let mut config = config;
        let mut refused = Vec::new();
        while let Err(error) = config.validate() {
            let ConfigError::MissingFeature { key, .. } = error else {
                panic!("{error}");
            };
            match key.as_str() {
                "admin" => config.admin = None,
                "rate_limit_store" => config.rate_limit_store = None,
                other => panic!("unexpected {other}"),
            }
            refused.push(key);
        }
        let expected: Vec<&str> = [
            (!cfg!(feature = "metrics")).then_some("admin"),
            (!cfg!(feature = "redis")).then_some("rate_limit_store"),
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
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n{ROUTE}"
        ))
        .unwrap();
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
                "[[routes]]\nprefix = \"/a\"\nupstreams = [\"http://h:1\", \"https://h\"]\n".into(),
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
                route("[routes.retry]\nmax_retries = 0"),
                "routes[0].retry.max_retries: must be greater than zero",
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
}
