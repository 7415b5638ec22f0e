//! Instants a duration from now, without overflow.
//!
//! A configured duration can be too large to add to an [`Instant`] (a
//! `max_wait` of `Duration::MAX` meaning "no limit", a huge backoff), and
//! `Instant + Duration` panics when the sum cannot be represented. Every
//! layer computes such instants with [`after`], which stands for "never by
//! itself" with one horizon, [`FAR_FUTURE`], rather than panicking.

use std::time::Duration;

use tokio::time::Instant;

/// The horizon of "never by itself": about thirty years (30 × 365 days),
/// the same as tokio's own far-future instant. No timer, cooldown or
/// deadline of a running process is told apart from "never" by it.
pub const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `now + duration`, or `now +` [`FAR_FUTURE`] when that cannot be
/// represented (so never later than that when it overflows, and never a
/// panic). Should even the horizon overflow the platform's clock, `now`
/// itself is returned rather than a panic.
///
/// ```
/// use palisade_core::time::{FAR_FUTURE, after};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// assert_eq!(after(now, Duration::from_secs(2)), now + Duration::from_secs(2));
/// assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
/// ```
#[inline]
pub fn after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_or_caps_at_the_horizon() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::ZERO), now);
        assert_eq!(after(now, FAR_FUTURE), now + FAR_FUTURE);
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
    }
}
