//! The breaker's shared state: closed, open or half-open, in atomics.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{FailureRate, Window};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const STATE_BITS: u64 = 0b11;

fn state_of(word: u64) -> u8 {
    (word & STATE_BITS) as u8
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests pass; failures are counted (consecutively, or as a rate over a window).
    Closed,
    /// Requests are refused with `503` until the cooldown is over.
    Open,
    /// The cooldown is over: a few probe requests pass, the rest are refused; a probe's
    /// success closes the breaker, its failure opens it again.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(state: u8) -> Self {
        match state {
            CLOSED => Self::Closed,
            OPEN => Self::Open,
            _ => Self::HalfOpen,
        }
    }
}

/// A change of a breaker's state, as [`on_state_change`](super::CircuitBreakerLayer::on_state_change)
/// hooks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

pub(super) type Hook = Arc<dyn Fn(Transition) + Send + Sync>;

/// What opens a closed breaker: a number of consecutive failures (the default policy), or a
/// failure rate over a sliding window. Both convert into it, so
/// [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new) takes either.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Trip {
    /// After this many consecutive failures.
    Consecutive(NonZeroU32),
    /// At a failure rate over a sliding window; see [`FailureRate`].
    FailureRate(FailureRate),
}

impl From<NonZeroU32> for Trip {
    fn from(threshold: NonZeroU32) -> Self {
        Self::Consecutive(threshold)
    }
}

impl From<FailureRate> for Trip {
    fn from(policy: FailureRate) -> Self {
        Self::FailureRate(policy)
    }
}

/// The failures a closed breaker has counted, as its policy counts them.
enum Count {
    /// Consecutive failures.
    Consecutive { threshold: u32, failures: AtomicU32 },
    /// Calls and failures over the window.
    Rate(Window),
}

impl Count {
    fn new(policy: Trip) -> Self {
        match policy {
            Trip::Consecutive(threshold) => Self::Consecutive {
                threshold: threshold.get(),
                failures: AtomicU32::new(0),
            },
            Trip::FailureRate(rate) => Self::Rate(Window::new(&rate)),
        }
    }

    /// Starts afresh: the breaker is about to close.
    fn reset(&self) {
        match self {
            Self::Consecutive { failures, .. } => failures.store(0, Ordering::Release),
            Self::Rate(window) => window.clear(),
        }
    }
}

/// What the breaker says to one request.
pub(super) enum Admission {
    /// Closed: pass, and report the outcome with this word (the closed period it belongs
    /// to).
    Pass(u64),
    /// Half-open: pass as a probe; the ticket reports the outcome, or a failure if dropped.
    Probe(ProbeTicket),
    /// Refuse, with how long until a probe may go (zero when probes are already out).
    Refuse(Duration),
}

pub(super) struct Breaker {
    /// The state in the low two bits, and when it last opened (nanoseconds since `epoch`)
    /// above them: one word, so that a transition and its time change together.
    word: AtomicU64,
    /// The failures counted while closed.
    count: Count,
    /// Probes out while half-open.
    probes: AtomicU32,
    epoch: Instant,
    policy: Trip,
    cooldown: Duration,
    pub(super) max_probes: u32,
    pub(super) hook: Option<Hook>,
}

impl Breaker {
    pub(super) fn new(
        policy: Trip,
        cooldown: Duration,
        max_probes: u32,
        hook: Option<Hook>,
    ) -> Self {
        Self {
            word: AtomicU64::new(u64::from(CLOSED)),
            count: Count::new(policy),
            probes: AtomicU32::new(0),
            epoch: Instant::now(),
            policy,
            cooldown,
            max_probes,
            hook,
        }
    }

    /// A new breaker, closed, with this one's policy and cooldown.
    /// Whether `other` trips and cools down as this one does.
    pub(super) fn same_settings(&self, other: &Self) -> bool {
        self.policy == other.policy
            && self.cooldown == other.cooldown
            && self.max_probes == other.max_probes
    }

    pub(super) fn renewed(&self, max_probes: u32, hook: Option<Hook>) -> Self {
        Self::new(self.policy, self.cooldown, max_probes, hook)
    }

    pub(super) fn state(&self) -> BreakerState {
        BreakerState::from_u8(state_of(self.word.load(Ordering::Acquire)))
    }

    /// Nanoseconds since `epoch`, in the 62 bits the word has for them (146 years).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> 2)
    }

    /// The time of a change of state out of `from`: now, except that out of half-open it
    /// is always later than the opening time `from` carries. So no word ever comes back:
    /// every closed period starts after the last opening, and every opening comes after
    /// the last closing or opening. Only a zero cooldown needs this (the breaker can then
    /// open, go half-open and open again within one reading of the clock: the second
    /// half-open period had the first one's word, and a stale probe from the first closed
    /// the breaker); with any other, the cooldown has passed since the opening.
    fn stamp(&self, from: u64) -> u64 {
        let now = self.now();
        if state_of(from) == HALF_OPEN {
            now.max((from >> 2) + 1).min(u64::MAX >> 2)
        } else {
            now
        }
    }

    /// Decides for one request. Closed: one atomic load.
    #[inline]
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) == CLOSED {
            return Admission::Pass(word);
        }
        self.admit_slow()
    }

    #[cold]
    fn admit_slow(self: &Arc<Self>) -> Admission {
        loop {
            let word = self.word.load(Ordering::Acquire);
            match state_of(word) {
                CLOSED => return Admission::Pass(word),
                OPEN => {
                    let open_for = self.now().saturating_sub(word >> 2);
                    let cooldown = u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX);
                    if open_for < cooldown {
                        return Admission::Refuse(Duration::from_nanos(cooldown - open_for));
                    }
                    // The cooldown is over: whoever moves it to half-open, everyone then
                    // competes for the probe slots below.
                    let half_open = (word & !STATE_BITS) | u64::from(HALF_OPEN);
                    if self
                        .word
                        .compare_exchange(word, half_open, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.notify(BreakerState::Open, BreakerState::HalfOpen);
                    }
                }
                _ => {
                    let taken = self
                        .probes
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                            (out < self.max_probes).then_some(out + 1)
                        })
                        .is_ok();
                    if !taken {
                        return Admission::Refuse(Duration::ZERO);
                    }
                    // It may have closed or opened again since the state was read.
                    if self.word.load(Ordering::Acquire) == word {
                        return Admission::Probe(ProbeTicket {
                            breaker: Arc::clone(self),
                            issued: word,
                            done: false,
                        });
                    }
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// The outcome of a request admitted while closed, in the closed period `admitted`. An
    /// outcome that arrives after that period ended (the breaker opened, and maybe closed
    /// again since) changes nothing: it says nothing about the upstream as it is now.
    #[inline]
    pub(super) fn record(&self, admitted: u64, failed: bool) {
        if self.word.load(Ordering::Acquire) != admitted {
            return;
        }
        let trip = match &self.count {
            Count::Consecutive {
                threshold,
                failures,
            } => {
                if !failed {
                    if failures.load(Ordering::Relaxed) != 0 {
                        failures.store(0, Ordering::Relaxed);
                    }
                    return;
                }
                failures.fetch_add(1, Ordering::AcqRel) + 1 >= *threshold
            }
            Count::Rate(window) => window.record(self.now(), failed),
        };
        if trip {
            self.open(admitted);
        }
    }

    /// Opens it, now, if its word is still `from`.
    fn open(&self, from: u64) {
        let open = (self.stamp(from) << 2) | u64::from(OPEN);
        if self
            .word
            .compare_exchange(from, open, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify(BreakerState::from_u8(state_of(from)), BreakerState::Open);
        }
    }

    /// A probe issued in the half-open period `issued` has its outcome. A probe from an
    /// earlier period (still out when the breaker reopened and its cooldown passed) only
    /// gives its slot back.
    fn probe_done(&self, issued: u64, failed: bool) {
        if self.word.load(Ordering::Acquire) == issued {
            if failed {
                self.open(issued);
            } else {
                // The count (or window) starts afresh before anyone is admitted into the new
                // period.
                self.count.reset();
                let closed = (self.stamp(issued) << 2) | u64::from(CLOSED);
                if self
                    .word
                    .compare_exchange(issued, closed, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.notify(BreakerState::HalfOpen, BreakerState::Closed);
                }
            }
        }
        self.probes.fetch_sub(1, Ordering::AcqRel);
    }

    fn notify(&self, from: BreakerState, to: BreakerState) {
        match to {
            BreakerState::Open => tracing::warn!(?from, ?to, "circuit breaker opened"),
            _ => tracing::info!(?from, ?to, "circuit breaker state changed"),
        }
        if let Some(hook) = &self.hook {
            hook(Transition { from, to });
        }
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("count", &self.count)
            .field("cooldown", &self.cooldown)
            .field("max_probes", &self.max_probes)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Consecutive {
                threshold,
                failures,
            } => f
                .debug_struct("Consecutive")
                .field("failures", &failures.load(Ordering::Relaxed))
                .field("threshold", threshold)
                .finish(),
            Self::Rate(window) => window.fmt(f),
        }
    }
}

/// A probe's slot. Its outcome closes or reopens the breaker; dropped without one (the
/// probe was cancelled, or its client hung up), it counts as a failure, so the breaker can
/// never stay half-open waiting for a probe that is gone.
pub(super) struct ProbeTicket {
    breaker: Arc<Breaker>,
    /// The half-open period it was issued in.
    issued: u64,
    done: bool,
}

impl ProbeTicket {
    pub(super) fn finish(mut self, failed: bool) {
        self.done = true;
        self.breaker.probe_done(self.issued, failed);
    }

    /// Gives the probe's slot back without a verdict: its request never reached the
    /// upstream (the gateway refused it further in), so the next request probes instead.
    pub(super) fn release(mut self) {
        self.done = true;
        self.breaker.probes.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.probe_done(self.issued, true);
        }
    }
}
