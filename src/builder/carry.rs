//! What a gateway hands over to the gateway that replaces it on a reload
//! ([`GatewayBuilder::keep_state_of`](super::GatewayBuilder::keep_state_of)).

use std::collections::HashMap;

use super::RouteLimit;
use super::observe;
use super::route::Breaker;
use crate::bulkhead::BulkheadLayer;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::classify::SharedClassifier;
use crate::rate_limit::Quota;
use crate::upstream::Pool;

/// Per route prefix, what its stateful layers hold.
pub(super) type RouteStates = HashMap<String, Carried>;

/// One route's stateful layers, whose clones share its rate-limit budgets, breaker and
/// bulkhead slots, with the settings they were built with (a layer carries over only to a
/// route with the same settings).
#[derive(Clone, Default)]
pub(super) struct Carried {
    pub(super) rate_limit: Option<(Quota, RouteLimit)>,
    pub(super) breaker: Option<(Breaker, CircuitBreakerLayer<SharedClassifier>)>,
    /// Its limit is its own setting.
    pub(super) bulkhead: Option<BulkheadLayer>,
    /// Its endpoints' health, matched by URL.
    pub(super) pool: Option<Pool>,
    /// What the observers keep across reloads.
    pub(super) observe: observe::Carried,
}
