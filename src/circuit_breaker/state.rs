//! The breaker's shared state: closed, open or half-open, in atomics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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
    /// Requests pass; consecutive failures are counted.
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
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// Probes out while half-open.
    probes: AtomicU32,
    epoch: Instant,
    threshold: u32,
    cooldown: Duration,
    pub(super) max_probes: u32,
    pub(super) hook: Option<Hook>,
}

impl Breaker {
    pub(super) fn new(
        threshold: u32,
        cooldown: Duration,
        max_probes: u32,
        hook: Option<Hook>,
    ) -> Self {
        Self {
            word: AtomicU64::new(u64::from(CLOSED)),
            failures: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            epoch: Instant::now(),
            threshold,
            cooldown,
            max_probes,
            hook,
        }
    }

    /// A new breaker, closed, with this one's threshold and cooldown.
    pub(super) fn renewed(&self, max_probes: u32, hook: Option<Hook>) -> Self {
        Self::new(self.threshold, self.cooldown, max_probes, hook)
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
        if !failed {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            self.open(admitted);
        }
    }

    /// Opens it, now, if its word is still `from`.
    fn open(&self, from: u64) {
        let open = (self.now() << 2) | u64::from(OPEN);
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
                // The count starts afresh before anyone is admitted into the new period.
                self.failures.store(0, Ordering::Release);
                let closed = (self.now() << 2) | u64::from(CLOSED);
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
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .field("threshold", &self.threshold)
            .field("cooldown", &self.cooldown)
            .field("max_probes", &self.max_probes)
            .finish_non_exhaustive()
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
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.probe_done(self.issued, true);
        }
    }
}
