//! [`RouteStore`]: the one store type a gateway route limits with, local or shared.

use std::fmt;
use std::hash::Hash;

use super::Quota;
use super::key::StoreKey;
use super::local::LocalStore;
use super::store::{BoxDecision, Check, RateLimitStore};

/// The store a gateway route limits with: the in-process [`LocalStore`], or (with the
/// `redis` feature) a [`RedisStore`](super::redis::RedisStore) shared by every instance.
/// One type for both, so a stack's type does not depend on where its budgets live.
pub struct RouteStore<K: Hash + Eq + Clone>(RouteStoreInner<K>);

enum RouteStoreInner<K: Hash + Eq + Clone> {
    Local(LocalStore<K>),
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisStore<K>),
}

impl<K: Hash + Eq + Clone> RouteStore<K> {
    /// Whether the budgets live in this process (and so would be lost with the store,
    /// unless a reload [keeps](super::RateLimitLayer::keep_state_of) it).
    pub fn is_local(&self) -> bool {
        matches!(self.0, RouteStoreInner::Local(_))
    }
}

impl<K: Hash + Eq + Clone> From<LocalStore<K>> for RouteStore<K> {
    fn from(store: LocalStore<K>) -> Self {
        Self(RouteStoreInner::Local(store))
    }
}

#[cfg(feature = "redis")]
impl<K: Hash + Eq + Clone> From<super::redis::RedisStore<K>> for RouteStore<K> {
    fn from(store: super::redis::RedisStore<K>) -> Self {
        Self(RouteStoreInner::Redis(store))
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for RouteStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RouteStoreInner::Local(store) => store.fmt(f),
            #[cfg(feature = "redis")]
            RouteStoreInner::Redis(store) => store.fmt(f),
        }
    }
}

impl<K> RateLimitStore<K> for RouteStore<K>
where
    K: StoreKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = BoxDecision;

    #[inline]
    fn quota(&self) -> Quota {
        match &self.0 {
            RouteStoreInner::Local(store) => store.quota(),
            #[cfg(feature = "redis")]
            RouteStoreInner::Redis(store) => store.quota(),
        }
    }

    #[inline]
    fn check(&self, key: Option<&K>, usage: bool) -> Check<Self::Future> {
        match &self.0 {
            RouteStoreInner::Local(store) => Check::Ready(store.decide(key, usage)),
            #[cfg(feature = "redis")]
            RouteStoreInner::Redis(store) => store.check(key, usage),
        }
    }
}
