//! The failure-rate policy's sliding window of time buckets.
//!
//! The window of length `w` is cut into `n` buckets of `w / n`. A call is
//! counted in the bucket of the time its outcome became known, and stops
//! counting once its bucket is `n` buckets old: so a call counts for at least
//! `w - w / n` and less than `w` after it completed. The window slides bucket
//! by bucket; it is never reset wholesale (except when the breaker closes
//! after a half-open round, which starts afresh).

use tokio::time::Instant;

use crate::config::RatePolicy;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// A ring of time buckets.
#[derive(Debug)]
pub(crate) struct Window {
    origin: Instant,
    width_nanos: u128,
    buckets: Box<[Bucket]>,
}

impl Window {
    pub(crate) fn new(policy: &RatePolicy, now: Instant) -> Self {
        let n = policy.buckets.max(1);
        let width_nanos = (policy.window.as_nanos() / u128::from(n)).max(1);
        Self {
            origin: now,
            width_nanos,
            buckets: vec![Bucket::default(); n as usize].into_boxed_slice(),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / self.width_nanos).unwrap_or(u64::MAX)
    }

    /// Counts one completed call.
    pub(crate) fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        let epoch = self.epoch(now);
        let n = self.buckets.len() as u64;
        let Some(bucket) = self.buckets.get_mut((epoch % n) as usize) else {
            return;
        };
        if bucket.epoch != epoch || bucket.calls == 0 {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        bucket.slow = bucket.slow.saturating_add(u32::from(slow));
    }

    /// (calls, failures, slow calls) in the window ending now.
    pub(crate) fn totals(&self, now: Instant) -> (u32, u32, u32) {
        let epoch = self.epoch(now);
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && b.epoch <= epoch && epoch - b.epoch < n)
            .fold((0u32, 0u32, 0u32), |(c, f, s), b| {
                (
                    c.saturating_add(b.calls),
                    f.saturating_add(b.failures),
                    s.saturating_add(b.slow),
                )
            })
    }

    /// Forgets every call.
    pub(crate) fn clear(&mut self, _now: Instant) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn policy(window_ms: u64, buckets: u32) -> RatePolicy {
        RatePolicy {
            failure_rate_threshold: Some(0.5),
            slow_call: None,
            min_requests: 1,
            window: Duration::from_millis(window_ms),
            buckets,
        }
    }

    proptest! {
        /// The ring agrees with a list of every call: a call counts while its
        /// bucket is one of the last `n` (the current one included).
        #[test]
        fn the_ring_agrees_with_a_list_of_calls(
            window_ms in 1u64..5_000,
            buckets in 1u32..20,
            steps in prop::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200),
        ) {
            let start = Instant::now();
            let policy = policy(window_ms, buckets);
            let mut window = Window::new(&policy, start);
            let width = (u128::from(window_ms) * 1_000_000 / u128::from(buckets)).max(1);
            let mut calls: Vec<(u128, bool, bool)> = Vec::new();
            let mut now = start;
            for (advance, failed, slow) in steps {
                now += Duration::from_millis(advance % (2 * window_ms + 1));
                window.record(now, failed, slow);
                let t = now.duration_since(start).as_nanos();
                calls.push((t / width, failed, slow));
                let current = t / width;
                let live: Vec<_> = calls.iter().filter(|(e, ..)| current - e < u128::from(buckets)).collect();
                let expected = (
                    live.len() as u32,
                    live.iter().filter(|c| c.1).count() as u32,
                    live.iter().filter(|c| c.2).count() as u32,
                );
                prop_assert_eq!(window.totals(now), expected);
            }
            window.clear(now);
            prop_assert_eq!(window.totals(now), (0, 0, 0));
        }
    }

    #[test]
    fn calls_leave_the_window_bucket_by_bucket() {
        let start = Instant::now();
        let mut window = Window::new(&policy(10_000, 10), start);
        window.record(start, true, false);
        window.record(start + Duration::from_millis(999), false, true);
        assert_eq!(window.totals(start + Duration::from_millis(9_999)), (2, 1, 1));
        assert_eq!(window.totals(start + Duration::from_millis(10_000)), (0, 0, 0));
    }
}
