//! The format's tables, one type each, with the checks and conversions that only the file
//! knows (the gateway builder checks the routes themselves).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use super::de::{cidrs, duration, header_name, optional_duration, socket_addr};
use super::error::{ConfigError, first_set};
use crate::api_key::KeySet;
use crate::builder::DEFAULT_TIMEOUT;
use crate::builder::Route;
use crate::circuit_breaker::{FailureRate, FailureRateError, Trip};
use crate::forwarded::TrustedProxies;
use crate::rate_limit::{OnStoreError, Quota, QuotaError};
use crate::upstream::{
    ActiveHealth, HashKey, LeastInFlight, PassiveHealth, Policy, WhenNoneHealthy,
};

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
    /// How long a client may take to send a whole request head (default 10 s); then the
    /// connection is closed.
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request in flight before it is
    /// closed (default 60 s).
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long a request body may send nothing while the gateway waits for it, before the
    /// response head (default 30 s); then `408`, the client's fault.
    #[serde(
        default = "default_request_body_timeout",
        deserialize_with = "duration"
    )]
    pub request_body_timeout: Duration,
    /// `[server.tls]`: the listener speaks HTTPS (needs the `tls` feature).
    pub tls: Option<ServerTlsConfig>,
}

/// `[server.tls]`: the listener's certificate and, optionally, more certificates chosen by
/// SNI and a CA that client certificates must be signed by. Paths are as given (relative
/// ones from the working directory). The files are reloaded on SIGHUP and when they change.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerTlsConfig {
    /// The PEM certificate chain served by default.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// Require client certificates signed by the CA certificates in this PEM file (mTLS);
    /// a verified certificate's common name is the client's identity.
    pub client_ca: Option<PathBuf>,
    /// `[[server.tls.certificates]]`: more certificates, each served to clients whose SNI
    /// names one of its DNS names.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
}

/// One of `[[server.tls.certificates]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CertificateConfig {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
}

/// `[routes.upstream_tls]`: how the route's `https://` upstreams are verified, and the
/// client certificate shown to them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamTlsConfig {
    /// Verify upstreams against the CA certificates in this PEM file (default: the
    /// system's roots).
    pub ca: Option<PathBuf>,
    /// A PEM client certificate chain for upstreams that ask for one (with `key`).
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    pub key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace: default_grace(),
            trusted_proxies: Vec::new(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            request_body_timeout: default_request_body_timeout(),
            tls: None,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let zero = [
            ("header_read_timeout", self.header_read_timeout.is_zero()),
            ("idle_timeout", self.idle_timeout.is_zero()),
            ("request_body_timeout", self.request_body_timeout.is_zero()),
        ];
        match first_set(&zero) {
            Some(field) => Err(ConfigError::zero(format!("server.{field}"))),
            None => Ok(()),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    crate::server::DEFAULT_HEADER_READ_TIMEOUT
}

fn default_idle_timeout() -> Duration {
    crate::server::DEFAULT_IDLE_TIMEOUT
}

fn default_request_body_timeout() -> Duration {
    crate::proxy::DEFAULT_REQUEST_BODY_TIMEOUT
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
    /// The pool: `http://host[:port][/base]` URLs, or `{ url = "...", weight = 3 }` tables
    /// (weight 1 to 1000, default 1).
    pub upstreams: Vec<UpstreamConfig>,
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
    /// `[routes.balance]`: how the pool shares the route's requests.
    pub balance: Option<BalanceConfig>,
    /// `[routes.health]`: passive and active health of the pool's endpoints.
    pub health: Option<HealthConfig>,
    /// `[routes.upstream_tls]`: how `https://` upstreams are verified (needs the `tls`
    /// feature).
    pub upstream_tls: Option<UpstreamTlsConfig>,
}

/// One of a route's `upstreams`: a URL string, or a table with a weight.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// `http://host[:port][/base]`.
    pub url: String,
    /// 1 to 1000 (default 1).
    pub weight: u32,
}

impl<'de> Deserialize<'de> for UpstreamConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "one")]
            weight: u32,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UpstreamConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a table { url = \"...\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Self::Value, E> {
                Ok(UpstreamConfig {
                    url: url.to_owned(),
                    weight: 1,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(UpstreamConfig {
                    url: table.url,
                    weight: table.weight,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn one() -> u32 {
    1
}

/// `[routes.balance]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BalanceConfig {
    /// `round_robin` (default), `least_in_flight`, `weighted` or `hash`.
    #[serde(default)]
    pub policy: PolicyName,
    /// For `hash`: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
    pub hash_key: Option<String>,
    /// `open` (default: use every endpoint) or `closed` (503) when none is usable.
    #[serde(default)]
    pub when_none_healthy: WhenNoneConfig,
}

/// `[routes.balance] policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyName {
    /// The usable endpoints in turn.
    #[default]
    RoundRobin,
    /// The less loaded of two random endpoints.
    LeastInFlight,
    /// Smooth weighted round robin.
    Weighted,
    /// Consistent hashing on `hash_key`.
    Hash,
}

/// `[routes.balance] when_none_healthy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WhenNoneConfig {
    /// Use every endpoint as if healthy.
    #[default]
    Open,
    /// Answer 503.
    Closed,
}

/// `[routes.health]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `[routes.health.passive]`: outlier ejection (on by default).
    pub passive: Option<PassiveConfig>,
    /// `[routes.health.active]`: background probes (off unless present).
    pub active: Option<ActiveConfig>,
}

/// `[routes.health.passive]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PassiveConfig {
    /// Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Attempt failures in a row that eject an endpoint (default 5).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The n-th ejection lasts n times this (default 30s) ...
    #[serde(default = "default_base_ejection", deserialize_with = "duration")]
    pub base_ejection: Duration,
    /// ... at most this (default 300s).
    #[serde(default = "default_max_ejection", deserialize_with = "duration")]
    pub max_ejection: Duration,
    /// At most this share of the pool out at once, in percent (default 50; at least one of
    /// two or more, never the last).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u8,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejected_percent() -> u8 {
    50
}

/// `[routes.health.active]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ActiveConfig {
    /// The probed path, starting with `/`.
    pub path: String,
    /// Between probes (default 10s).
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// A probe's limit (default 2s).
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Passes in a row that make an endpoint healthy (default 2).
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that make it unhealthy (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl RouteConfig {
    /// The route's pool settings on `route`, checked: key paths under `key`.
    pub(super) fn pool<B>(
        &self,
        key: &str,
        mut route: Route<B>,
        trusted: &TrustedProxies,
    ) -> Result<Route<B>, ConfigError> {
        if let Some(balance) = &self.balance {
            let key = format!("{key}.balance");
            let policy = match (balance.policy, &balance.hash_key) {
                (PolicyName::Hash, None) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.hash_key"),
                        "policy \"hash\" needs a hash_key",
                    ));
                }
                (PolicyName::Hash, Some(spec)) => {
                    let hash_key = HashKey::parse(spec).ok_or_else(|| {
                        ConfigError::invalid(
                            format!("{key}.hash_key"),
                            format_args!(
                                "{spec:?} is not \"header:NAME\", \"cookie:NAME\", \"client_ip\" or \"path\""
                            ),
                        )
                    })?;
                    // The client's address as the rate limiter takes it: through the
                    // server's trusted proxies.
                    Policy::Hash(match hash_key {
                        HashKey::ClientIp(_) => HashKey::ClientIp(trusted.clone()),
                        other => other,
                    })
                }
                (_, Some(_)) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.hash_key"),
                        "only goes with policy = \"hash\"",
                    ));
                }
                (PolicyName::RoundRobin, None) => Policy::RoundRobin,
                (PolicyName::LeastInFlight, None) => Policy::LeastInFlight(LeastInFlight::new()),
                (PolicyName::Weighted, None) => Policy::Weighted,
            };
            route = route
                .balance(policy)
                .when_none_healthy(match balance.when_none_healthy {
                    WhenNoneConfig::Open => WhenNoneHealthy::Open,
                    WhenNoneConfig::Closed => WhenNoneHealthy::Closed,
                });
        }
        let health = self.health.clone().unwrap_or_default();
        if let Some(passive) = &health.passive {
            let key = format!("{key}.health.passive");
            let zero = [
                ("consecutive_failures", passive.consecutive_failures == 0),
                ("base_ejection", passive.base_ejection.is_zero()),
                ("max_ejection", passive.max_ejection.is_zero()),
            ];
            if let Some(field) = first_set(&zero) {
                return Err(ConfigError::zero(format!("{key}.{field}")));
            }
            if passive.max_ejected_percent > 100 {
                return Err(ConfigError::invalid(
                    format!("{key}.max_ejected_percent"),
                    format_args!("{} is more than 100", passive.max_ejected_percent),
                ));
            }
            // Checked here too, not only by the builder: a section with `enabled = false`
            // never reaches it, and the file's keys are checked all the same.
            if passive.max_ejection < passive.base_ejection {
                return Err(ConfigError::invalid(
                    format!("{key}.max_ejection"),
                    "is less than base_ejection",
                ));
            }
            route = route.passive_health(passive.enabled.then(|| {
                PassiveHealth::new()
                    .consecutive_failures(passive.consecutive_failures)
                    .base_ejection(passive.base_ejection)
                    .max_ejection(passive.max_ejection)
                    .max_ejected_percent(passive.max_ejected_percent)
            }));
        }
        if let Some(active) = &health.active {
            // The thresholds are the file's rule (the library takes a zero as one); the path,
            // interval and timeout the builder checks, and `locate` names the key.
            let key = format!("{key}.health.active");
            let zero = [
                ("healthy_threshold", active.healthy_threshold == 0),
                ("unhealthy_threshold", active.unhealthy_threshold == 0),
            ];
            if let Some(field) = first_set(&zero) {
                return Err(ConfigError::zero(format!("{key}.{field}")));
            }
            route = route.active_health(
                ActiveHealth::new(active.path.clone())
                    .interval(active.interval)
                    .timeout(active.timeout)
                    .healthy_threshold(active.healthy_threshold)
                    .unhealthy_threshold(active.unhealthy_threshold),
            );
        }
        Ok(route)
    }
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
    pub(super) fn trip(&self, key: &str) -> Result<Trip, ConfigError> {
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
    /// Extra attempts after the first (0 to 10; 0 is no retry).
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_retries > MAX_RETRIES {
            return Err(ConfigError::invalid(
                format!("{key}.retry.max_retries"),
                format_args!("{} is more than {MAX_RETRIES}", self.max_retries),
            ));
        }
        Ok(())
    }

    /// The cap on any wait: as set, else ten times `base_delay` (the retry layer's rule).
    pub(super) fn max_delay(&self) -> Duration {
        self.max_delay
            .unwrap_or_else(|| self.base_delay.saturating_mul(10))
    }
}

impl AuthConfig {
    /// The keys, read from the config or their environment variables.
    pub(super) fn key_set(&self) -> Result<KeySet, ConfigError> {
        self.keys
            .iter()
            .enumerate()
            .try_fold(KeySet::new(), |set, (i, entry)| {
                Ok(set.key(entry.id.as_str(), entry.secret(i)?))
            })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
            entry.secret(i)?;
        }
        Ok(())
    }
}

impl ApiKeyConfig {
    /// The key of `auth.keys[i]`: inline, or read from its environment variable.
    /// Never empty: an empty key would be a credential anyone can send.
    pub(super) fn secret(&self, i: usize) -> Result<String, ConfigError> {
        let key = format!("auth.keys[{i}]");
        let secret = match (&self.key, &self.key_env) {
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
                key.as_str(),
                "set exactly one of `key` and `key_env`",
            )),
        }?;
        if secret.is_empty() {
            let field = if self.key.is_some() { "key" } else { "key_env" };
            return Err(ConfigError::invalid(
                format!("{key}.{field}"),
                "the key must not be empty",
            ));
        }
        Ok(secret)
    }
}

impl RateLimitStoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
    pub(super) fn quota(&self, key: &str) -> Result<Quota, ConfigError> {
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let zero = [(
            "rate_limit.window",
            self.rate_limit.as_ref().is_some_and(|r| r.window.is_zero()),
        )];
        if let Some(field) = first_set(&zero) {
            return Err(ConfigError::zero(format!("{key}.{field}")));
        }
        if let Some(retry) = &self.retry {
            retry.validate(key)?;
        }
        if let Some(tls) = &self.upstream_tls {
            match (&tls.cert, &tls.key) {
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.upstream_tls.key"),
                        "is required with cert",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.upstream_tls.cert"),
                        "is required with key",
                    ));
                }
                _ => {}
            }
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
