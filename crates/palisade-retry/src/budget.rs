//! Retry budgets: how many retries a client may add to its request rate.
//!
//! Two kinds, usable alone or together:
//!
//! - [`RetryBudget`] (on by default), in the style of finagle's and linkerd's
//!   budgets: every request deposits, every retry withdraws, deposits and
//!   withdrawals expire after a time-to-live, and a floor of retries per second
//!   is always available. With the defaults (20 %, 10 retries per second, 10 s)
//!   retries add at most 20 % to the request rate of the last ten seconds, plus
//!   ten per second.
//! - [`Throttle`], gRPC's retry throttling: a token bucket that failures drain
//!   by one token and successes refill by `token_ratio`; retries are allowed
//!   only while more than half the tokens are left.
//!
//! Both are lock-free (atomics only) and cheap enough to consult on every call.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::error::ConfigError;
use tokio::time::Instant;

const LAYER: &str = "retry";
/// How many sliding buckets the time-to-live is cut into.
const BUCKETS: usize = 10;
/// A deposit is worth this many units; a retry costs `UNIT / ratio` units.
const UNIT: i64 = 1000;
/// Deposits are credited to the time buckets in batches of this many (and
/// before every withdrawal).
pub const DEPOSIT_BATCH: u32 = 64;

/// A sliding-window retry budget shared by every clone of the services one
/// layer builds.
///
/// Each request [`deposit`](Self::deposit)s; a retry is allowed when
/// [`withdraw`](Self::withdraw) succeeds. The balance is the floor
/// (`min_per_sec * ttl` retries) plus the deposits of the last `ttl` times
/// `retry_ratio`, minus the retries of the last `ttl`.
///
/// ```
/// use palisade_retry::budget::RetryBudget;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// // No floor: only deposits pay for retries; 20 % of requests may be retried.
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10)).unwrap();
/// assert!(!budget.withdraw());
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// # }
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// `generation << 32 | (value as u32)` per bucket.
    buckets: [AtomicU64; BUCKETS],
    /// Deposits not yet credited to a bucket (see [`RetryBudget::deposit`]).
    pending: AtomicU32,
    start: Instant,
    /// The length of one bucket, in nanoseconds.
    slot_nanos: u64,
    withdraw_cost: i64,
    reserve: i64,
    ratio: f64,
    min_per_sec: u32,
    ttl: Duration,
}

impl RetryBudget {
    /// A budget where retries may add `retry_ratio` (0.2 = 20 %) to the
    /// request rate, with a floor of `min_per_sec` retries per second, and
    /// deposits expiring after `ttl` (1 s to 60 s).
    pub fn new(retry_ratio: f64, min_per_sec: u32, ttl: Duration) -> Result<Self, ConfigError> {
        if !(retry_ratio.is_finite() && retry_ratio > 0.0 && retry_ratio <= 1000.0) {
            return Err(ConfigError::new(LAYER, "budget.retry_ratio", "must be in (0, 1000]"));
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(ConfigError::new(LAYER, "budget.ttl", "must be between 1 s and 60 s"));
        }
        // At most 1000 units per deposit; at ratio 1000 a retry costs one unit.
        let withdraw_cost = ((UNIT as f64) / retry_ratio).round().max(1.0) as i64;
        let ttl_secs = ttl.as_secs_f64();
        let reserve = (f64::from(min_per_sec) * ttl_secs).round() as i64 * withdraw_cost;
        Ok(Self {
            buckets: Default::default(),
            pending: AtomicU32::new(0),
            start: Instant::now(),
            slot_nanos: ((ttl / BUCKETS as u32).as_nanos() as u64).max(1),
            withdraw_cost,
            reserve,
            ratio: retry_ratio,
            min_per_sec,
            ttl,
        })
    }

    /// The fraction of the request rate that retries may add.
    pub fn retry_ratio(&self) -> f64 {
        self.ratio
    }

    /// The floor of retries per second.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// How long deposits and withdrawals count.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn generation(&self) -> u32 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        // u64 arithmetic: a u128 division costs more than the rest of a deposit.
        let nanos = elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()));
        (nanos / self.slot_nanos) as u32
    }

    fn add(&self, amount: i64) {
        self.add_at(self.generation(), amount);
    }

    fn add_at(&self, generation: u32, amount: i64) {
        let bucket = &self.buckets[generation as usize % BUCKETS];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (gen_now, value) = unpack(current);
            let next = if gen_now == generation {
                pack(generation, value.saturating_add(amount))
            } else if (gen_now.wrapping_sub(generation) as i32) > 0 {
                // A thread stalled since it read the clock: the bucket already
                // moved on to a newer generation. Add to that one rather than
                // wiping its amounts with a stale reset.
                pack(gen_now, value.saturating_add(amount))
            } else {
                pack(generation, amount)
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    fn window_sum(&self) -> i64 {
        let generation = self.generation();
        self.buckets
            .iter()
            .map(|b| {
                let (g, v) = unpack(b.load(Ordering::Acquire));
                if (generation.wrapping_sub(g) as usize) < BUCKETS {
                    v
                } else {
                    0
                }
            })
            .sum()
    }

    /// Records one request.
    ///
    /// Deposits are counted with one atomic increment and credited to the
    /// current time bucket in batches of [`DEPOSIT_BATCH`], and before every
    /// withdrawal, so that the request path reads no clock. The cost is a
    /// bounded imprecision: up to `DEPOSIT_BATCH - 1` deposits may be credited
    /// later than they were made (at most `DEPOSIT_BATCH * retry_ratio`
    /// retries of difference).
    #[inline]
    pub fn deposit(&self) {
        if self.pending.fetch_add(1, Ordering::Relaxed) + 1 >= DEPOSIT_BATCH {
            self.credit_pending();
        }
    }

    #[inline(never)]
    fn credit_pending(&self) {
        let pending = self.pending.swap(0, Ordering::AcqRel);
        if pending > 0 {
            self.add(i64::from(pending) * UNIT);
        }
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.credit_pending();
        if self.reserve + self.window_sum() >= self.withdraw_cost {
            self.add(-self.withdraw_cost);
            true
        } else {
            false
        }
    }

    /// How many retries the budget allows now.
    pub fn available(&self) -> u64 {
        self.credit_pending();
        let balance = self.reserve + self.window_sum();
        if balance <= 0 {
            0
        } else {
            (balance / self.withdraw_cost) as u64
        }
    }
}

fn pack(generation: u32, value: i64) -> u64 {
    let value = value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    (u64::from(generation) << 32) | u64::from(value as u32)
}

fn unpack(word: u64) -> (u32, i64) {
    ((word >> 32) as u32, i64::from(word as u32 as i32))
}

/// gRPC's retry throttling: a token bucket of `max_tokens` that each failed
/// attempt drains by one token and each successful call refills by
/// `token_ratio`; retries are allowed only while the bucket holds more than
/// half its tokens. Kept with three decimals, as gRPC specifies.
///
/// ```
/// use palisade_retry::budget::Throttle;
///
/// let throttle = Throttle::new(4, 0.5).unwrap();
/// assert!(throttle.allows_retry());
/// throttle.on_failure();
/// throttle.on_failure(); // 2 tokens left: at half, retries stop
/// assert!(!throttle.allows_retry());
/// throttle.on_success(); // 2.5
/// assert!(throttle.allows_retry());
/// ```
#[derive(Debug)]
pub struct Throttle {
    /// Tokens times 1000.
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

impl Throttle {
    /// A bucket of `max_tokens` (1 to 1000) refilled by `token_ratio` (more than
    /// 0, at most `max_tokens`) per success; it starts full.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, ConfigError> {
        if max_tokens == 0 || max_tokens > 1000 {
            return Err(ConfigError::new(
                LAYER,
                "throttle.max_tokens",
                "must be between 1 and 1000",
            ));
        }
        if !(token_ratio.is_finite() && token_ratio > 0.0 && token_ratio <= f64::from(max_tokens)) {
            return Err(ConfigError::new(
                LAYER,
                "throttle.token_ratio",
                "must be in (0, max_tokens]",
            ));
        }
        let max = u64::from(max_tokens) * 1000;
        let ratio = ((token_ratio * 1000.0).round() as u64).max(1);
        Ok(Self {
            tokens: AtomicU64::new(max),
            max,
            ratio,
        })
    }

    /// The tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Whether a retry may be made now (more than half the tokens left).
    #[inline]
    pub fn allows_retry(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) > self.max / 2
    }

    /// A failed attempt drains one token.
    #[inline]
    pub fn on_failure(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| Some(t.saturating_sub(1000)));
    }

    /// Whether the bucket is full (a success would add nothing).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) >= self.max
    }

    /// A success refills `token_ratio` tokens, up to the maximum.
    #[inline]
    pub fn on_success(&self) {
        let (max, ratio) = (self.max, self.ratio);
        if self.is_full() {
            return;
        }
        let _ = self.tokens.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
            Some(t.saturating_add(ratio).min(max))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stale_add_does_not_reset_a_newer_bucket() {
        let budget = RetryBudget::new(1.0, 0, Duration::from_secs(10)).unwrap();
        let newer = BUCKETS as u32;
        budget.add_at(newer, 3 * UNIT);
        // Same bucket, one window older: a thread that read the clock long ago.
        budget.add_at(0, UNIT);
        assert_eq!(unpack(budget.buckets[0].load(Ordering::Relaxed)), (newer, 4 * UNIT));
        // An older generation in the bucket is reset, as before.
        budget.add_at(2 * newer, UNIT);
        assert_eq!(unpack(budget.buckets[0].load(Ordering::Relaxed)), (2 * newer, UNIT));
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_min_per_sec_times_ttl() {
        let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10)).unwrap();
        assert_eq!(budget.available(), 10);
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_expire_after_ttl() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(10)).unwrap();
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 2);
        assert!(budget.withdraw());
        assert_eq!(budget.available(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.available(), 0, "deposits expired");
        budget.deposit();
        budget.deposit();
        assert_eq!(budget.available(), 1, "the old withdrawal expired too");
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_bucket_by_bucket() {
        let budget = RetryBudget::new(1.0, 0, Duration::from_secs(10)).unwrap();
        budget.deposit();
        assert_eq!(budget.available(), 1, "reading the budget credits pending deposits");
        tokio::time::advance(Duration::from_secs(5)).await;
        budget.deposit();
        assert_eq!(budget.available(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 1, "the first deposit left the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_are_credited_in_batches_without_a_clock() {
        let budget = RetryBudget::new(1.0, 0, Duration::from_secs(10)).unwrap();
        for _ in 0..DEPOSIT_BATCH {
            budget.deposit();
        }
        // The batch was credited at t = 0, when it filled up ...
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.available(), 0, "... so it expired with its bucket");
    }

    #[test]
    fn invalid_budgets_name_the_field() {
        let err = RetryBudget::new(0.0, 1, Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.field(), "budget.retry_ratio");
        let err = RetryBudget::new(0.2, 1, Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.field(), "budget.ttl");
        assert_eq!(Throttle::new(0, 0.1).unwrap_err().field(), "throttle.max_tokens");
        assert_eq!(Throttle::new(10, -1.0).unwrap_err().field(), "throttle.token_ratio");
    }

    #[test]
    fn throttle_stops_at_half_and_refills() {
        let throttle = Throttle::new(10, 0.1).unwrap();
        for _ in 0..4 {
            throttle.on_failure();
        }
        assert!(throttle.allows_retry(), "6 > 5");
        throttle.on_failure();
        assert!(!throttle.allows_retry(), "5 is not above half");
        for _ in 0..20 {
            throttle.on_failure();
        }
        assert_eq!(throttle.tokens(), 0.0);
        for _ in 0..51 {
            throttle.on_success();
        }
        assert!(throttle.allows_retry());
        for _ in 0..1000 {
            throttle.on_success();
        }
        assert_eq!(throttle.tokens(), 10.0);
    }
}
