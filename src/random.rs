//! A fast, non-cryptographic random number per thread, for jitter and random choices.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// A random `u64` (xorshift64*, one state per thread, seeded from the standard library's
/// random hasher keys). Good for spreading retries and picking candidates; never for
/// anything secret.
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(feature = "proxy")]
/// A random number below `bound` (which must not be zero), without modulo bias worth
/// speaking of for the small bounds it is used with.
pub(crate) fn below(bound: u64) -> u64 {
    ((u128::from(random()) * u128::from(bound)) >> 64) as u64
}
