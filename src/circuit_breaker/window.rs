//! The failure-rate trip policy: [`FailureRate`], and the lock-free sliding window that
//! counts calls and failures for it.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Opens the breaker when at least `rate` of the calls answered in the last `window`
/// failed, once that window holds at least `min_calls` calls; see the
/// [module docs](super#which-policy).
///
/// A call is a request admitted while the breaker is closed that got an answer: every
/// answer counts as a call, and those the
/// [`FailureClassifier`](crate::classify::FailureClassifier) calls failures (by default
/// `5xx`, never a `4xx`) count as failures too. A request dropped before its answer counts
/// as neither. The rate is compared when a failure is counted, so a success never opens
/// the breaker: with `min_calls` 5, four failures then a success leave it closed until the
/// next failure.
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use tower_gateway::circuit_breaker::{CircuitBreakerLayer, FailureRate, FailureRateError};
///
/// // Half the calls of the last 10 seconds failed, out of at least 20.
/// let policy = FailureRate::new(0.5, Duration::from_secs(10), NonZeroU32::new(20).unwrap())?;
/// let layer = CircuitBreakerLayer::new(policy, Duration::from_secs(30));
///
/// let zero = FailureRate::new(0.0, Duration::from_secs(10), NonZeroU32::MIN);
/// assert_eq!(zero, Err(FailureRateError::RateOutOfRange(0.0)));
/// # Ok::<(), FailureRateError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureRate {
    rate: f64,
    window: Duration,
    min_calls: NonZeroU32,
}

/// Why a [`FailureRate`] cannot be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureRateError {
    /// `rate` is not greater than 0 and at most 1 (or is not a number).
    #[error("rate must be greater than 0 and at most 1, got {0}")]
    RateOutOfRange(f64),
    /// `window` is shorter than [`FailureRate::MIN_WINDOW`].
    #[error("window must be at least 10ms, got {0:?}")]
    WindowTooShort(Duration),
    /// `window` is longer than [`FailureRate::MAX_WINDOW`].
    #[error("window must be at most 365 days, got {0:?}")]
    WindowTooLong(Duration),
    /// `min_calls` is more than [`FailureRate::MAX_MIN_CALLS`].
    #[error("min_calls must be at most 1048575, got {0}")]
    TooManyMinCalls(u32),
}

impl FailureRate {
    /// The shortest window: 10 ms (buckets of 1 ms).
    pub const MIN_WINDOW: Duration = Duration::from_millis(10);

    /// The longest window: 365 days.
    pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// The largest `min_calls`: 1,048,575, what one of the window's ten buckets can count.
    pub const MAX_MIN_CALLS: u32 = COUNT_MAX as u32;

    /// Opens at `rate` (greater than 0, at most 1: `0.5` is half) failed calls in the last
    /// `window`, once it holds at least `min_calls` calls.
    ///
    /// The window slides in tenths: it is counted in ten buckets of `window / 10`, the
    /// current one and the nine before it, so a call stops counting between 0.9 and 1
    /// `window` after it was answered.
    pub fn new(
        rate: f64,
        window: Duration,
        min_calls: NonZeroU32,
    ) -> Result<Self, FailureRateError> {
        // Written so that NaN fails too.
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(FailureRateError::RateOutOfRange(rate));
        }
        if window < Self::MIN_WINDOW {
            return Err(FailureRateError::WindowTooShort(window));
        }
        if window > Self::MAX_WINDOW {
            return Err(FailureRateError::WindowTooLong(window));
        }
        if min_calls.get() > Self::MAX_MIN_CALLS {
            return Err(FailureRateError::TooManyMinCalls(min_calls.get()));
        }
        Ok(Self {
            rate,
            window,
            min_calls,
        })
    }

    /// The share of failed calls that opens the breaker.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far back calls count.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How many calls the window must hold before the rate is trusted.
    pub fn min_calls(&self) -> NonZeroU32 {
        self.min_calls
    }
}

/// How many buckets the window is counted in.
const BUCKETS: u64 = 10;

// A bucket is one word: which bucket-long stretch of time (epoch) it counts, in the low 24
// bits, then 20 bits of calls and 20 bits of failures, so that moving a bucket on to a new
// epoch and counting in it is one compare-and-swap. The epoch is kept modulo 2^24; the
// sweep below keeps every bucket younger than about 2^22 epochs, so the ages compared are
// never ambiguous.
const EPOCH_BITS: u32 = 24;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const ONE_CALL: u64 = 1 << EPOCH_BITS;
const ONE_FAILURE: u64 = 1 << (EPOCH_BITS + COUNT_BITS);
/// Past this many epochs without an outcome, the sweep cannot tell a bucket's age from its
/// 24 bits, and empties the whole ring instead.
const FAR: u64 = 1 << (EPOCH_BITS - 2);

fn calls(bucket: u64) -> u64 {
    (bucket >> EPOCH_BITS) & COUNT_MAX
}

fn failures(bucket: u64) -> u64 {
    bucket >> (EPOCH_BITS + COUNT_BITS)
}

/// How many epochs before `epoch` the bucket's epoch is; negative when it is later (another
/// thread read the clock after this one).
fn age(epoch: u64, bucket: u64) -> i64 {
    let diff = epoch.wrapping_sub(bucket) & EPOCH_MASK;
    if diff >= 1 << (EPOCH_BITS - 1) {
        diff as i64 - (1 << EPOCH_BITS)
    } else {
        diff as i64
    }
}

/// Calls and failures over the last `window`, in a ring of ten buckets of `window / 10`:
/// recording an outcome is one compare-and-swap on its bucket (and, once per bucket-long
/// stretch, a look at the other nine); no lock.
pub(super) struct Window {
    buckets: [AtomicU64; BUCKETS as usize],
    /// The latest epoch an outcome was recorded in, in full.
    latest: AtomicU64,
    /// A bucket's length, in nanoseconds.
    width: u64,
    rate: f64,
    min_calls: u64,
}

impl Window {
    pub(super) fn new(policy: &FailureRate) -> Self {
        let width = policy.window.as_nanos() / u128::from(BUCKETS);
        Self {
            buckets: Default::default(),
            latest: AtomicU64::new(0),
            width: u64::try_from(width).expect("a window of at most a year fits in u64 ns"),
            rate: policy.rate,
            min_calls: u64::from(policy.min_calls.get()),
        }
    }

    /// Records an outcome answered at `now` (nanoseconds since the breaker's epoch), and
    /// tells whether the breaker should open: only a failure can open it, when the window
    /// holds at least `min_calls` calls of which at least `rate` failed.
    pub(super) fn record(&self, now: u64, failed: bool) -> bool {
        let epoch = now / self.width;
        let previous = self.latest.fetch_max(epoch, Ordering::AcqRel);
        if previous < epoch {
            self.sweep(epoch, epoch - previous);
        }
        let add = if failed {
            ONE_CALL | ONE_FAILURE
        } else {
            ONE_CALL
        };
        let slot = &self.buckets[(epoch % BUCKETS) as usize];
        // `Err` means it was not counted: its bucket is full (the outcomes past the first
        // million of a bucket are not counted, the rate is that of its first million), or
        // the slot already counts a later epoch (this outcome is out of the window).
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bucket| {
            if calls(bucket) == 0 {
                return Some((epoch & EPOCH_MASK) | add);
            }
            match age(epoch, bucket) {
                0 => (calls(bucket) < COUNT_MAX).then_some(bucket + add),
                older if older > 0 => Some((epoch & EPOCH_MASK) | add),
                _ => None,
            }
        });
        if !failed {
            return false;
        }
        let (calls, failures) = self.totals(epoch);
        // Division, not `failures >= rate * calls`: 3 of 10 reaches 0.3 this way.
        calls >= self.min_calls && failures as f64 / calls as f64 >= self.rate
    }

    /// Calls and failures in the window that ends with `epoch`.
    fn totals(&self, epoch: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&bucket| {
                calls(bucket) != 0 && (0..BUCKETS as i64).contains(&age(epoch, bucket))
            })
            .fold((0, 0), |(c, f), bucket| {
                (c + calls(bucket), f + failures(bucket))
            })
    }

    /// Done once per epoch, by the first outcome in it, `gap` epochs after the last one:
    /// empties the buckets that have left the window, so that none grows old enough for its
    /// 24-bit epoch to be mistaken for a recent one. After a gap of `FAR` epochs or more
    /// (70 minutes at the shortest window) that is no longer told by the epoch bits: every bucket is emptied,
    /// which may drop an outcome recorded at this very moment by another thread.
    fn sweep(&self, epoch: u64, gap: u64) {
        for slot in &self.buckets {
            if gap >= FAR {
                slot.store(0, Ordering::Release);
                continue;
            }
            let bucket = slot.load(Ordering::Acquire);
            if calls(bucket) != 0 && age(epoch, bucket) >= BUCKETS as i64 {
                // Lost to a concurrent update: that one moved the bucket on itself.
                let _ = slot.compare_exchange(bucket, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Empties the window: the breaker closed after a successful probe, and counts afresh.
    pub(super) fn clear(&self) {
        for slot in &self.buckets {
            slot.store(0, Ordering::Release);
        }
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epoch = self.latest.load(Ordering::Acquire);
        let (calls, failures) = self.totals(epoch);
        f.debug_struct("Window")
            .field("calls", &calls)
            .field("failures", &failures)
            .field("rate", &self.rate)
            .field("min_calls", &self.min_calls)
            .field("bucket", &Duration::from_nanos(self.width))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn window(rate: f64, window_ms: u64, min_calls: u32) -> Window {
        Window::new(
            &FailureRate::new(
                rate,
                Duration::from_millis(window_ms),
                NonZeroU32::new(min_calls).unwrap(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn bad_policies_are_refused_when_built() {
        let one = NonZeroU32::MIN;
        let secs = Duration::from_secs(10);
        for rate in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
            let err = FailureRate::new(rate, secs, one).unwrap_err();
            assert!(matches!(err, FailureRateError::RateOutOfRange(_)), "{rate}");
        }
        assert!(FailureRate::new(1.0, secs, one).is_ok());
        assert_eq!(
            FailureRate::new(0.5, Duration::from_millis(9), one),
            Err(FailureRateError::WindowTooShort(Duration::from_millis(9)))
        );
        assert!(FailureRate::new(0.5, FailureRate::MIN_WINDOW, one).is_ok());
        let long = FailureRate::MAX_WINDOW + Duration::from_nanos(1);
        assert_eq!(
            FailureRate::new(0.5, long, one),
            Err(FailureRateError::WindowTooLong(long))
        );
        let many = NonZeroU32::new(FailureRate::MAX_MIN_CALLS + 1).unwrap();
        assert_eq!(
            FailureRate::new(0.5, secs, many).unwrap_err().to_string(),
            "min_calls must be at most 1048575, got 1048576"
        );
    }

    #[test]
    fn a_bucket_moves_on_and_old_epochs_leave_the_window() {
        let w = window(0.5, 100, 1); // buckets of 10 ms
        assert!(!w.record(0, false));
        assert!(!w.record(95 * MS, false));
        assert_eq!(w.totals(9), (2, 0));
        // Epoch 10 reuses epoch 0's slot, and epoch 0 has left the window.
        assert!(w.record(100 * MS, true), "1 failure of 2 calls");
        assert_eq!(w.totals(10), (2, 1));
        assert_eq!(w.totals(19), (1, 1), "epoch 9 has left");
    }

    #[test]
    fn a_late_outcome_never_clobbers_a_later_bucket() {
        let w = window(1.0, 100, 1);
        assert!(!w.record(105 * MS, false)); // epoch 10, slot 0
        // Read the clock at epoch 0, got here after epoch 10: outside the window.
        assert!(!w.record(0, false));
        assert_eq!(w.totals(10), (1, 0));
    }

    #[test]
    fn full_buckets_stop_counting() {
        let w = window(0.5, 100, 1);
        w.buckets[0].store(ONE_CALL * COUNT_MAX, Ordering::Relaxed);
        assert!(!w.record(0, true), "not counted: still no failure");
        assert_eq!(w.totals(0), (COUNT_MAX, 0));
    }

    #[test]
    fn buckets_never_grow_old_enough_to_look_recent() {
        let w = window(0.5, 10, 3); // buckets of 1 ms
        // A burst of failures fills every slot at epochs 0..10.
        for epoch in 0..BUCKETS {
            w.record(epoch * MS, true);
        }
        // Then a success now and then, long after, in another slot each time: left alone,
        // the nine slots' 24-bit epochs would come round to look recent again.
        let mut epoch = BUCKETS;
        while epoch < 1 << EPOCH_BITS {
            assert!(!w.record(epoch * MS, false));
            epoch += (1 << 21) + 1;
        }
        assert!(!w.record(((1 << EPOCH_BITS) + 4) * MS, false));
        let now = (1 << EPOCH_BITS) + 5;
        assert!(
            !w.record(now * MS, true),
            "one failure and one success, under min_calls"
        );
        assert_eq!(w.totals(now), (2, 1));
    }

    #[test]
    fn a_ring_idle_for_ages_starts_empty() {
        let w = window(0.5, 10, 2);
        for epoch in 0..BUCKETS {
            w.record(epoch * MS, true);
        }
        // Exactly 2^24 epochs later every slot's 24 bits look current again.
        let now = (1 << EPOCH_BITS) + 9;
        assert!(!w.record(now * MS, true), "only this failure counts");
        assert_eq!(w.totals(now), (1, 1));
    }

    #[test]
    fn clearing_empties_every_bucket() {
        let w = window(0.5, 100, 1);
        for epoch in 0..BUCKETS {
            w.record(epoch * 10 * MS, true);
        }
        w.clear();
        assert_eq!(w.totals(9), (0, 0));
    }
}
