//! The in-process [`LocalStore`] on governor's GCRA: bounded key memory, idle keys swept.

use std::cell::Cell as StdCell;
use std::fmt;
use std::future::Ready;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota as GcraQuota, RateLimiter};

use super::Quota;
use super::store::{Check, Decision, RateLimitStore};

/// The default cap on the number of keys a [`LocalStore`] tracks: one million, about 66 MiB
/// with IP-address keys (69 bytes a key, measured by `tests/rate_limit_memory.rs`).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Fewest keys before the first sweep for idle keys.
const FIRST_SWEEP: usize = 1024;

/// How long a key's budget must have been whole before a sweep drops it (nanoseconds): a
/// margin over the few nanoseconds by which this store's clock and governor's may differ.
const IDLE_MARGIN: u64 = 1_000_000;

/// Above this many keys a sweep runs on a thread of its own.
const BACKGROUND_SWEEP: usize = 100_000;

/// The longest time between two sweeps while keys keep arriving.
const MAX_SWEEP_GAP: Duration = Duration::from_secs(10);

/// The in-process store: governor's keyed GCRA over a concurrent map of per-key state, with
/// bounded memory.
///
/// - **Decisions** are synchronous and lock-free per key: a read lock on one of the map's
///   shards and a compare-and-swap on the key's state. A new key takes one shard's write
///   lock once.
/// - **Idle keys are evicted.** A key whose budget is whole again is indistinguishable from a
///   new one and is dropped by a sweep (once it has been whole for a millisecond). A sweep is due when new keys have doubled the count
///   since the last one (so its cost is amortised over the keys inserted) or find the table
///   full, and runs at most once per eighth of the window (or per 10 s, if that is shorter),
///   one at a time: on the request that finds it due for up to 100,000 keys, above that on a
///   thread of its own. [`sweep`](Self::sweep) runs one now.
/// - **The key count is capped** ([`max_keys`](Self::max_keys), default
///   [`DEFAULT_MAX_KEYS`]; new keys arriving at once on several threads may pass it by at
///   most one each). While the map is full and no key is idle, new keys share one overflow
///   budget with the requests that have no key: under a flood of distinct clients they are
///   limited together, and memory stays bounded. The bound in bytes is the cap times the
///   size of an entry: about 70 bytes with address keys, more with keys that own memory
///   ([`HeaderKey`](super::HeaderKey) values are at most 256 bytes).
///
/// The clock is governor's (`C`); tests use [`governor::clock::FakeRelativeClock`].
pub struct LocalStore<K, C = DefaultClock>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    limiter: RateLimiter<K, Table<K>, C, NoOpMiddleware<C::Instant>>,
    /// The same GCRA over the table's overflow budget, for requests without a key.
    overflow: RateLimiter<NotKeyed, Overflow<K>, C, NoOpMiddleware<C::Instant>>,
    table: Table<K>,
    clock: C,
    quota: Quota,
    /// One request's worth of time, `window / requests`, in nanoseconds.
    period_nanos: u64,
    /// The whole quota's worth of time, `period * requests`, in nanoseconds.
    whole_nanos: u64,
    /// Nanoseconds since `start` of the last sweep.
    last_sweep: AtomicU64,
    min_sweep_gap: u64,
    start: C::Instant,
}

impl<K> LocalStore<K>
where
    K: Hash + Eq + Clone,
{
    /// A store enforcing `quota`, on governor's default (monotonic, high-resolution) clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, DefaultClock::default())
    }
}

impl<K, C> LocalStore<K, C>
where
    K: Hash + Eq + Clone,
    C: Clock + Clone,
{
    /// A store enforcing `quota` on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self::build(quota, clock, DEFAULT_MAX_KEYS)
    }

    fn build(quota: Quota, clock: C, max_keys: usize) -> Self {
        let table = Table(Arc::new(TableInner {
            map: DashMap::new(),
            overflow: Cell::default(),
            len: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            next_sweep: AtomicUsize::new(FIRST_SWEEP.min(max_keys.max(1))),
            sweep_due: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
        }));
        // Read before the limiters read theirs: this store's clock then runs a few
        // nanoseconds ahead of theirs, so the usage it works out errs (by nanoseconds) on the
        // client's side and never reports one request less than the client has.
        let start = clock.now();
        let period = quota.period();
        let gcra = GcraQuota::with_period(period)
            .expect("Quota guarantees a non-zero period")
            .allow_burst(quota.requests());
        let limiter = RateLimiter::new(gcra, table.clone(), clock.clone());
        let overflow = RateLimiter::new(gcra, Overflow(table.clone()), clock.clone());
        Self {
            limiter,
            overflow,
            table,
            clock,
            quota,
            period_nanos: u64::from(Nanos::from(period)),
            whole_nanos: u64::from(Nanos::from(period)) * u64::from(quota.requests().get()),
            last_sweep: AtomicU64::new(0),
            min_sweep_gap: u64::from(Nanos::from((quota.window() / 8).min(MAX_SWEEP_GAP))),
            start,
        }
    }

    /// Caps the number of keys tracked (default [`DEFAULT_MAX_KEYS`]; at least 1). Call it
    /// before the store is used: it starts an empty table.
    pub fn max_keys(self, max_keys: usize) -> Self {
        Self::build(self.quota, self.clock, max_keys)
    }

    pub(super) fn key_cap(&self) -> usize {
        self.table.0.max_keys
    }

    /// The number of keys tracked now.
    pub fn len(&self) -> usize {
        self.table.0.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts every idle key (one whose budget is whole again) now, and gives the freed
    /// memory back when most keys went.
    pub fn sweep(&self) {
        self.last_sweep.store(self.elapsed(), Ordering::Relaxed);
        self.table.sweep(self.drop_below());
    }

    fn elapsed(&self) -> u64 {
        u64::from(self.clock.now().duration_since(self.start))
    }

    /// Keys whose theoretical arrival time is at or before this are idle: their budget has
    /// been whole again for a millisecond, and a key never seen would be treated the same.
    fn drop_below(&self) -> u64 {
        self.elapsed().saturating_sub(IDLE_MARGIN)
    }
}

impl<K, C> LocalStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone,
{
    /// Sweeps when the key count calls for it and no other sweep is running. A big table is
    /// swept on a thread of its own, so no request waits for it (a million keys take about
    /// 20 ms); a small one right here.
    #[cold]
    fn maybe_sweep(&self) {
        let inner = &self.table.0;
        let since = self
            .elapsed()
            .saturating_sub(self.last_sweep.load(Ordering::Relaxed));
        if since < self.min_sweep_gap {
            return;
        }
        if inner
            .sweeping
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.last_sweep.store(self.elapsed(), Ordering::Relaxed);
        let drop_below = self.drop_below();
        if inner.len.load(Ordering::Relaxed) > BACKGROUND_SWEEP {
            let table = self.table.clone();
            let spawned = std::thread::Builder::new()
                .name("rate-limit-sweep".into())
                .spawn(move || {
                    let _done = SweepDone(&table);
                    table.sweep(drop_below);
                });
            if spawned.is_ok() {
                return;
            }
        }
        let _done = SweepDone(&self.table);
        self.table.sweep(drop_below);
    }
}

/// Lets the next sweep run when this one ends, even if it panics (a key's `Drop`, say).
struct SweepDone<'a, K>(&'a Table<K>);

impl<K> Drop for SweepDone<'_, K> {
    fn drop(&mut self) {
        self.0.0.sweeping.store(false, Ordering::Release);
    }
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for LocalStore<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("quota", &self.quota)
            .field("keys", &self.table.0.len.load(Ordering::Relaxed))
            .field("max_keys", &self.table.0.max_keys)
            .finish()
    }
}

impl<K, C> RateLimitStore<K> for LocalStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Future = Ready<Decision>;

    #[inline]
    fn quota(&self) -> Quota {
        self.quota
    }

    #[inline]
    fn check(&self, key: Option<&K>, usage: bool) -> Check<Self::Future> {
        Check::Ready(self.decide(key, usage))
    }
}

impl<K, C> LocalStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// [`check`](RateLimitStore::check), synchronously: the local store always decides
    /// at once.
    #[inline]
    pub fn decide(&self, key: Option<&K>, usage: bool) -> Decision {
        let outcome = match key {
            Some(key) => self.limiter.check_key(key),
            None => self.overflow.check(),
        };
        let decision = match outcome {
            Ok(()) if usage => {
                // The key's new theoretical arrival time, which its state just took on this
                // thread: the quota is whole again when the clock reaches it.
                let tat = LAST_TAT.with(StdCell::get);
                let ahead = tat.saturating_sub(self.elapsed());
                let remaining = self.whole_nanos.saturating_sub(ahead) / self.period_nanos;
                Decision::Allow {
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    reset: Duration::from_nanos(ahead),
                }
            }
            Ok(()) => Decision::Allow {
                remaining: 0,
                reset: Duration::ZERO,
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision::Deny {
                    retry_after: wait,
                    reset: wait + Duration::from_nanos(self.whole_nanos - self.period_nanos),
                }
            }
        };
        let inner = &self.table.0;
        if inner.sweep_due.load(Ordering::Relaxed) {
            self.maybe_sweep();
        }
        decision
    }
}

thread_local! {
    /// The theoretical arrival time a key's state last took on this thread. A decision and
    /// the read of this happen on one thread, one after the other, inside
    /// [`LocalStore::decide`], so it is that decision's: the usage of an `Allow` costs no
    /// second lookup and no snapshot when nobody asks for it.
    static LAST_TAT: StdCell<u64> = const { StdCell::new(0) };
}

/// The GCRA state of one key: its theoretical arrival time, in nanoseconds since the
/// limiter started (0: never seen).
#[derive(Default)]
struct Cell(AtomicU64);

impl Cell {
    #[inline]
    fn measure<T, F, E>(&self, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
            match self.0.compare_exchange_weak(
                prev,
                u64::from(next),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    LAST_TAT.with(|last| last.set(u64::from(next)));
                    return Ok(result);
                }
                Err(actual) => prev = actual,
            }
        }
    }
}

struct TableInner<K> {
    map: DashMap<K, Cell>,
    /// The budget shared by requests without a key and by new keys while the map is full.
    overflow: Cell,
    len: AtomicUsize,
    max_keys: usize,
    next_sweep: AtomicUsize,
    /// Set when a new key finds the count at `next_sweep` or the table full: the request
    /// path then looks at the clock to see whether a sweep may run.
    sweep_due: AtomicBool,
    sweeping: AtomicBool,
}

/// governor's view of the table: a budget per key, and the overflow budget for new keys
/// while the table is full.
struct Table<K>(Arc<TableInner<K>>);

impl<K: Hash + Eq> Table<K> {
    /// Drops the keys whose theoretical arrival time is at or before `drop_below`, gives the
    /// memory back when most went, and sets the count at which the next sweep is due.
    fn sweep(&self, drop_below: u64) {
        let inner = &*self.0;
        let before = inner.len.load(Ordering::Relaxed);
        inner.map.retain(|_, cell| {
            let keep = cell.0.load(Ordering::Relaxed) > drop_below;
            if !keep {
                inner.len.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        let after = inner.len.load(Ordering::Relaxed);
        if after < before / 2 {
            inner.map.shrink_to_fit();
        }
        let next = after.saturating_mul(2).max(FIRST_SWEEP).min(inner.max_keys);
        inner.next_sweep.store(next, Ordering::Relaxed);
        inner.sweep_due.store(false, Ordering::Relaxed);
    }
}

/// governor's view of the overflow budget alone, for requests without a key.
struct Overflow<K>(Table<K>);

impl<K> StateStore for Overflow<K> {
    type Key = NotKeyed;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.0.overflow.measure(f)
    }
}

impl<K> Clone for Table<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K: Hash + Eq + Clone> StateStore for Table<K> {
    type Key = K;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let inner = &*self.0;
        if let Some(cell) = inner.map.get(key) {
            return cell.measure(f);
        }
        if inner.len.load(Ordering::Relaxed) >= inner.max_keys {
            inner.sweep_due.store(true, Ordering::Relaxed);
            return inner.overflow.measure(f);
        }
        let cell = inner.map.entry(key.clone()).or_insert_with(|| {
            let len = inner.len.fetch_add(1, Ordering::Relaxed) + 1;
            if len >= inner.next_sweep.load(Ordering::Relaxed) {
                inner.sweep_due.store(true, Ordering::Relaxed);
            }
            Cell::default()
        });
        cell.measure(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn store(
        requests: u32,
        window: Duration,
    ) -> (LocalStore<u64, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let quota = Quota::new(requests, window).unwrap();
        (LocalStore::with_clock(quota, clock.clone()), clock)
    }

    fn decide(store: &LocalStore<u64, FakeRelativeClock>, key: Option<u64>) -> Decision {
        match store.check(key.as_ref(), true) {
            Check::Ready(d) => d,
            Check::Pending(_) => unreachable!("the local store decides at once"),
        }
    }

    #[test]
    fn burst_then_one_per_period_with_exact_waits() {
        let (store, clock) = store(3, Duration::from_secs(3));
        for left in [2, 1, 0] {
            match decide(&store, Some(1)) {
                Decision::Allow { remaining, reset } => {
                    assert_eq!(remaining, left);
                    assert_eq!(reset, Duration::from_secs(u64::from(3 - left)));
                }
                other => panic!("expected Allow, got {other:?}"),
            }
        }
        assert_eq!(
            decide(&store, Some(1)),
            Decision::Deny {
                retry_after: Duration::from_secs(1),
                reset: Duration::from_secs(3),
            }
        );
        clock.advance(Duration::from_millis(400));
        match decide(&store, Some(1)) {
            Decision::Deny { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(600))
            }
            other => panic!("expected Deny, got {other:?}"),
        }
        clock.advance(Duration::from_millis(600));
        assert!(matches!(
            decide(&store, Some(1)),
            Decision::Allow { remaining: 0, .. }
        ));
        // Another key has its own budget.
        assert!(matches!(
            decide(&store, Some(2)),
            Decision::Allow { remaining: 2, .. }
        ));
    }

    #[test]
    fn new_keys_on_the_real_clock_report_the_burst_less_one() {
        let quota = Quota::new(2, Duration::from_secs(60)).unwrap();
        let store: LocalStore<u64> = LocalStore::new(quota);
        for key in 0..20_000 {
            match store.check(Some(&key), true) {
                Check::Ready(Decision::Allow { remaining, reset }) => {
                    assert_eq!(remaining, 1, "key {key}");
                    assert!(reset <= Duration::from_secs(30), "key {key}: {reset:?}");
                }
                _ => panic!("a new key is admitted"),
            }
        }
    }

    #[test]
    fn keyless_requests_share_one_budget() {
        let (store, _clock) = store(2, Duration::from_secs(60));
        assert!(matches!(decide(&store, None), Decision::Allow { .. }));
        assert!(matches!(decide(&store, None), Decision::Allow { .. }));
        assert!(matches!(decide(&store, None), Decision::Deny { .. }));
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn idle_keys_are_evicted_and_the_count_is_capped() {
        let (store, clock) = store(10, Duration::from_secs(10));
        let store = store.max_keys(5_000);
        for key in 0..20_000 {
            let _ = decide(&store, Some(key));
        }
        assert!(store.len() <= 5_000, "capped: {}", store.len());
        // Beyond the cap new keys share the overflow budget, which runs out.
        let denied = (100_000..100_100)
            .filter(|k| matches!(decide(&store, Some(*k)), Decision::Deny { .. }))
            .count();
        assert!(
            denied >= 90,
            "overflow keys must share one budget: {denied} denied"
        );
        clock.advance(Duration::from_secs(11));
        store.sweep();
        assert_eq!(store.len(), 0);
        // Sweeps also run on their own as keys arrive: the count never passes the cap.
        for key in 200_000..230_000 {
            let _ = decide(&store, Some(key));
            if key % 1000 == 0 {
                clock.advance(Duration::from_secs(11));
            }
        }
        assert!(store.len() <= 5_000);
        assert!(matches!(
            decide(&store, Some(999_999)),
            Decision::Allow { .. }
        ));
    }
}
