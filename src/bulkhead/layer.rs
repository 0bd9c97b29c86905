//! [`BulkheadLayer`], and how it makes its service.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tower::Layer;

use super::limit::{Limit, SlotChange, in_flight, max_concurrent};
use super::service::Bulkhead;
use crate::rejection::ProblemJson;

/// Caps the requests in flight and answers `429` to the excess; see the [module docs](super).
///
/// Cloning is a reference-count bump: the clones, and every service they make, share one set
/// of slots.
#[must_use]
pub struct BulkheadLayer<R = ProblemJson> {
    limit: Option<Limit>,
    render: R,
}

impl BulkheadLayer {
    /// At most `max_concurrent` requests in flight, counted until each response body ends.
    pub fn new(max_concurrent: NonZeroUsize) -> Self {
        Self {
            limit: Some(Limit::new(max_concurrent)),
            render: ProblemJson,
        }
    }

    /// A layer that admits every request and holds no slot, so that services with and
    /// without a limit have one type (the gateway builder uses it for routes without a
    /// bulkhead). Its response body is the same [`ResponseBody`](super::ResponseBody), never holding a slot.
    pub fn unlimited() -> Self {
        Self {
            limit: None,
            render: ProblemJson,
        }
    }
}

impl<R> BulkheadLayer<R> {
    /// Renders the `429` with `render` instead of problem+json.
    pub fn with_rejection<R2>(self, render: R2) -> BulkheadLayer<R2> {
        BulkheadLayer {
            limit: self.limit,
            render,
        }
    }

    /// How many requests may be in flight at once; `None` when there is no limit.
    pub fn max_concurrent(&self) -> Option<usize> {
        max_concurrent(self.limit.as_ref())
    }

    /// Calls `hook` each time a request takes a slot and each time a slot is given back, on
    /// the task that takes or gives it (keep it cheap: it runs on the request path). A
    /// layer without a limit never calls it. The gateway's metrics keep
    /// `gateway_bulkhead_in_flight{route}` with it. Set it before the layer is used: slots
    /// taken before keep the hook they were taken with (none), so their release is not
    /// reported either.
    pub fn on_slot_change<F>(mut self, hook: F) -> Self
    where
        F: Fn(SlotChange) + Send + Sync + 'static,
    {
        if let Some(limit) = &mut self.limit {
            limit.hook = Some(Arc::new(hook));
        }
        self
    }

    /// This layer with `other`'s slots (and `other`'s slot hook), when both have the same
    /// limit: requests still in flight through `other` count against this layer too. For a
    /// reload that replaces a stack while it serves (the gateway builder's
    /// `GatewayBuilder::keep_state_of` calls it); with
    /// different limits, or either without one, this layer keeps its own slots.
    pub fn keep_state_of<R2>(mut self, other: &BulkheadLayer<R2>) -> Self {
        if let (Some(mine), Some(theirs)) = (&self.limit, &other.limit) {
            if mine.max == theirs.max {
                self.limit = Some(theirs.clone());
            }
        }
        self
    }

    /// How many requests are in flight now, across every clone of this layer and its services
    /// (always 0 for a layer without a limit, which counts nothing).
    pub fn in_flight(&self) -> usize {
        in_flight(self.limit.as_ref())
    }
}

impl<R: Clone> Clone for BulkheadLayer<R> {
    fn clone(&self) -> Self {
        Self {
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

impl<R> fmt::Debug for BulkheadLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<S, R: Clone> Layer<S> for BulkheadLayer<R> {
    type Service = Bulkhead<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            limit: self.limit.clone(),
            render: self.render.clone(),
        }
    }
}

// The service's constructors go through the layer, so they live here: `service.rs` need not
// know the layer.
impl<S> Bulkhead<S> {
    /// Wraps `inner`, with at most `max_concurrent` requests in flight.
    pub fn new(inner: S, max_concurrent: NonZeroUsize) -> Self {
        BulkheadLayer::new(max_concurrent).layer(inner)
    }

    /// A [`BulkheadLayer`].
    pub fn layer(max_concurrent: NonZeroUsize) -> BulkheadLayer {
        BulkheadLayer::new(max_concurrent)
    }
}
