//! Rate limits shared by several gateway instances: [`RedisStore`], the same GCRA as the
//! in-process [`LocalStore`], decided atomically inside Redis.
//!
//! - **One decision, one script.** Each request runs one Lua script on the key's Redis
//!   node: it reads the key's theoretical arrival time (TAT), decides on the server's clock
//!   (`TIME`, so instances with skewed clocks still share one budget), and writes the new
//!   TAT with an expiry of the time until the budget is whole again. Redis runs a script
//!   alone, so concurrent instances never race on a read-modify-write, and idle keys
//!   expire on their own.
//! - **One connection per [`RedisBackend`]**: redis-rs's multiplexed `ConnectionManager`,
//!   which pipelines concurrent decisions over one socket and reconnects by itself.
//!   Every route's store made from one backend shares it.
//! - **Keys** are `<prefix>:<namespace>:<key>`: the prefix is the backend's
//!   ([`key_prefix`](RedisBackendBuilder::key_prefix), default `tower-gateway`), the
//!   namespace the store's (the gateway uses the route prefix), and the key the request's,
//!   written by [`StoreKey`]. A request without a key counts under `<prefix>:<namespace>:-`.
//! - **When Redis fails** (an error, or no answer within
//!   [`timeout`](RedisBackendBuilder::timeout), default 50 ms), the request is decided by
//!   [`OnStoreError`]: admitted (the default), refused with `503`, or decided by an
//!   in-process [`LocalStore`] with the same quota. After a failure the store stops asking
//!   Redis and decides by that policy at once, except for one probe request every
//!   [`recheck`](RedisBackendBuilder::recheck) (default 250 ms), so a dead or stalled Redis
//!   costs no request more than the timeout, and Redis coming back is picked up within the
//!   recheck interval, with no restart. The first failure and the recovery are logged
//!   (`warn` and `info`); [`RedisBackend::stats`] counts them.
//!
//! Limits: the budget is exact while Redis answers; while it does not, each instance
//! decides alone. The decision's clock has microsecond resolution, so a per-key rate above
//! about a million requests a second is rounded. Redis Cluster, Sentinel and TLS
//! (`rediss://`) are not supported yet: use one Redis server (with a replica for failover
//! behind a stable address).
//!
//! # Example
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_gateway::rate_limit::redis::RedisBackend;
//! use tower_gateway::rate_limit::{ClientId, ClientKey, OnStoreError, Quota, RateLimitLayer};
//!
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .timeout(Duration::from_millis(50))
//!     .on_error(OnStoreError::Local)
//!     .connect()?; // lazy: the gateway starts even while Redis is down
//! let quota = Quota::new(100, Duration::from_secs(60))?;
//! let layer = RateLimitLayer::with_store(ClientKey::new(), redis.store::<ClientId>("api", quota));
//! # let _ = layer;
//! # Ok(()) }
//! ```

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client as RedisClient, Script};

use super::Quota;
use super::key::StoreKey;
use super::local::LocalStore;
use super::store::{BoxDecision, Check, Decision, RateLimitStore};

/// The GCRA, run atomically by Redis. Time is in microseconds since 2023-11-14 (Unix time
/// 1,700,000,000 s), so a TAT keeps sub-microsecond precision in Lua's doubles.
///
/// KEYS[1]: the key's TAT. ARGV[1]: the emission interval `T` in microseconds (may be
/// fractional). ARGV[2]: the burst `b`. Returns `{1, remaining, reset}` when admitted,
/// `{0, retry_after, reset}` when not; times in whole microseconds, rounded up.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + period - period * tonumber(ARGV[2])
if now < allow_at then
  return {0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
local next_tat = tat + period
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX',
  math.max(1, math.ceil((next_tat - now) / 1000)))
return {1, math.floor((now - allow_at) / period), math.ceil(next_tat - now)}
";

/// The default per-decision timeout: 50 ms.
pub const DEFAULT_TIMEOUT: Duration = super::SHARED_TIMEOUT;

/// The default wait between probes of a Redis that failed: 250 ms.
pub const DEFAULT_RECHECK: Duration = Duration::from_millis(250);

/// The shortest time allowed for making a connection (and for a [`RedisBackend::ping`],
/// which may have to make one), however short the per-decision timeout.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// The default key prefix: `tower-gateway`.
pub const DEFAULT_KEY_PREFIX: &str = super::SHARED_KEY_PREFIX;

use super::OnStoreError;

/// Why a [`RedisBackend`] cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL is not one redis-rs accepts (or needs a feature this build lacks, like TLS).
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What redis-rs said.
        #[source]
        source: redis::RedisError,
    },
    /// `connect` was called outside a tokio runtime: the connection lives on one.
    #[error("a Redis rate-limit store must be made inside a tokio runtime")]
    NoRuntime,
    /// Redis answered with an error, or not at all (from [`RedisBackend::ping`]).
    #[error("Redis at {url} did not answer: {message}")]
    Unreachable {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Configures a [`RedisBackend`]; [`connect`](Self::connect) makes it.
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisBackendBuilder {
    url: String,
    timeout: Duration,
    recheck: Duration,
    on_error: OnStoreError,
    key_prefix: String,
}

impl RedisBackendBuilder {
    /// The longest one decision may take, connecting included (default
    /// [`DEFAULT_TIMEOUT`]); past it the request is decided by [`on_error`](Self::on_error).
    /// A zero timeout is taken as one millisecond.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// What to decide when Redis fails or is too slow (default [`OnStoreError::Allow`]).
    pub fn on_error(mut self, on_error: OnStoreError) -> Self {
        self.on_error = on_error;
        self
    }

    /// The first part of every key (default [`DEFAULT_KEY_PREFIX`]): gateways that should
    /// not share budgets use different prefixes on one Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long after a failure the store asks Redis again (one probe request; default
    /// [`DEFAULT_RECHECK`]). Until then, requests are decided by the
    /// [`on_error`](Self::on_error) policy at once.
    pub fn recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// Makes the backend. The connection is made lazily, on the first decision, so a Redis
    /// that is down does not stop the gateway from starting (see [`RedisBackend::ping`]).
    ///
    /// Fails on a URL redis-rs does not accept, and outside a tokio runtime.
    pub fn connect(self) -> Result<RedisBackend, RedisStoreError> {
        let shown = redact(&self.url);
        let client =
            RedisClient::open(self.url.as_str()).map_err(|source| RedisStoreError::Url {
                url: shown.clone(),
                source,
            })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisStoreError::NoRuntime);
        }
        // The manager's own retries are few and quick: the store's timeout and recheck
        // bound how long a request waits, and the next probe reconnects.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout.max(MIN_CONNECT_TIMEOUT)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|source| {
            RedisStoreError::Url {
                url: shown.clone(),
                source,
            }
        })?;
        Ok(RedisBackend {
            inner: Arc::new(Backend {
                conn,
                script: Script::new(GCRA),
                timeout: self.timeout,
                recheck_ms: u64::try_from(self.recheck.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                on_error: self.on_error,
                prefix: escape(&self.key_prefix),
                url: shown,
                health: Health::default(),
            }),
        })
    }
}

/// A connection to one Redis server that [`RedisStore`]s decide on. Cheap to clone: clones
/// share the connection and its health.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Backend>,
}

struct Backend {
    conn: ConnectionManager,
    script: Script,
    timeout: Duration,
    recheck_ms: u64,
    on_error: OnStoreError,
    prefix: String,
    url: String,
    health: Health,
}

impl RedisBackend {
    /// A builder for the Redis server at `url` (`redis://[user:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            recheck: DEFAULT_RECHECK,
            on_error: OnStoreError::default(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// A store enforcing `quota` on this Redis, under `namespace` (a route's name, say):
    /// stores with the same prefix and namespace share their budgets, in this instance and
    /// every other.
    pub fn store<K>(&self, namespace: &str, quota: Quota) -> RedisStore<K>
    where
        K: StoreKey + Hash + Eq + Clone + Send + Sync + 'static,
    {
        let mut head = Vec::with_capacity(self.inner.prefix.len() + namespace.len() + 2);
        head.extend_from_slice(self.inner.prefix.as_bytes());
        head.push(b':');
        head.extend_from_slice(escape(namespace).as_bytes());
        head.push(b':');
        let period_micros = quota.period().as_nanos() as f64 / 1000.0;
        RedisStore {
            backend: Arc::clone(&self.inner),
            quota,
            head: head.into(),
            period: Bytes::from(format!("{period_micros}")),
            burst: Bytes::from(quota.requests().to_string()),
            local: (self.inner.on_error == OnStoreError::Local)
                .then(|| Arc::new(LocalStore::new(quota))),
            _key: PhantomData,
        }
    }

    /// Asks Redis for a `PING` within the timeout: for a readiness check, or to log at
    /// startup that Redis is not there yet. Stores keep working either way.
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let mut conn = self.inner.conn.clone();
        let wait = self.inner.timeout.max(MIN_CONNECT_TIMEOUT);
        let reply =
            tokio::time::timeout(wait, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(self.unreachable(error.to_string())),
            Err(_) => Err(self.unreachable(format!("no answer within {wait:?}"))),
        }
    }

    fn unreachable(&self, message: String) -> RedisStoreError {
        RedisStoreError::Unreachable {
            url: self.inner.url.clone(),
            message,
        }
    }

    /// Counts of decisions, failures and fallbacks since the backend was made, over every
    /// store made from it.
    pub fn stats(&self) -> StoreStats {
        let health = &self.inner.health;
        StoreStats {
            decisions: health.decisions.load(Ordering::Relaxed),
            errors: health.errors.load(Ordering::Relaxed),
            fallbacks: health.fallbacks.load(Ordering::Relaxed),
            healthy: health.next_probe.load(Ordering::Relaxed) == 0,
        }
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.url)
            .field("timeout", &self.inner.timeout)
            .field("on_error", &self.inner.on_error)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// What a [`RedisBackend`] has done, from [`RedisBackend::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Decisions Redis made.
    pub decisions: u64,
    /// Calls that failed or timed out.
    pub errors: u64,
    /// Requests decided by the [`OnStoreError`] policy instead of Redis.
    pub fallbacks: u64,
    /// Whether the last call to Redis succeeded (or none was made yet).
    pub healthy: bool,
}

/// Whether Redis is asked, and the counts behind [`StoreStats`].
struct Health {
    start: Instant,
    /// `0` while healthy; after a failure, the time (in milliseconds since `start`, plus
    /// one) from which the next request probes Redis.
    next_probe: AtomicU64,
    decisions: AtomicU64,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            next_probe: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// Whether this request may ask Redis: always while healthy; after a failure, one
    /// request per recheck interval (the probe).
    fn may_ask(&self, recheck_ms: u64) -> bool {
        let next = self.next_probe.load(Ordering::Relaxed);
        if next == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now.saturating_add(recheck_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self, url: &str) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if self.next_probe.load(Ordering::Relaxed) != 0
            && self.next_probe.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!(
                target: "tower_gateway::rate_limit",
                url,
                "the rate-limit store answers again; shared limits are back"
            );
        }
    }

    fn failed(&self, backend: &Backend, why: &dyn fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let next = self.now_ms().saturating_add(backend.recheck_ms);
        if self.next_probe.swap(next, Ordering::Relaxed) == 0 {
            tracing::warn!(
                target: "tower_gateway::rate_limit",
                url = backend.url.as_str(),
                policy = ?backend.on_error,
                "the rate-limit store failed ({why}); deciding by the policy until it answers"
            );
        }
    }
}

/// A [`RateLimitStore`] in Redis, shared by every gateway instance that uses the same
/// Redis, key prefix and namespace. Made by [`RedisBackend::store`]; see the
/// [module docs](self).
pub struct RedisStore<K: Hash + Eq + Clone> {
    backend: Arc<Backend>,
    quota: Quota,
    /// `<prefix>:<namespace>:`
    head: Arc<[u8]>,
    /// The emission interval in microseconds, as the script's argument.
    period: Bytes,
    /// The burst, as the script's argument.
    burst: Bytes,
    /// The in-process store for [`OnStoreError::Local`].
    local: Option<Arc<LocalStore<K>>>,
    _key: PhantomData<fn(&K)>,
}

impl<K: Hash + Eq + Clone> fmt::Debug for RedisStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("quota", &self.quota)
            .field("keys", &String::from_utf8_lossy(&self.head))
            .field("on_error", &self.backend.on_error)
            .finish_non_exhaustive()
    }
}

impl<K> RedisStore<K>
where
    K: StoreKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    /// The Redis key `key` counts under.
    pub fn key_name(&self, key: Option<&K>) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.head.len() + 24);
        name.extend_from_slice(&self.head);
        match key {
            Some(key) => key.write_key(&mut name),
            None => name.push(b'-'),
        }
        name
    }
}

impl<K> RateLimitStore<K> for RedisStore<K>
where
    K: StoreKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = BoxDecision;

    fn quota(&self) -> Quota {
        self.quota
    }

    fn check(&self, key: Option<&K>, usage: bool) -> Check<Self::Future> {
        let backend = &self.backend;
        if !backend.health.may_ask(backend.recheck_ms) {
            return Check::Ready(fallback(backend, self.local.as_deref(), key, usage));
        }
        let name = self.key_name(key);
        let backend = Arc::clone(backend);
        let period = self.period.clone();
        let burst = self.burst.clone();
        let local = self.local.clone();
        let key = local.as_ref().and(key.cloned());
        Check::Pending(Box::pin(async move {
            let mut conn = backend.conn.clone();
            let mut invocation = backend.script.key(name);
            invocation.arg(&period[..]).arg(&burst[..]);
            let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
            match tokio::time::timeout(backend.timeout, call).await {
                Ok(Ok((admitted, a, reset))) => {
                    backend.health.succeeded(&backend.url);
                    let reset = Duration::from_micros(reset.max(0).unsigned_abs());
                    if admitted == 1 {
                        Decision::Allow {
                            remaining: u32::try_from(a.max(0)).unwrap_or(u32::MAX),
                            reset,
                        }
                    } else {
                        Decision::Deny {
                            retry_after: Duration::from_micros(a.max(0).unsigned_abs()),
                            reset,
                        }
                    }
                }
                Ok(Err(error)) => {
                    backend.health.failed(&backend, &error);
                    fallback(&backend, local.as_deref(), key.as_ref(), usage)
                }
                Err(_) => {
                    backend.health.failed(
                        &backend,
                        &format_args!("no answer within {:?}", backend.timeout),
                    );
                    fallback(&backend, local.as_deref(), key.as_ref(), usage)
                }
            }
        }))
    }
}

/// The decision when Redis cannot make it, by the backend's [`OnStoreError`].
fn fallback<K>(
    backend: &Backend,
    local: Option<&LocalStore<K>>,
    key: Option<&K>,
    usage: bool,
) -> Decision
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    backend.health.fallbacks.fetch_add(1, Ordering::Relaxed);
    match (backend.on_error, local) {
        (OnStoreError::Deny, _) => Decision::Unavailable,
        (OnStoreError::Local, Some(local)) => local.decide(key, usage),
        _ => Decision::Allow {
            remaining: 0,
            reset: Duration::ZERO,
        },
    }
}

/// Escapes `%` and `:` so that a prefix or namespace cannot run into the next part of a
/// key name.
fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

/// `url` with its password (if any) replaced by `***`, for errors and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::Identity;
    use crate::rate_limit::ClientId;

    #[test]
    fn key_names_are_unambiguous() {
        assert_eq!(escape("/api:a%"), "/api%3Aa%25");
        let mut out = Vec::new();
        ClientId::Identity(Identity::new("alice")).write_key(&mut out);
        assert_eq!(out, b"id:alice");
        out.clear();
        ClientId::Ip("2001:db8::1".parse().unwrap()).write_key(&mut out);
        assert_eq!(out, b"ip:2001:db8::1");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let error = RedisBackend::builder("redis://127.0.0.1:1")
            .connect()
            .unwrap_err();
        assert!(matches!(error, RedisStoreError::NoRuntime), "{error}");
        let error = RedisBackend::builder("http://nope").connect().unwrap_err();
        assert!(matches!(error, RedisStoreError::Url { .. }), "{error}");
    }

    #[tokio::test]
    async fn probes_once_per_recheck_after_a_failure() {
        let health = Health::default();
        assert!(health.may_ask(1000));
        health
            .next_probe
            .store(health.now_ms() + 60_000, Ordering::Relaxed);
        assert!(!health.may_ask(1000));
        health.next_probe.store(1, Ordering::Relaxed);
        assert!(
            health.may_ask(60_000),
            "the first request after the wait probes"
        );
        assert!(!health.may_ask(60_000), "and only that one");
    }
}
