//! Deadlines that cannot overflow, for the layers with clocks.

use std::time::Duration;

use tokio::time::Instant;

/// Far enough ahead to mean never.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + wait`, or far in the future when that is past what an `Instant` holds (a
/// `Duration::MAX` setting, say), instead of a panic.
pub(crate) fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait).unwrap_or_else(|| at + FAR)
}
