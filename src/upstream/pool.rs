//! [`Pool`]: a route's endpoints, how they are balanced, and their health.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use serde::Serialize;
use tokio::time::Instant;

use super::balance::{Balance, Candidates, Mode, Policy, bit};
use super::endpoint::{Change, Endpoint, EndpointState};
use super::health::{ActiveHealth, PassiveHealth, ProbeTls, Prober};
use super::url::{Upstream, UpstreamError};
use crate::classify::{FailureClassifier, ResponseHead, SharedClassifier};
use crate::extensions::RequestHead;
use crate::rejection::Fault;

/// What a pool does when none of its endpoints is usable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenNoneHealthy {
    /// Use them all as if they were healthy (the default): a health signal that is wrong
    /// about every endpoint at once should not take the route down.
    #[default]
    Open,
    /// Refuse: `503`, `no healthy upstream`, with `Retry-After`.
    Closed,
}

/// One endpoint of a pool.
pub(super) struct Slot {
    pub(super) upstream: Upstream,
    pub(super) weight: u32,
    pub(super) endpoint: Arc<Endpoint>,
    prober: Option<Arc<Prober>>,
}

/// Something that happened to an endpoint of a pool, for [`PoolBuilder::on_event`].
#[derive(Debug)]
#[non_exhaustive]
pub struct PoolEvent<'a> {
    /// The endpoint's index in the pool (the order it was listed in).
    pub index: usize,
    /// The endpoint's URL.
    pub endpoint: &'a str,
    /// What happened.
    pub kind: PoolEventKind,
}

/// What happened to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum PoolEventKind {
    /// Ejected after consecutive failures, for `duration`; its `ejections`-th ejection
    /// (as its count stands, after the decay).
    Ejected {
        /// Its ejection count.
        ejections: u32,
        /// How long it is out.
        duration: Duration,
    },
    /// Back in service after an ejection.
    Returned,
    /// Marked unhealthy by its active check.
    Unhealthy,
    /// Marked healthy by its active check.
    Healthy,
    /// An active probe ended: `None` when it passed, else why it failed (`connect`,
    /// `timeout`, `status`, `exchange`).
    Probe(Option<&'static str>),
    /// A request to it is in flight (until its response body ends).
    Taken,
    /// A request to it is no longer in flight.
    Released,
}

type EventHook = Arc<dyn Fn(&PoolEvent<'_>) + Send + Sync>;

/// A pool's hooks, and its logging of transitions.
#[derive(Default)]
pub(super) struct Events {
    hooks: Vec<EventHook>,
}

impl Events {
    pub(super) fn emit(&self, event: &PoolEvent<'_>) {
        for hook in &self.hooks {
            hook(event);
        }
    }

    /// Logs a transition once and tells the hooks.
    pub(super) fn changed(&self, index: usize, upstream: &Upstream, change: Change) {
        let endpoint = upstream.url();
        let kind = match change {
            Change::Ejected {
                ejections,
                duration,
            } => {
                tracing::warn!(endpoint, ejections, ?duration, "upstream endpoint ejected");
                PoolEventKind::Ejected {
                    ejections,
                    duration,
                }
            }
            Change::Returned => {
                tracing::info!(endpoint, "upstream endpoint back in service");
                PoolEventKind::Returned
            }
            Change::Unhealthy => {
                tracing::warn!(endpoint, "upstream endpoint failed its health check");
                PoolEventKind::Unhealthy
            }
            Change::Healthy => {
                tracing::info!(endpoint, "upstream endpoint passed its health check");
                PoolEventKind::Healthy
            }
        };
        self.emit(&PoolEvent {
            index,
            endpoint,
            kind,
        });
    }
}

/// Settings for a [`Pool`]; [`build`](Self::build) makes one.
#[derive(Clone)]
#[must_use]
pub struct PoolBuilder {
    endpoints: Vec<(String, u32)>,
    policy: Policy,
    passive: Option<PassiveHealth>,
    active: Option<ActiveHealth>,
    when_none: WhenNoneHealthy,
    classifier: SharedClassifier,
    hooks: Vec<EventHook>,
    previous: Option<Pool>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::UpstreamTls>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("endpoints", &self.endpoints)
            .field("policy", &self.policy)
            .field("passive", &self.passive)
            .field("active", &self.active)
            .field("when_none", &self.when_none)
            .finish_non_exhaustive()
    }
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No endpoint.
    #[error("a pool needs at least one endpoint")]
    Empty,
    /// An endpoint's URL is not usable.
    #[error("endpoint {index}: {source}")]
    Url {
        /// Which endpoint, from 0.
        index: usize,
        /// What is wrong with it.
        source: UpstreamError,
    },
    /// A weight outside 1 to 1000.
    #[error("endpoint {index}: weight {weight} is not between 1 and 1000")]
    Weight {
        /// Which endpoint, from 0.
        index: usize,
        /// The weight.
        weight: u32,
    },
    /// An active check's path that is not a path starting with `/`.
    #[error("active health check: the path must be a path starting with '/'")]
    ProbePath(String),
    /// An active check's interval or timeout (the field named) is zero.
    #[error("active health check: the interval and timeout must be greater than zero")]
    ProbeZero(&'static str),
    /// An endpoint listed twice (give it a weight instead).
    #[error("endpoint {index} is listed twice")]
    Duplicate {
        /// Which endpoint, from 0: the second listing.
        index: usize,
    },
    /// Ejections whose cap is shorter than the first one.
    #[error("passive health: max_ejection must not be less than base_ejection")]
    EjectionBounds,
    /// The TLS settings for the active checks of `https://` endpoints cannot be used.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("active health check over TLS: {0}")]
    Tls(crate::tls::TlsError),
}

impl PoolBuilder {
    /// A pool of `urls` (`http://host[:port][/base]`), each of weight 1.
    pub fn new<I>(urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::weighted(urls.into_iter().map(|url| (url, 1)))
    }

    /// A pool of `(url, weight)` pairs (weights from 1 to 1000).
    pub fn weighted<I, U>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = (U, u32)>,
        U: Into<String>,
    {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|(url, weight)| (url.into(), weight))
                .collect(),
            policy: Policy::RoundRobin,
            passive: Some(PassiveHealth::new()),
            active: None,
            when_none: WhenNoneHealthy::Open,
            classifier: SharedClassifier::default(),
            hooks: Vec::new(),
            previous: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// How attempts are spread (default [`Policy::RoundRobin`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Outlier ejection's settings, or `None` to turn it off (default
    /// [`PassiveHealth::new`]).
    pub fn passive_health(mut self, passive: impl Into<Option<PassiveHealth>>) -> Self {
        self.passive = passive.into();
        self
    }

    /// Active health checks (default none).
    pub fn active_health(mut self, active: impl Into<Option<ActiveHealth>>) -> Self {
        self.active = active.into();
        self
    }

    /// How the active checks reach `https://` endpoints (default: verified against the
    /// system's roots, no client certificate). The [`ProxyClient`](crate::proxy::ProxyClient)
    /// that forwards to the pool has TLS settings of its own
    /// ([`ProxyClientBuilder::tls`](crate::proxy::ProxyClientBuilder::tls)): give both the
    /// same. The gateway builder does.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::tls::UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The client config the probes of `https://` endpoints use, made only when there are
    /// any and active checks are on.
    #[cfg(feature = "tls")]
    fn probe_tls(&self, upstreams: &[Upstream]) -> Result<ProbeTls, PoolError> {
        let https = upstreams
            .iter()
            .any(|u| u.transport() == super::url::Transport::Https);
        if self.active.is_none() || !https {
            return Ok(None);
        }
        let tls = self.tls.clone().unwrap_or_default();
        let mut config = tls.client_config().map_err(PoolError::Tls)?;
        config.alpn_protocols = tls.alpn();
        Ok(Some(Arc::new(config)))
    }

    #[cfg(not(feature = "tls"))]
    fn probe_tls(&self, _upstreams: &[Upstream]) -> Result<ProbeTls, PoolError> {
        Ok(None)
    }

    /// What happens when no endpoint is usable (default [`WhenNoneHealthy::Open`]).
    pub fn when_none_healthy(mut self, when: WhenNoneHealthy) -> Self {
        self.when_none = when;
        self
    }

    /// What counts as an endpoint's failure besides connection errors and timeouts
    /// (default [`ServerErrors`](crate::classify::ServerErrors): every 5xx). A client's
    /// fault never does.
    pub fn classifier(mut self, classifier: impl FailureClassifier) -> Self {
        self.classifier = SharedClassifier::new(classifier);
        self
    }

    /// The same, already shared (the gateway passes the route's).
    pub fn shared_classifier(mut self, classifier: SharedClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Calls `hook` on every [`PoolEvent`]: ejections, returns, health changes, probes and
    /// in-flight changes (the last on the request path: keep it cheap). Later calls add
    /// hooks.
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&PoolEvent<'_>) + Send + Sync + 'static,
    {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Takes over `previous`'s endpoint state for every URL both pools list: ejection and
    /// its count, probe state, failures in a row, requests in flight and the latency
    /// estimate (for a reload). From [`build`](PoolBuilder::build) on, this pool decides
    /// the shared endpoints' ejections (also for attempts still running on `previous`), and
    /// `previous`'s active checks stop: this pool's run instead.
    pub fn keep_state_of(mut self, previous: &Pool) -> Self {
        self.previous = Some(previous.clone());
        self
    }

    /// The endpoints, `(url, weight)`, in their order.
    pub fn endpoints(&self) -> &[(String, u32)] {
        &self.endpoints
    }

    /// Checks the settings as [`build`](Self::build) does, without building anything.
    pub fn check(&self) -> Result<(), PoolError> {
        self.checked().map(drop)
    }

    /// Every check, and the endpoints' URLs, parsed (once).
    fn checked(&self) -> Result<Vec<Upstream>, PoolError> {
        if self.endpoints.is_empty() {
            return Err(PoolError::Empty);
        }
        if let Some(active) = &self.active {
            if !active.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(active.path.as_str()).is_err()
            {
                return Err(PoolError::ProbePath(active.path.clone()));
            }
            if active.interval.is_zero() {
                return Err(PoolError::ProbeZero("interval"));
            }
            if active.timeout.is_zero() {
                return Err(PoolError::ProbeZero("timeout"));
            }
        }
        if let Some(passive) = &self.passive {
            if passive.max_ejection < passive.base_ejection {
                return Err(PoolError::EjectionBounds);
            }
        }
        let mut upstreams = Vec::with_capacity(self.endpoints.len());
        for (index, (url, weight)) in self.endpoints.iter().enumerate() {
            if !(1..=1000).contains(weight) {
                return Err(PoolError::Weight {
                    index,
                    weight: *weight,
                });
            }
            let upstream =
                Upstream::parse(url).map_err(|source| PoolError::Url { index, source })?;
            if self.endpoints[..index]
                .iter()
                .any(|(other, _)| other == upstream.url())
            {
                return Err(PoolError::Duplicate { index });
            }
            upstreams.push(upstream);
        }
        Ok(upstreams)
    }

    /// Checks the settings and builds the pool. With active checks, the probes start at
    /// once when a Tokio runtime is running, else at the first request.
    pub fn build(self) -> Result<Pool, PoolError> {
        let upstreams = self.checked()?;
        let probe_tls = self.probe_tls(&upstreams)?;
        let old: HashMap<&str, &Slot> = self
            .previous
            .iter()
            .flat_map(|pool| pool.inner.slots.iter())
            .map(|slot| (slot.upstream.url(), slot))
            .collect();
        let mut slots = Vec::with_capacity(upstreams.len());
        for (upstream, (_, weight)) in upstreams.into_iter().zip(&self.endpoints) {
            let kept = old.get(upstream.url());
            let endpoint = kept.map_or_else(
                || Arc::new(Endpoint::new()),
                |slot| Arc::clone(&slot.endpoint),
            );
            let prober = self
                .active
                .as_ref()
                .map(|settings| Arc::new(Prober::new(settings.clone(), probe_tls.clone())));
            if prober.is_none() && kept.is_some_and(|slot| slot.prober.is_some()) {
                // The checks are off now: their verdict no longer holds.
                endpoint.clear_probe_state();
            }
            slots.push(Slot {
                upstream,
                weight: *weight,
                endpoint,
                prober,
            });
        }
        let balance = self.policy.balancer(&slots);
        let latency_decay = match &self.policy {
            Policy::LeastInFlight(settings) => settings.latency().map(|(_, decay)| decay),
            _ if balance.measures_latency() => Some(Duration::from_secs(10)),
            _ => None,
        };
        let inner = Arc::new(PoolInner {
            slots: slots.into(),
            balance,
            policy: self.policy,
            passive: self.passive,
            probers_started: AtomicBool::new(self.active.is_none()),
            active: self.active,
            when_none: self.when_none,
            classifier: self.classifier,
            latency_decay,
            eject_lock: Mutex::new(()),
            events: Arc::new(Events { hooks: self.hooks }),
        });
        for slot in &*inner.slots {
            slot.endpoint.set_owner(Arc::downgrade(&inner));
        }
        // The previous pool's probes stop; this one's start.
        if let Some(previous) = &self.previous {
            previous.inner.retire();
        }
        inner.start_probers();
        Ok(Pool { inner })
    }
}

/// A route's upstream endpoints: picks one for each attempt by its [`Policy`], counts each
/// endpoint's requests in flight, ejects endpoints that keep failing ([`PassiveHealth`]) and
/// probes them ([`ActiveHealth`]); see the [module docs](super).
///
/// Cloning is a reference-count bump; clones share everything.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

pub(super) struct PoolInner {
    slots: Box<[Slot]>,
    balance: Arc<dyn Balance>,
    policy: Policy,
    passive: Option<PassiveHealth>,
    active: Option<ActiveHealth>,
    /// Whether the probes run (or there are none).
    probers_started: AtomicBool,
    when_none: WhenNoneHealthy,
    classifier: SharedClassifier,
    /// Set when the policy reads latency: the estimate's decay.
    latency_decay: Option<Duration>,
    /// Held while an ejection is decided, so that the pool's cap holds.
    eject_lock: Mutex<()>,
    events: Arc<Events>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.inner.slots.iter().map(|s| s.upstream.url()).collect();
        f.debug_struct("Pool")
            .field("endpoints", &urls)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// No endpoint is usable and the pool fails closed ([`WhenNoneHealthy::Closed`]): the
/// proxy answers `503` with `Retry-After`.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("no healthy upstream")]
pub struct NoHealthyEndpoint {
    retry_after: Duration,
}

impl NoHealthyEndpoint {
    /// How long until an endpoint may be usable again: the soonest end of an ejection, else
    /// the active checks' interval, else 1 s.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// The endpoints a request was already sent to, carried in the extensions of the parts a
/// proxy hands back to a retry, so that the next attempt goes elsewhere.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tried(pub(crate) u64);

impl PoolInner {
    fn start_probers(&self) {
        if self.probers_started.load(Ordering::Relaxed) {
            return;
        }
        let mut all = true;
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(prober) = &slot.prober {
                all &= prober.start(index, &slot.upstream, &slot.endpoint, &self.events);
            }
        }
        if all {
            self.probers_started.store(true, Ordering::Relaxed);
        }
    }

    /// An attempt to endpoint `index` failed. The newest pool that lists the endpoint (after
    /// a reload, the new one) decides, with its settings and its cap.
    fn failed(&self, index: usize) {
        let endpoint = &self.slots[index].endpoint;
        let owner = endpoint
            .owner()
            .filter(|owner| !std::ptr::eq(Arc::as_ptr(owner), self));
        match owner.as_deref().and_then(|owner| {
            let at = owner
                .slots
                .iter()
                .position(|slot| Arc::ptr_eq(&slot.endpoint, endpoint))?;
            Some((owner, at))
        }) {
            Some((owner, at)) => owner.decide(at),
            None => self.decide(index),
        }
    }

    fn decide(&self, index: usize) {
        let Some(passive) = &self.passive else {
            return;
        };
        let slot = &self.slots[index];
        if !slot.endpoint.failed(passive.consecutive_failures) {
            slot.endpoint.dirty(passive.base_ejection, Instant::now());
            return;
        }
        let decided = {
            let _decide = self
                .eject_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if slot.endpoint.is_ejected(now) {
                return;
            }
            let out = self
                .slots
                .iter()
                .filter(|slot| slot.endpoint.is_ejected(now))
                .count();
            // Never the last: another endpoint must be up (not ejected, not unhealthy).
            let others_up = self.slots.iter().any(|other| {
                !Arc::ptr_eq(&other.endpoint, &slot.endpoint) && other.endpoint.is_up(now)
            });
            if out >= passive.max_ejected(self.slots.len()) || !others_up {
                slot.endpoint.dirty(passive.base_ejection, now);
                return;
            }
            slot.endpoint.eject(
                passive.base_ejection,
                passive.max_ejection,
                passive.draw_jitter(),
                now,
            )
        };
        // The hooks run outside the lock.
        self.events.changed(index, &slot.upstream, decided);
    }

    /// Stops the probes (a pool that took this one's state over runs its own).
    fn retire(&self) {
        self.probers_started.store(true, Ordering::Relaxed);
        for slot in &*self.slots {
            if let Some(prober) = &slot.prober {
                prober.stop();
            }
        }
    }

    /// How long until an endpoint may be usable again, for a `503`'s `Retry-After`.
    fn retry_after(&self) -> Duration {
        let now = Instant::now();
        let soonest = self
            .slots
            .iter()
            .filter_map(|slot| slot.endpoint.ejected_until())
            .map(|until| until.saturating_duration_since(now))
            .min();
        soonest
            .or_else(|| self.active.as_ref().map(|active| active.interval))
            .unwrap_or(Duration::from_secs(1))
    }
}

impl Pool {
    /// A round-robin pool of `urls` with the default passive health and no active checks:
    /// [`PoolBuilder::new`] for the rest.
    pub fn builder<I>(urls: I) -> PoolBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        PoolBuilder::new(urls)
    }

    #[cfg(test)]
    pub(super) fn slots(&self) -> &[Slot] {
        &self.inner.slots
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// How many endpoints it has.
    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    /// Always `false`: a pool has at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// Every endpoint as it stands now, for an admin view.
    pub fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let base = self
            .inner
            .passive
            .as_ref()
            .map_or(Duration::ZERO, |passive| passive.base_ejection);
        PoolStatus {
            policy: self.inner.policy.name(),
            endpoints: self
                .inner
                .slots
                .iter()
                .map(|slot| {
                    let endpoint = &slot.endpoint;
                    let (ejections, ejections_total, probes, probe_failures, since) =
                        endpoint.counts(base, now);
                    let state = endpoint.state(now);
                    EndpointStatus {
                        url: slot.upstream.url().to_owned(),
                        weight: slot.weight,
                        state: state.as_str(),
                        in_flight: endpoint.in_flight.load(Ordering::Relaxed),
                        ejections,
                        ejections_total,
                        ejected_for_secs: endpoint
                            .ejected_until()
                            .filter(|_| state == EndpointState::Ejected)
                            .map(|until| until.saturating_duration_since(now).as_secs_f64()),
                        since_secs: now.saturating_duration_since(since).as_secs_f64(),
                        latency_ms: endpoint
                            .latency()
                            .map(|latency| latency.as_secs_f64() * 1000.0),
                        probes,
                        probe_failures,
                    }
                })
                .collect(),
        }
    }

    /// Picks an endpoint for an attempt of `req`, for a forwarder of your own (the
    /// [`ProxyService`](crate::proxy::ProxyService) does this for you): the [`Picked`]
    /// endpoint counts the attempt in flight until it is dropped, and should be told how the
    /// attempt went ([`answered`](Picked::answered) or [`broke`](Picked::broke)).
    pub fn pick<B>(&self, req: &http::Request<B>) -> Result<Picked, NoHealthyEndpoint> {
        self.pick_for(RequestHead::from(req), Tried::default())
    }

    /// Picks an endpoint for an attempt of `request`, counting it in flight; avoids those
    /// in `tried` while another is usable.
    #[inline]
    pub(crate) fn pick_for(
        &self,
        request: RequestHead<'_>,
        tried: Tried,
    ) -> Result<Picked, NoHealthyEndpoint> {
        let inner = &*self.inner;
        if !inner.probers_started.load(Ordering::Relaxed) {
            inner.start_probers();
        }
        let mut candidates = Candidates {
            slots: &inner.slots,
            now: std::cell::OnceCell::new(),
            events: &inner.events,
            request,
            tried: tried.0,
            mode: Mode::Fresh,
        };
        let modes: &[Mode] = match inner.when_none {
            WhenNoneHealthy::Open => &[Mode::Fresh, Mode::Usable, Mode::Untried, Mode::Any],
            WhenNoneHealthy::Closed => &[Mode::Fresh, Mode::Usable],
        };
        for &mode in modes {
            if mode == Mode::Usable && tried.0 == 0 {
                continue;
            }
            candidates.mode = mode;
            let index = inner
                .balance
                .pick(&candidates)
                .filter(|&index| candidates.is_eligible(index))
                .or_else(|| candidates.next_eligible(0));
            if let Some(index) = index {
                return Ok(self.picked(index));
            }
        }
        Err(NoHealthyEndpoint {
            retry_after: inner.retry_after(),
        })
    }

    #[inline]
    fn picked(&self, index: usize) -> Picked {
        let inner = &*self.inner;
        inner.slots[index]
            .endpoint
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        if !inner.events.hooks.is_empty() {
            inner.events.emit(&PoolEvent {
                index,
                endpoint: inner.slots[index].upstream.url(),
                kind: PoolEventKind::Taken,
            });
        }
        Picked {
            pool: Arc::clone(&self.inner),
            index,
            started: inner.latency_decay.map(|_| Instant::now()),
            reported: false,
        }
    }
}

/// An attempt's endpoint, from [`Pool::pick`]: counted in flight until this is dropped (the
/// proxy keeps it in the response body until the body ends), and told how the attempt went.
/// Dropped untold, the attempt counts as cancelled: a failure when the canceller blamed the
/// upstream ([`Fault::blame`], as the timeout does), else nothing.
pub struct Picked {
    pool: Arc<PoolInner>,
    index: usize,
    started: Option<Instant>,
    reported: bool,
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("endpoint", &self.upstream().url())
            .finish_non_exhaustive()
    }
}

impl Picked {
    /// Where the attempt goes.
    #[inline]
    pub fn upstream(&self) -> &Upstream {
        &self.pool.slots[self.index].upstream
    }

    /// Its index in the pool.
    #[inline]
    pub fn index(&self) -> usize {
        self.index
    }

    /// The upstream's response head arrived: a success, or a failure by the pool's
    /// classifier.
    #[inline]
    pub fn answered<B>(&mut self, res: &Response<B>) {
        self.reported = true;
        let pool = &*self.pool;
        let endpoint = &pool.slots[self.index].endpoint;
        if let (Some(started), Some(decay)) = (self.started, pool.latency_decay) {
            let now = Instant::now();
            endpoint.observe_latency(now.saturating_duration_since(started), decay, now);
        }
        if pool.classifier.is_failure(&ResponseHead::from(res)) {
            pool.failed(self.index);
        } else {
            endpoint.succeeded();
        }
    }

    /// The exchange failed before a response head, by `fault`: only the upstream's counts.
    pub fn broke(&mut self, fault: Fault) {
        self.reported = true;
        if fault == Fault::Upstream {
            self.pool.failed(self.index);
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        // Dropped before an answer: cancelled. A timeout says so (the upstream's fault);
        // a client that left does not.
        if !self.reported && Fault::of_cancellation() == Some(Fault::Upstream) {
            self.pool.failed(self.index);
        }
        let slot = &self.pool.slots[self.index];
        slot.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.pool.events.hooks.is_empty() {
            self.pool.events.emit(&PoolEvent {
                index: self.index,
                endpoint: slot.upstream.url(),
                kind: PoolEventKind::Released,
            });
        }
    }
}

/// A pool as it stands, for an admin view: serializes to the contract's JSON.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// `round_robin`, `least_in_flight`, `weighted`, `hash` or `custom`.
    pub policy: &'static str,
    /// The endpoints, in the pool's order.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint as it stands.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// Its URL.
    pub url: String,
    /// Its weight.
    pub weight: u32,
    /// `healthy`, `ejected` or `unhealthy`.
    pub state: &'static str,
    /// Requests in flight to it.
    pub in_flight: usize,
    /// Its ejection count as it stands (it decays while the endpoint does well).
    pub ejections: u32,
    /// Every ejection since it was first listed.
    pub ejections_total: u64,
    /// While ejected: seconds until it returns.
    pub ejected_for_secs: Option<f64>,
    /// Seconds since its state last changed.
    pub since_secs: f64,
    /// Its latency estimate (peak EWMA of the time to the response head), in milliseconds,
    /// when its pool measures latency.
    pub latency_ms: Option<f64>,
    /// Active probes sent.
    pub probes: u64,
    /// Active probes failed.
    pub probe_failures: u64,
}

/// The bit set of `index` added to `tried`.
pub(crate) fn with_tried(tried: Tried, index: usize) -> Tried {
    Tried(tried.0 | bit(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> http::Request<()> {
        http::Request::new(())
    }

    /// Picks until endpoint `index` comes up, then fails an attempt on it.
    fn fail_on(pool: &Pool, index: usize) {
        loop {
            let mut picked = pool.pick(&request()).unwrap();
            if picked.index() == index {
                picked.broke(Fault::Upstream);
                return;
            }
        }
    }

    fn states(pool: &Pool) -> Vec<&'static str> {
        pool.status().endpoints.iter().map(|e| e.state).collect()
    }

    const URLS: [&str; 4] = [
        "http://10.0.0.1:80",
        "http://10.0.0.2:80",
        "http://10.0.0.3:80",
        "http://10.0.0.4:80",
    ];

    #[tokio::test]
    async fn after_a_reload_the_new_pool_decides_even_for_the_old_pools_attempts() {
        let passive = PassiveHealth::new().consecutive_failures(1);
        let old = Pool::builder(URLS)
            .passive_health(passive.clone())
            .build()
            .unwrap();
        // The new pool has two of the four: its cap is one ejection.
        let new = Pool::builder(URLS[..2].iter().copied())
            .passive_health(passive)
            .keep_state_of(&old)
            .build()
            .unwrap();
        fail_on(&new, 0);
        assert_eq!(states(&new), ["ejected", "healthy"]);
        // An attempt still running on the old pool fails on the other: the old pool's cap
        // (two of four) would eject it and leave the new pool with nothing.
        fail_on(&old, 1);
        assert_eq!(
            states(&new),
            ["ejected", "healthy"],
            "never the last of the new pool"
        );
    }

    #[tokio::test]
    async fn never_ejects_the_last_endpoint_that_is_up() {
        let pool = Pool::builder(URLS[..2].iter().copied())
            .passive_health(PassiveHealth::new().consecutive_failures(1))
            .build()
            .unwrap();
        // The first is unhealthy (its checks failed): the second is the last one up.
        pool.inner.slots[0]
            .endpoint
            .probed(false, 1, 1, Instant::now());
        fail_on(&pool, 1);
        assert_eq!(states(&pool), ["unhealthy", "healthy"]);
    }

    #[tokio::test]
    async fn in_flight_counts_each_pick_until_it_is_dropped() {
        let pool = Pool::builder(URLS[..1].iter().copied()).build().unwrap();
        let first = pool.pick(&request()).unwrap();
        let second = pool.pick(&request()).unwrap();
        assert_eq!(pool.status().endpoints[0].in_flight, 2);
        drop(first);
        assert_eq!(pool.status().endpoints[0].in_flight, 1);
        drop(second);
        assert_eq!(pool.status().endpoints[0].in_flight, 0);
    }

    #[test]
    fn bad_pools_are_refused() {
        let error = |builder: PoolBuilder| builder.build().unwrap_err().to_string();
        assert_eq!(
            error(Pool::builder(Vec::<String>::new())),
            "a pool needs at least one endpoint"
        );
        assert_eq!(
            error(Pool::builder([URLS[0], URLS[1], URLS[0]])),
            "endpoint 2 is listed twice"
        );
        assert_eq!(
            error(PoolBuilder::weighted([(URLS[0], 1001)])),
            "endpoint 0: weight 1001 is not between 1 and 1000"
        );
        assert!(
            error(Pool::builder([URLS[0]]).active_health(ActiveHealth::new("/he alth")))
                .starts_with("active health check: the path")
        );
    }
}
