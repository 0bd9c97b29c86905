//! [`RetryBudget`]: how many retries a route may make, as a share of its recent requests.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How many slots the window is cut into.
const SLOTS: usize = 10;

/// Caps retries at a share of recent requests plus a floor, so that a failing upstream is not
/// hit by a retry storm: when every request fails, each is retried only while the budget
/// lasts, so the upstream sees at most `1 + ratio` times the traffic (plus the floor), not
/// `1 + max_retries` times.
///
/// Over the last `window` (10 s by default), retries may number at most
/// `min_per_sec × window + ratio × requests`. The default is 20 % of requests plus 10 retries
/// a second, like Finagle's and Envoy's budgets. Every request the retry layer sees is
/// counted, retried or not.
///
/// The count is kept in a ring of ten slots of atomics: counting a request is a clock read
/// and one atomic add, with no lock; only deciding a retry sums the ring. One budget can be
/// shared by several layers (it is behind an `Arc` in each layer).
///
/// It also implements tower's [`Budget`](tower::retry::budget::Budget), so it can stand in
/// for tower's own budget (which takes a lock on every request).
pub struct RetryBudget {
    epoch: Instant,
    slot_nanos: u64,
    /// Per slot: the slot's tick in the high 32 bits, its count in the low 32.
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
    /// `ratio` in thousandths.
    ratio_milli: u64,
    /// `min_per_sec × window`, in thousandths of a retry.
    floor_milli: u64,
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
}

/// Why a [`RetryBudget`] could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The ratio is negative, not a number, or over 1000.
    #[error("the retry ratio must be between 0 and 1000, not {0}")]
    Ratio(f64),
    /// The window is shorter than 10 ms or longer than an hour.
    #[error("the retry budget's window must be between 10ms and 1h, not {0:?}")]
    Window(Duration),
}

impl RetryBudget {
    /// Retries may number `ratio` times the requests of the last `window`, plus `min_per_sec`
    /// a second (`RetryBudget::new(0.2, 10, 10 s)` is the default).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Result<Self, BudgetError> {
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(BudgetError::Ratio(ratio));
        }
        if window < Duration::from_millis(10) || window > Duration::from_secs(3600) {
            return Err(BudgetError::Window(window));
        }
        let window_nanos = window.as_nanos() as u64;
        Ok(Self {
            epoch: Instant::now(),
            slot_nanos: window_nanos / SLOTS as u64,
            requests: Default::default(),
            retries: Default::default(),
            ratio_milli: (ratio * 1000.0).round() as u64,
            // Retries a second × milliseconds: thousandths of a retry (at most about 1.5e16).
            floor_milli: u64::from(min_per_sec) * window.as_millis() as u64,
            ratio,
            min_per_sec,
            window,
        })
    }

    /// The share of recent requests that may be retried.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The retries a second that are always allowed.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// How far back requests and retries are counted.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts a request.
    #[inline]
    pub fn deposit(&self) {
        add(&self.requests, self.tick());
    }

    /// Takes one retry from the budget if there is one left; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let tick = self.tick();
        let requests = sum(&self.requests, tick);
        let retries = sum(&self.retries, tick);
        let allowed = self
            .floor_milli
            .saturating_add(self.ratio_milli.saturating_mul(requests));
        if (retries + 1).saturating_mul(1000) > allowed {
            return false;
        }
        add(&self.retries, tick);
        true
    }

    /// How many retries the budget would allow now.
    pub fn remaining(&self) -> u64 {
        let tick = self.tick();
        let allowed = self
            .floor_milli
            .saturating_add(self.ratio_milli.saturating_mul(sum(&self.requests, tick)))
            / 1000;
        allowed.saturating_sub(sum(&self.retries, tick))
    }

    #[inline]
    fn tick(&self) -> u32 {
        let nanos = self.epoch.elapsed().as_nanos() as u64;
        // Wraps after 2^32 slots (at least 49 days, with the shortest slots of 1 ms); the one
        // window around the wrap may be miscounted, since 2^32 is no multiple of the ring.
        (nanos / self.slot_nanos) as u32
    }
}

impl Default for RetryBudget {
    /// 20 % of the requests of the last 10 s, plus 10 retries a second.
    fn default() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10)).expect("the default budget is valid")
    }
}

#[inline]
fn add(slots: &[AtomicU64; SLOTS], tick: u32) {
    let slot = &slots[tick as usize % SLOTS];
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        if (current >> 32) as u32 == tick {
            // The slot is this tick's: count in place (its count never nears 2^32 per slot).
            slot.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if (tick.wrapping_sub((current >> 32) as u32) as i32) < 0 {
            // A later tick already took the slot (this thread was held up between reading
            // the clock and counting): this count is too old to matter.
            return;
        }
        // The slot still holds an older tick: start it afresh, unless another thread did.
        match slot.compare_exchange_weak(
            current,
            (u64::from(tick) << 32) | 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

fn sum(slots: &[AtomicU64; SLOTS], tick: u32) -> u64 {
    slots
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|word| tick.wrapping_sub((word >> 32) as u32) < SLOTS as u32)
        .map(|word| word & u64::from(u32::MAX))
        .sum()
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self);
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("min_per_sec", &self.min_per_sec)
            .field("window", &self.window)
            .field("remaining", &self.remaining())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_floor_is_there_without_requests() {
        let budget = RetryBudget::new(0.2, 3, Duration::from_secs(1)).unwrap();
        assert_eq!(budget.remaining(), 3);
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "three a second over one second");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_earn_their_share() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10)).unwrap();
        assert!(!budget.withdraw());
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20, "20 % of 100 requests");
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_expire() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(10)).unwrap();
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 5);
        assert!(budget.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.remaining(), 4, "still in the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            budget.remaining(),
            0,
            "both the requests and the retry expired"
        );
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_reused_after_a_whole_window() {
        let budget = RetryBudget::new(1.0, 0, Duration::from_secs(1)).unwrap();
        budget.deposit();
        tokio::time::advance(Duration::from_secs(1)).await; // same slot index, new tick
        budget.deposit();
        assert_eq!(budget.remaining(), 1, "the old count was not added to");
    }

    #[test]
    fn concurrent_deposits_all_count() {
        let budget =
            std::sync::Arc::new(RetryBudget::new(1.0, 0, Duration::from_secs(60)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        budget.deposit();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(budget.remaining(), 40_000);
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let budget = RetryBudget::new(1000.0, u32::MAX, Duration::from_secs(3600)).unwrap();
        assert!(budget.withdraw());
        assert!(budget.remaining() > 1_000_000_000);
    }

    #[test]
    fn a_late_count_never_clears_a_newer_slot() {
        let slots: [AtomicU64; SLOTS] = Default::default();
        add(&slots, 20);
        add(&slots, 20);
        add(&slots, 10); // same slot index, ten ticks older: dropped
        assert_eq!(sum(&slots, 20), 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            RetryBudget::new(-0.1, 1, Duration::from_secs(1)),
            Err(BudgetError::Ratio(_))
        ));
        assert!(matches!(
            RetryBudget::new(f64::NAN, 1, Duration::from_secs(1)),
            Err(BudgetError::Ratio(_))
        ));
        assert!(matches!(
            RetryBudget::new(0.2, 1, Duration::from_millis(1)),
            Err(BudgetError::Window(_))
        ));
    }
}
