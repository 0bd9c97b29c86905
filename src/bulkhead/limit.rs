//! The slots of a bulkhead: [`SlotChange`], and the shared semaphore and permits behind it.

use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A slot taken or given back, as
/// [`BulkheadLayer::on_slot_change`](super::BulkheadLayer::on_slot_change) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotChange {
    /// A request took a slot: one more in flight.
    Taken,
    /// A request gave its slot back (its body ended, or it was dropped): one fewer.
    Released,
}

pub(super) type SlotHook = Arc<dyn Fn(SlotChange) + Send + Sync>;

/// The slots of one bulkhead, shared by every clone of its layer and services.
#[derive(Clone)]
pub(super) struct Limit {
    pub(super) max: usize,
    permits: Arc<Semaphore>,
    /// Told of every slot taken and given back, when set.
    pub(super) hook: Option<SlotHook>,
}

impl Limit {
    pub(super) fn new(max: NonZeroUsize) -> Self {
        // More permits than a semaphore can count would never all be in use at once anyway.
        let max = max.get().min(Semaphore::MAX_PERMITS);
        Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            hook: None,
        }
    }

    /// A slot, if one is free; never waits.
    pub(super) fn try_admit(&self) -> Option<Permit> {
        // The semaphore is never closed, so an error always means "no slot free".
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        if let Some(hook) = &self.hook {
            hook(SlotChange::Taken);
        }
        Some(Permit {
            _permit: permit,
            hook: self.hook.clone(),
        })
    }

    fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

pub(super) fn max_concurrent(limit: Option<&Limit>) -> Option<usize> {
    limit.map(|limit| limit.max)
}

pub(super) fn in_flight(limit: Option<&Limit>) -> usize {
    limit.map_or(0, Limit::in_flight)
}

/// A request's slot: its own, or shared with the tunnel it may become (see
/// [`UpgradeGuards`](crate::extensions::UpgradeGuards)).
pub(super) enum Slot {
    Owned(#[allow(dead_code, reason = "held for its drop")] Permit),
    Shared(#[allow(dead_code, reason = "held for its drop")] Arc<Permit>),
}

/// One slot of a bulkhead, given back when dropped.
pub(super) struct Permit {
    _permit: OwnedSemaphorePermit,
    /// The hook to tell when this slot is given back.
    hook: Option<SlotHook>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(hook) = &self.hook {
            hook(SlotChange::Released);
        }
    }
}
