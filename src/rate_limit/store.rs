//! Where rate-limit decisions are made: the [`RateLimitStore`] trait, its answers, and what a
//! store shared across the network does when it fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Quota;

/// A rate-limit decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Admit the request.
    Allow {
        /// Requests the client may still make right now.
        remaining: u32,
        /// How long until the client's quota is whole again.
        reset: Duration,
    },
    /// Refuse it: `429`.
    Deny {
        /// How long until one request is admitted again.
        retry_after: Duration,
        /// How long until the client's quota is whole again.
        reset: Duration,
    },
    /// The store cannot decide (a shared store that is down, configured to fail closed):
    /// `503`.
    Unavailable,
}

/// A [`RateLimitStore`]'s answer: now, or when the future resolves.
#[derive(Debug)]
pub enum Check<F> {
    /// The decision, now: nothing to wait for on the request path.
    Ready(Decision),
    /// The decision comes when `F` resolves (a store across the network).
    Pending(F),
}

/// Decides, per key, whether a request fits the quota. The in-process
/// [`LocalStore`](super::LocalStore) is the default; a store shared by several gateway
/// instances implements this trait too.
///
/// `key` is `None` for a request the key extractor could not attribute; such requests share
/// one budget, so they are limited, never waved through.
pub trait RateLimitStore<K>: Send + Sync + 'static {
    /// The asynchronous decision; [`Ready`](std::future::Ready) for a store that always answers
    /// at once.
    type Future: Future<Output = Decision> + Send;

    /// The quota this store enforces (for the `RateLimit-Policy` header).
    fn quota(&self) -> Quota;

    /// Takes one request from `key`'s budget if it fits.
    ///
    /// `usage` says whether the caller reports the `remaining` and `reset` of an
    /// [`Allow`](Decision::Allow) (in the rate-limit headers). When it is `false` a store may
    /// skip working them out and answer zeros.
    fn check(&self, key: Option<&K>, usage: bool) -> Check<Self::Future>;
}

impl<K, St: RateLimitStore<K>> RateLimitStore<K> for Arc<St> {
    type Future = St::Future;

    #[inline]
    fn quota(&self) -> Quota {
        (**self).quota()
    }

    #[inline]
    fn check(&self, key: Option<&K>, usage: bool) -> Check<Self::Future> {
        (**self).check(key, usage)
    }
}

/// A shared store's default per-decision timeout (the Redis store's, and the config's).
#[cfg(any(feature = "redis", feature = "config"))]
pub(crate) const SHARED_TIMEOUT: Duration = Duration::from_millis(50);

/// A shared store's default key prefix (the Redis store's, and the config's).
#[cfg(any(feature = "redis", feature = "config"))]
pub(crate) const SHARED_KEY_PREFIX: &str = "tower-gateway";

/// What a store shared across the network (the [`RedisStore`](super::redis::RedisStore))
/// decides when it fails or does not answer in time. In the example gateway's config it is
/// `rate_limit_store.on_error`: `"allow"`, `"deny"` or `"local"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum OnStoreError {
    /// Fail open: admit the request (logged, and counted in the store's fallbacks).
    #[default]
    Allow,
    /// Fail closed: refuse it with `503` ([`Decision::Unavailable`]).
    Deny,
    /// Decide in-process: each instance enforces the whole quota on its own until the store
    /// is back.
    Local,
}

/// The boxed decision of a store across the network.
pub type BoxDecision = std::pin::Pin<Box<dyn Future<Output = Decision> + Send>>;
