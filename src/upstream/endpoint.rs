//! One endpoint's health and load, shared by every pool that lists its URL (a reload's old
//! and new pool), so that its state outlives the pool it was first built for.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::pool::PoolInner;

/// The endpoint fails its active health check.
const UNHEALTHY: u64 = 1;
/// The endpoint is back from an ejection and has not succeeded since: one failure ejects it.
const PROBATION: u64 = 2;
/// The rest of the state word: when the ejection ends, in nanoseconds from `epoch` (never 0
/// while ejected); 0 when it is not ejected.
const UNTIL_SHIFT: u32 = 2;

/// What the admin view and the hooks call an endpoint's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// Takes traffic.
    Healthy,
    /// Out after consecutive failures, until its ejection ends or a probe passes.
    Ejected,
    /// Failing its active health check.
    Unhealthy,
}

impl EndpointState {
    /// `healthy`, `ejected` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Ejected => "ejected",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The state of one endpoint: atomics for what the request path reads and writes, a lock
/// for the rare transitions.
pub(super) struct Endpoint {
    epoch: Instant,
    /// `until << 2 | PROBATION | UNHEALTHY`: zero means usable with nothing to watch.
    state: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Attempt failures in a row.
    failures: AtomicU32,
    /// Peak-EWMA latency estimate, as `f64` nanoseconds' bits; 0 before the first sample.
    latency: AtomicU64,
    /// When the estimate was last moved, in nanoseconds from `epoch`.
    latency_at: AtomicU64,
    record: Mutex<Record>,
    /// The newest pool that lists this endpoint (after a reload, the new one): it decides
    /// ejections, with its settings and its cap, whichever pool's attempt failed.
    owner: Mutex<Weak<PoolInner>>,
}

/// What only transitions touch.
struct Record {
    /// Ejections so far, less one for each `base_ejection` spent back in service without a
    /// failure (settled when the count is read).
    ejections: u32,
    /// Since when the endpoint has been back without a failure (for the count's decay).
    clean_since: Instant,
    /// When the state last changed.
    since: Instant,
    probe_passes: u32,
    probe_failures: u32,
    probes: u64,
    probe_failures_total: u64,
    ejections_total: u64,
}

/// A transition, for logs and hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Ejected { ejections: u32, duration: Duration },
    Returned,
    Unhealthy,
    Healthy,
}

impl Endpoint {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Self {
            epoch: now,
            state: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            latency: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            record: Mutex::new(Record {
                ejections: 0,
                clean_since: now,
                since: now,
                probe_passes: 0,
                probe_failures: 0,
                probes: 0,
                probe_failures_total: 0,
                ejections_total: 0,
            }),
            owner: Mutex::new(Weak::new()),
        }
    }

    /// The pool that decides this endpoint's ejections, if it still lives.
    pub(super) fn owner(&self) -> Option<Arc<PoolInner>> {
        self.owner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .upgrade()
    }

    /// Makes `pool` the one that decides.
    pub(super) fn set_owner(&self, pool: Weak<PoolInner>) {
        *self
            .owner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pool;
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> UNTIL_SHIFT)
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic elsewhere never leaves a record half-written: every field is a plain value.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the endpoint takes traffic: not failing its health check and not ejected (an
    /// ejection whose time, by `now`, is up ends here, on probation, and `on_return` runs).
    /// One atomic load when it is usable.
    #[inline]
    pub(super) fn is_usable(
        &self,
        now: impl FnOnce() -> Instant,
        on_return: impl FnOnce(),
    ) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state & !PROBATION == 0 {
            return true;
        }
        if state & UNHEALTHY != 0 {
            return false;
        }
        let now = now();
        if self.nanos(now) < state >> UNTIL_SHIFT {
            return false;
        }
        let back = (state & UNHEALTHY) | PROBATION;
        match self
            .state
            .compare_exchange(state, back, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                let mut record = self.record();
                record.clean_since = now;
                record.since = now;
                drop(record);
                on_return();
                true
            }
            // Someone else moved it (ended the ejection, or ejected it again): as it is now.
            Err(current) => {
                current & !PROBATION == 0
                    || (current & UNHEALTHY == 0 && self.nanos(now) >= current >> UNTIL_SHIFT)
            }
        }
    }

    /// Neither ejected (at `now`) nor failing its health check.
    pub(super) fn is_up(&self, now: Instant) -> bool {
        self.state.load(Ordering::Acquire) & UNHEALTHY == 0 && !self.is_ejected(now)
    }

    /// Whether the endpoint is ejected now.
    pub(super) fn is_ejected(&self, now: Instant) -> bool {
        let until = self.state.load(Ordering::Acquire) >> UNTIL_SHIFT;
        until != 0 && self.nanos(now) < until
    }

    /// When its ejection ends, if it is ejected.
    pub(super) fn ejected_until(&self) -> Option<Instant> {
        let until = self.state.load(Ordering::Acquire) >> UNTIL_SHIFT;
        (until != 0).then(|| self.epoch + Duration::from_nanos(until))
    }

    pub(super) fn state(&self, now: Instant) -> EndpointState {
        let state = self.state.load(Ordering::Acquire);
        if state & UNHEALTHY != 0 {
            EndpointState::Unhealthy
        } else if self.is_ejected(now) {
            EndpointState::Ejected
        } else {
            EndpointState::Healthy
        }
    }

    /// An attempt succeeded: the failure count and probation end. A load, and no write
    /// when there is nothing to reset.
    #[inline]
    pub(super) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Relaxed) & PROBATION != 0 {
            self.state.fetch_and(!PROBATION, Ordering::AcqRel);
        }
    }

    /// An attempt failed: whether it is time to eject (`threshold` failures in a row, or one
    /// on probation) and the endpoint is not ejected already.
    pub(super) fn failed(&self, threshold: u32) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let state = self.state.load(Ordering::Acquire);
        if state >> UNTIL_SHIFT != 0 {
            return false;
        }
        failures >= threshold || state & PROBATION != 0
    }

    /// Ejects the endpoint: for `base` times its ejection count (after this one, less the
    /// clean periods since the last) up to `max`, plus `jitter`. The caller holds the pool's
    /// ejection lock and has checked the pool's cap.
    pub(super) fn eject(
        &self,
        base: Duration,
        max: Duration,
        jitter: Duration,
        now: Instant,
    ) -> Change {
        let mut record = self.record();
        let clean = settle(record.ejections, record.clean_since, base, now);
        record.ejections = clean.saturating_add(1);
        record.ejections_total += 1;
        record.since = now;
        let duration = base
            .saturating_mul(record.ejections)
            .min(max)
            .saturating_add(jitter);
        let until = self.nanos(crate::time::later(now, duration)).max(1);
        self.set_keeping_unhealthy(until << UNTIL_SHIFT);
        self.failures.store(0, Ordering::Relaxed);
        Change::Ejected {
            ejections: record.ejections,
            duration,
        }
    }

    /// Replaces the state word with `state`, keeping the health check's verdict.
    fn set_keeping_unhealthy(&self, state: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(state | (old & UNHEALTHY))
            });
    }

    /// A failure that did not eject still ends the clean period the ejection count decays
    /// over (after the decay it earned is counted).
    pub(super) fn dirty(&self, base: Duration, now: Instant) {
        let mut record = self.record();
        record.ejections = settle(record.ejections, record.clean_since, base, now);
        record.clean_since = now;
    }

    /// An active probe's result, with the thresholds that flip the state; the changes it
    /// made (becoming healthy also ends an ejection).
    pub(super) fn probed(
        &self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
        now: Instant,
    ) -> (Option<Change>, Option<Change>) {
        let mut record = self.record();
        record.probes += 1;
        let state = self.state.load(Ordering::Acquire);
        if passed {
            record.probe_failures = 0;
            record.probe_passes = record.probe_passes.saturating_add(1);
            let mut changes = (None, None);
            if state & UNHEALTHY != 0 && record.probe_passes >= healthy_threshold {
                self.state.fetch_and(!UNHEALTHY, Ordering::AcqRel);
                record.since = now;
                changes.0 = Some(Change::Healthy);
            }
            if self.is_ejected(now) {
                // A passing probe ends an ejection, on probation like any return: `/health`
                // may pass while real requests still fail.
                self.set_keeping_unhealthy(PROBATION);
                self.failures.store(0, Ordering::Relaxed);
                record.clean_since = now;
                record.since = now;
                changes.1 = Some(Change::Returned);
            }
            changes
        } else {
            record.probe_failures_total += 1;
            record.probe_passes = 0;
            record.probe_failures = record.probe_failures.saturating_add(1);
            if state & UNHEALTHY == 0 && record.probe_failures >= unhealthy_threshold {
                self.state.fetch_or(UNHEALTHY, Ordering::AcqRel);
                record.since = now;
                return (Some(Change::Unhealthy), None);
            }
            (None, None)
        }
    }

    /// Forgets the active check's verdict (a reload turned the checks off).
    pub(super) fn clear_probe_state(&self) {
        let mut record = self.record();
        record.probe_passes = 0;
        record.probe_failures = 0;
        self.state.fetch_and(!UNHEALTHY, Ordering::AcqRel);
    }

    /// Moves the peak-EWMA latency estimate by one sample: a sample above it replaces it
    /// (a slow endpoint is noticed at once), one below pulls it down by how long ago the
    /// last sample was, over `decay`.
    pub(super) fn observe_latency(&self, sample: Duration, decay: Duration, now: Instant) {
        let sample = sample.as_nanos() as f64;
        let now = self.nanos(now);
        let at = self.latency_at.swap(now, Ordering::Relaxed);
        let old = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let estimate = if old == 0.0 || sample > old {
            sample
        } else {
            let elapsed = now.saturating_sub(at) as f64;
            let weight = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            old * weight + sample * (1.0 - weight)
        };
        self.latency.store(estimate.to_bits(), Ordering::Relaxed);
    }

    /// The latency estimate, or `initial` before the first sample.
    #[inline]
    pub(super) fn latency_or(&self, initial: Duration) -> f64 {
        let estimate = f64::from_bits(self.latency.load(Ordering::Relaxed));
        if estimate == 0.0 {
            initial.as_nanos() as f64
        } else {
            estimate
        }
    }

    /// The latency estimate, if there has been a sample.
    pub(super) fn latency(&self) -> Option<Duration> {
        let estimate = f64::from_bits(self.latency.load(Ordering::Relaxed));
        (estimate > 0.0).then(|| Duration::from_nanos(estimate as u64))
    }

    /// `(ejections, ejections_total, probes, probe failures, since)` for the admin view,
    /// with the ejection count settled at `now`.
    pub(super) fn counts(&self, base: Duration, now: Instant) -> (u32, u64, u64, u64, Instant) {
        let record = self.record();
        let ejections = if self.is_ejected(now) {
            record.ejections
        } else {
            settle(record.ejections, record.clean_since, base, now)
        };
        (
            ejections,
            record.ejections_total,
            record.probes,
            record.probe_failures_total,
            record.since,
        )
    }
}

/// An ejection count less one for each whole `base` since `clean_since`.
fn settle(ejections: u32, clean_since: Instant, base: Duration, now: Instant) -> u32 {
    if base.is_zero() {
        return ejections;
    }
    let periods = now.saturating_duration_since(clean_since).as_nanos() / base.as_nanos();
    ejections.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn ejections_grow_return_on_probation_and_decay() {
        let endpoint = Endpoint::new();
        for _ in 0..4 {
            assert!(!endpoint.failed(5));
        }
        assert!(endpoint.failed(5), "the fifth failure in a row");
        let change = endpoint.eject(BASE, MAX, Duration::ZERO, Instant::now());
        assert_eq!(
            change,
            Change::Ejected {
                ejections: 1,
                duration: BASE
            }
        );
        assert!(!endpoint.is_usable(Instant::now, || panic!("not over yet")));
        tokio::time::advance(BASE).await;
        let mut returned = false;
        assert!(endpoint.is_usable(Instant::now, || returned = true));
        assert!(
            returned,
            "the ejection ends at the first look after its time"
        );
        assert!(endpoint.failed(5), "on probation one failure is enough");
        let change = endpoint.eject(BASE, MAX, Duration::ZERO, Instant::now());
        assert_eq!(
            change,
            Change::Ejected {
                ejections: 2,
                duration: 2 * BASE
            }
        );
        tokio::time::advance(2 * BASE).await;
        assert!(endpoint.is_usable(Instant::now, || {}));
        endpoint.succeeded();
        assert!(!endpoint.failed(5), "a success ends probation");
        // Two clean base periods bring the count from 2 to 0: the next ejection is a first.
        tokio::time::advance(2 * BASE).await;
        let (ejections, total, ..) = endpoint.counts(BASE, Instant::now());
        assert_eq!((ejections, total), (0, 2));
        let change = endpoint.eject(BASE, MAX, Duration::ZERO, Instant::now());
        assert_eq!(
            change,
            Change::Ejected {
                ejections: 1,
                duration: BASE
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_clean_periods_keeps_the_decay_it_earned() {
        let endpoint = Endpoint::new();
        for _ in 0..2 {
            endpoint.eject(BASE, MAX, Duration::ZERO, Instant::now());
        }
        tokio::time::advance(MAX).await;
        assert!(endpoint.is_usable(Instant::now, || {}));
        tokio::time::advance(10 * BASE).await;
        endpoint.dirty(BASE, Instant::now());
        let (ejections, ..) = endpoint.counts(BASE, Instant::now());
        assert_eq!(ejections, 0, "ten clean periods paid off both ejections");
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_are_capped_and_a_passing_probe_ends_one() {
        let endpoint = Endpoint::new();
        for n in 1..=12u32 {
            let change = endpoint.eject(BASE, MAX, Duration::ZERO, Instant::now());
            assert_eq!(
                change,
                Change::Ejected {
                    ejections: n,
                    duration: (BASE * n).min(MAX)
                }
            );
        }
        assert_eq!(endpoint.state(Instant::now()), EndpointState::Ejected);
        let (health, ejection) = endpoint.probed(true, 2, 3, Instant::now());
        assert_eq!((health, ejection), (None, Some(Change::Returned)));
        assert_eq!(endpoint.state(Instant::now()), EndpointState::Healthy);
        for _ in 0..2 {
            assert_eq!(endpoint.probed(false, 2, 3, Instant::now()), (None, None));
        }
        assert_eq!(
            endpoint.probed(false, 2, 3, Instant::now()),
            (Some(Change::Unhealthy), None)
        );
        assert!(!endpoint.is_usable(Instant::now, || {}));
        assert_eq!(endpoint.probed(true, 2, 3, Instant::now()), (None, None));
        assert_eq!(
            endpoint.probed(true, 2, 3, Instant::now()),
            (Some(Change::Healthy), None)
        );
        assert!(endpoint.is_usable(Instant::now, || {}));
    }
}
