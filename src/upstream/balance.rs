//! Which endpoint an attempt goes to: the [`Balance`] trait and the built-in policies.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{COOKIE, HeaderName};

use super::endpoint::Change;
use super::pool::{Events, Slot};
use crate::extensions::{PeerAddr, RequestHead};
use crate::forwarded::{TrustedProxies, client_ip};
use crate::random::below;

/// The endpoints a [`Balance`] picks from, with what it may read of each, for one attempt.
pub struct Candidates<'a> {
    pub(super) slots: &'a [Slot],
    /// The clock, read at most once per pick and only when an endpoint is ejected.
    pub(super) now: std::cell::OnceCell<tokio::time::Instant>,
    pub(super) events: &'a Events,
    pub(super) request: RequestHead<'a>,
    /// Endpoints this request was already sent to (bit `index % 64`).
    pub(super) tried: u64,
    pub(super) mode: Mode,
}

/// Which endpoints are eligible: the pool widens it when the narrow one has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Usable and not tried by this request.
    Fresh,
    /// Usable.
    Usable,
    /// Not tried by this request (none is usable, and the pool fails open).
    Untried,
    /// Any.
    Any,
}

impl fmt::Debug for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field("len", &self.slots.len())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<'a> Candidates<'a> {
    /// How many endpoints the pool has (indices run from 0 to this, never 0).
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always `false`: a pool has at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether endpoint `index` may take this attempt: usable (not ejected, passing its
    /// health check) and not already tried by this request (in a pool of more than 64
    /// endpoints, tried ones are told apart by their index modulo 64). When the pool has no such
    /// endpoint it asks again with the condition relaxed (tried ones allowed; then, when it
    /// fails open, unusable ones too).
    #[inline]
    pub fn is_eligible(&self, index: usize) -> bool {
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        let usable = || {
            slot.endpoint.is_usable(
                || *self.now.get_or_init(tokio::time::Instant::now),
                || self.events.changed(index, &slot.upstream, Change::Returned),
            )
        };
        match self.mode {
            Mode::Fresh => self.tried & bit(index) == 0 && usable(),
            Mode::Usable => usable(),
            Mode::Untried => self.tried & bit(index) == 0,
            Mode::Any => true,
        }
    }

    /// Endpoint `index`'s URL.
    pub fn url(&self, index: usize) -> &'a str {
        self.slots[index].upstream.url()
    }

    /// Endpoint `index`'s weight (1 unless configured).
    pub fn weight(&self, index: usize) -> u32 {
        self.slots[index].weight
    }

    /// Requests in flight to endpoint `index`, each counted until its response body ends
    /// (or its upgraded connection closes).
    #[inline]
    pub fn in_flight(&self, index: usize) -> usize {
        self.slots[index].endpoint.in_flight.load(Ordering::Relaxed)
    }

    /// Endpoint `index`'s latency estimate until the response head (peak EWMA), when the
    /// pool measures it ([`Balance::measures_latency`]) and has a sample.
    pub fn latency(&self, index: usize) -> Option<Duration> {
        self.slots[index].endpoint.latency()
    }

    /// The request.
    pub fn request(&self) -> &RequestHead<'a> {
        &self.request
    }

    /// The first eligible endpoint from `start` (any number: it is taken modulo the length)
    /// on, wrapping around.
    #[inline]
    pub fn next_eligible(&self, start: usize) -> Option<usize> {
        let len = self.slots.len();
        let start = start % len;
        (0..len)
            .map(|step| (start + step) % len)
            .find(|&index| self.is_eligible(index))
    }

    /// A uniformly random eligible endpoint: a few random draws, then the `n`-th eligible
    /// one by a random `n`. Used when the policy's own choice is out, so that its share is
    /// spread evenly instead of going to its neighbour.
    pub fn random_eligible(&self) -> Option<usize> {
        let len = self.slots.len() as u64;
        for _ in 0..8 {
            let index = below(len) as usize;
            if self.is_eligible(index) {
                return Some(index);
            }
        }
        let eligible = (0..self.slots.len())
            .filter(|&index| self.is_eligible(index))
            .count();
        let nth = below(eligible as u64) as usize;
        (0..self.slots.len())
            .filter(|&index| self.is_eligible(index))
            .nth(nth)
    }
}

/// Bit of endpoint `index` in a request's tried set.
#[inline]
pub(super) fn bit(index: usize) -> u64 {
    1 << (index % 64)
}

/// Picks the endpoint for each attempt: the seam where balancing strategies plug in. The
/// [`Pool`](super::Pool) calls it with the endpoints it may use and checks the answer; an
/// index that is not [eligible](Candidates::is_eligible) (or `None`) makes the pool take the
/// first eligible one itself.
pub trait Balance: Send + Sync + 'static {
    /// An eligible index of `candidates`, or `None` when there is none.
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize>;

    /// Whether the pool should measure each endpoint's latency for this policy (a clock
    /// read per attempt); default `false`.
    fn measures_latency(&self) -> bool {
        false
    }
}

/// How a pool balances, as the builder and the config name them.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Policy {
    /// The usable endpoints in turn (the default).
    #[default]
    RoundRobin,
    /// The less loaded of two random usable endpoints.
    LeastInFlight(LeastInFlight),
    /// Smooth weighted round robin (nginx's): in proportion to the weights, interleaved.
    Weighted,
    /// Consistent hashing of a key of the request.
    Hash(HashKey),
    /// A balancer of your own.
    Custom(Arc<dyn Balance>),
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeastInFlight(settings) => {
                f.debug_tuple("LeastInFlight").field(settings).finish()
            }
            Self::Hash(key) => f.debug_tuple("Hash").field(key).finish(),
            _ => f.write_str(self.name()),
        }
    }
}

impl Policy {
    /// `round_robin`, `least_in_flight`, `weighted`, `hash` or `custom`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastInFlight(_) => "least_in_flight",
            Self::Weighted => "weighted",
            Self::Hash(_) => "hash",
            Self::Custom(_) => "custom",
        }
    }

    /// The balancer for a pool of `slots`.
    pub(super) fn balancer(&self, slots: &[Slot]) -> Arc<dyn Balance> {
        match self {
            Self::RoundRobin => Arc::new(RoundRobin::default()),
            Self::LeastInFlight(settings) => Arc::new(settings.clone()),
            Self::Weighted => Arc::new(Weighted::new(
                &slots.iter().map(|slot| slot.weight).collect::<Vec<_>>(),
            )),
            Self::Hash(key) => Arc::new(ConsistentHash::new(key.clone(), slots)),
            Self::Custom(balance) => Arc::clone(balance),
        }
    }
}

/// The usable endpoints in turn.
#[derive(Debug, Default)]
struct RoundRobin {
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let len = candidates.len();
        let start = if len == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        if candidates.is_eligible(start) {
            return Some(start);
        }
        candidates.random_eligible()
    }
}

/// `least_in_flight`: power of two random choices over the requests in flight (each counted
/// until its response body ends), optionally weighted by each endpoint's latency (peak
/// EWMA, as linkerd and Finagle do): the candidate with the lower `(in_flight + 1) ×
/// latency` wins.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct LeastInFlight {
    latency: Option<(Duration, Duration)>,
}

impl LeastInFlight {
    /// By requests in flight alone (the example gateway's `least_in_flight`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also by latency: each endpoint's peak-EWMA estimate of the time to its response
    /// head, starting at `initial` (e.g. 30 ms) and forgetting over `decay` (e.g. 10 s).
    pub fn latency_weighted(mut self, initial: Duration, decay: Duration) -> Self {
        self.latency = Some((initial, decay));
        self
    }

    /// The latency weighting's `(initial, decay)`, when it is on.
    pub fn latency(&self) -> Option<(Duration, Duration)> {
        self.latency
    }

    fn load(&self, candidates: &Candidates<'_>, index: usize) -> f64 {
        let in_flight = candidates.in_flight(index) as f64 + 1.0;
        match self.latency {
            None => in_flight,
            Some((initial, _)) => in_flight * candidates.slots[index].endpoint.latency_or(initial),
        }
    }
}

impl Balance for LeastInFlight {
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let len = candidates.len();
        if len == 1 {
            return candidates.is_eligible(0).then_some(0);
        }
        let a = below(len as u64) as usize;
        let mut b = below(len as u64 - 1) as usize;
        if b >= a {
            b += 1;
        }
        let (a, b) = match (candidates.is_eligible(a), candidates.is_eligible(b)) {
            (true, true) => (a, b),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            (false, false) => {
                // Both out: two random ones among the eligible, if any.
                let a = candidates.random_eligible()?;
                match candidates.random_eligible() {
                    Some(b) if b != a => (a, b),
                    _ => return Some(a),
                }
            }
        };
        if self.load(candidates, b) < self.load(candidates, a) {
            Some(b)
        } else {
            Some(a)
        }
    }

    fn measures_latency(&self) -> bool {
        self.latency.is_some()
    }
}

/// Smooth weighted round robin: the sequence nginx's algorithm makes over one full cycle
/// of the weights, computed once and read with an atomic index.
#[derive(Debug)]
struct Weighted {
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

impl Weighted {
    fn new(weights: &[u32]) -> Self {
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<i64> = weights
            .iter()
            .map(|&weight| i64::from(weight.max(1) / divisor))
            .collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (current, weight) in current.iter_mut().zip(&weights) {
                *current += weight;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
                .expect("a pool has an endpoint");
            current[best] -= total;
            sequence.push(u32::try_from(best).unwrap_or(0));
        }
        Self {
            sequence: sequence.into(),
            next: AtomicUsize::new(0),
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balance for Weighted {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let len = self.sequence.len();
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let index = self.sequence[turn] as usize;
        if candidates.is_eligible(index) {
            return Some(index);
        }
        // An endpoint that is out gives its turn to a random turn of the sequence, so the
        // others keep their proportions to each other.
        for _ in 0..8 {
            let index = self.sequence[below(len as u64) as usize] as usize;
            if candidates.is_eligible(index) {
                return Some(index);
            }
        }
        (0..len)
            .map(|step| self.sequence[(turn + step) % len] as usize)
            .find(|&index| candidates.is_eligible(index))
    }
}

/// What a `hash` pool hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address: the peer's, or the right-most untrusted `X-Forwarded-For`
    /// entry when the peer is one of these trusted proxies (as the rate limiter takes it).
    ClientIp(TrustedProxies),
    /// The request path (without the query).
    Path,
}

impl HashKey {
    /// Parses the config's form: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
    pub fn parse(spec: &str) -> Option<Self> {
        match spec {
            "client_ip" => Some(Self::ClientIp(TrustedProxies::none())),
            "path" => Some(Self::Path),
            _ => {
                if let Some(name) = spec.strip_prefix("header:") {
                    HeaderName::try_from(name).ok().map(Self::Header)
                } else if let Some(name) = spec.strip_prefix("cookie:") {
                    (!name.is_empty() && !name.contains([';', '=', ' ']))
                        .then(|| Self::Cookie(name.to_owned()))
                } else {
                    None
                }
            }
        }
    }

    /// The key's hash for `request`, or `None` when it has no such key.
    fn hash(&self, request: &RequestHead<'_>) -> Option<u64> {
        match self {
            Self::Header(name) => request
                .headers()
                .get(name)
                .map(|value| hash(value.as_bytes())),
            Self::Cookie(name) => request
                .headers()
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    (key == name).then(|| hash(value.as_bytes()))
                }),
            Self::ClientIp(trusted) => {
                let peer = PeerAddr::from_extensions(request.extensions())?;
                let ip = client_ip(request.headers(), peer.0.ip(), trusted);
                Some(match ip {
                    IpAddr::V4(ip) => hash(&ip.octets()),
                    IpAddr::V6(ip) => hash(&ip.octets()),
                })
            }
            Self::Path => Some(hash(request.uri().path().as_bytes())),
        }
    }
}

/// Points on the ring per unit of weight.
const POINTS_PER_WEIGHT: u64 = 160;
/// The most points a ring holds, whatever the weights: past a total weight of 1,638 the
/// points are shared out in proportion, and then an endpoint that is removed from the pool
/// (not one that is out) moves a few other keys too.
const MAX_POINTS: u64 = 1 << 18;

/// Consistent hashing: every endpoint owns points on a ring of 64-bit hashes of
/// `"{url}#{n}"`, in proportion to its weight; a key goes to the owner of the first point
/// at or after its hash, or to the next eligible owner after it. The ring depends only on
/// the URLs and weights, so every instance agrees.
#[derive(Debug)]
struct ConsistentHash {
    key: HashKey,
    ring: Box<[(u64, u32)]>,
    /// For each of `2^bits` equal slices of the hash space, the first ring point in it: a
    /// lookup is one table read and a step or two, not a binary search over the ring.
    starts: Box<[u32]>,
    shift: u32,
    /// For requests without the key.
    fallback: RoundRobin,
}

impl ConsistentHash {
    fn new(key: HashKey, slots: &[Slot]) -> Self {
        let total: u64 = slots.iter().map(|slot| u64::from(slot.weight.max(1))).sum();
        let scale = (POINTS_PER_WEIGHT * total).min(MAX_POINTS);
        let mut ring = Vec::new();
        for (index, slot) in slots.iter().enumerate() {
            let points = (u64::from(slot.weight.max(1)) * scale / total).max(1);
            for point in 0..points {
                let name = format!("{}#{point}", slot.upstream.url());
                ring.push((hash(name.as_bytes()), u32::try_from(index).unwrap_or(0)));
            }
        }
        ring.sort_unstable();
        let bits = ring.len().next_power_of_two().trailing_zeros().max(1);
        let shift = 64 - bits;
        let starts = (0..1u64 << bits)
            .map(|slice| {
                let first = ring.partition_point(|&(point, _)| point >> shift < slice);
                u32::try_from(first).unwrap_or(u32::MAX)
            })
            .collect();
        Self {
            key,
            ring: ring.into(),
            starts,
            shift,
            fallback: RoundRobin::default(),
        }
    }
}

impl ConsistentHash {
    /// The index of the first ring point at or after `hash` (`ring.len()` past the last).
    #[inline]
    fn first_at_or_after(&self, hash: u64) -> usize {
        let mut index = self.starts[(hash >> self.shift) as usize] as usize;
        while index < self.ring.len() && self.ring[index].0 < hash {
            index += 1;
        }
        index
    }
}

impl Balance for ConsistentHash {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let Some(hash) = self.key.hash(&candidates.request) else {
            return self.fallback.pick(candidates);
        };
        let len = self.ring.len();
        let start = self.first_at_or_after(hash);
        // Walk on past owners that are out: only their keys move.
        (0..len)
            .map(|step| self.ring[(start + step) % len].1 as usize)
            .find(|&index| candidates.is_eligible(index))
    }
}

/// The hash every `hash` pool uses, stable across processes, builds and platforms:
/// 64-bit FNV-1a, then MurmurHash3's 64-bit finalizer (`fmix64`) to spread the bits.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_interleaves() {
        let weighted = Weighted::new(&[3, 1, 1]);
        assert_eq!(&*weighted.sequence, &[0, 1, 0, 2, 0]);
        let weighted = Weighted::new(&[6, 2, 2]);
        assert_eq!(&*weighted.sequence, &[0, 1, 0, 2, 0], "divided by the gcd");
    }

    #[test]
    fn the_hash_is_stable() {
        // Pinned: every instance, build and platform must agree.
        // Checked against an independent implementation of the same two steps.
        assert_eq!(hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash(b"user-42"), 0xa395_32c7_ab05_1e8d);
        assert_ne!(hash(b"user-42"), hash(b"user-43"));
    }

    #[test]
    fn the_slice_table_finds_what_a_binary_search_finds() {
        for endpoints in [1, 3, 7, 100] {
            let pool = super::super::PoolBuilder::weighted(
                (0..endpoints).map(|i| (format!("http://10.0.0.{i}:80"), 1 + i % 4)),
            )
            .build()
            .unwrap();
            let ring = ConsistentHash::new(HashKey::Path, pool.slots());
            for key in 0..10_000u64 {
                let h = hash(&key.to_be_bytes());
                let expected = ring.ring.partition_point(|&(point, _)| point < h);
                assert_eq!(ring.first_at_or_after(h), expected);
            }
            assert_eq!(ring.first_at_or_after(u64::MAX), ring.ring.len());
            assert_eq!(ring.first_at_or_after(0), 0);
        }
    }

    #[test]
    fn hash_keys_parse() {
        assert_eq!(
            HashKey::parse("header:x-user-id"),
            Some(HashKey::Header(HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Some(HashKey::Cookie("sid".into()))
        );
        assert_eq!(HashKey::parse("path"), Some(HashKey::Path));
        assert!(matches!(
            HashKey::parse("client_ip"),
            Some(HashKey::ClientIp(_))
        ));
        assert_eq!(HashKey::parse("header:"), None);
        assert_eq!(HashKey::parse("cookie:a;b"), None);
        assert_eq!(HashKey::parse("query:x"), None);
    }
}
