//! Adaptive concurrency limits: AIMD and a latency gradient.
//!
//! Both algorithms see every call whose outcome is known (the permit's
//! [`Settle`](palisade_body::Settle)), with its latency measured from the
//! moment the permit was granted to the moment the **response head** (or the
//! error) arrived — not to the end of the body: a peer that serves long
//! streams promptly is not slow, and measuring to the end of its streams
//! would starve it. The outcome itself still waits for the end of the body
//! (a gRPC status in the trailers). Calls whose outcome is
//! [`Ignored`](palisade_core::classify::Outcome::Ignored) (a business error a
//! classifier ignores, the caller's deadline, a gRPC stream dropped before its
//! trailers) move nothing; what other abandoned calls mean is the protocol's
//! [`AbandonPolicy`](palisade_core::classify::AbandonPolicy).
//!
//! Neither grows the limit while it is not used: a call that finishes with
//! fewer than half the limit in flight says nothing about whether more
//! concurrency would be served well (the "app-limited" rule of Netflix's
//! concurrency-limits).

use std::time::Duration;

use palisade_core::classify::Outcome;
use palisade_core::error::ConfigError;

use crate::config::{check_bounds, config_error};

/// Additive increase, multiplicative decrease.
///
/// - A success faster than `latency_threshold`, with at least half the limit
///   in flight, raises the limit by `increase_by`.
/// - A failure, or a success as slow as `latency_threshold` or slower,
///   multiplies it by `decrease_ratio` (lowering it by at least one).
/// - The limit stays within `[floor, ceiling]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AimdConfig {
    /// The lowest limit (default 1).
    pub floor: usize,
    /// The highest limit (default 200).
    pub ceiling: usize,
    /// Added on a fast success (default 1).
    pub increase_by: usize,
    /// Multiplies the limit on a failure or a slow call, in (0, 1) (default 0.9).
    pub decrease_ratio: f64,
    /// A call this slow counts as a sign of overload (default 1 s).
    pub latency_threshold: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            floor: 1,
            ceiling: 200,
            increase_by: 1,
            decrease_ratio: 0.9,
            latency_threshold: Duration::from_secs(1),
        }
    }
}

impl AimdConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_bounds(self.floor, self.ceiling)?;
        if !(self.decrease_ratio > 0.0 && self.decrease_ratio < 1.0) {
            return Err(config_error(
                "decrease_ratio",
                format!("must lie in (0, 1), got {}", self.decrease_ratio),
            ));
        }
        if self.increase_by == 0 {
            return Err(config_error("increase_by", "must be at least 1, got 0".into()));
        }
        if self.latency_threshold.is_zero() {
            return Err(config_error("latency_threshold", "must be greater than zero".into()));
        }
        Ok(())
    }
}

/// A latency gradient in the style of Netflix concurrency-limits' `Gradient2Limit`.
///
/// It keeps two views of latency: the latest sample (`rtt`) and a long-term
/// exponential average over `long_window` samples (`rtt_noload`, the latency
/// when the peer is not overloaded). On each sample:
///
/// ```text
/// gradient = clamp(rtt_tolerance * rtt_noload / rtt, 0.5, 1.0)   (0.5 on a failure)
/// target   = estimate * gradient + queue_size
/// estimate = estimate * (1 - smoothing) + target * smoothing, within [floor, ceiling]
/// ```
///
/// When latency rises beyond `rtt_tolerance` times the long-term latency the
/// gradient falls below 1 and the limit shrinks; while latency is normal the
/// gradient is 1 and `queue_size` of headroom lets the limit grow. When the
/// long-term average is more than twice the latest sample (the peer
/// recovered), it decays by 5% per sample so the algorithm does not stay
/// anchored to an old overload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientConfig {
    /// The lowest limit (default 1).
    pub floor: usize,
    /// The highest limit (default 200).
    pub ceiling: usize,
    /// How far the estimate moves toward each new target, in (0, 1] (default 0.2).
    pub smoothing: f64,
    /// How much slower than the long-term latency a call may be before the limit shrinks, at least 1 (default 1.5).
    pub rtt_tolerance: f64,
    /// Samples in the long-term latency average (default 600).
    pub long_window: u32,
    /// Headroom added to the target: calls that may queue at the peer (default 4).
    pub queue_size: usize,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            floor: 1,
            ceiling: 200,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            long_window: 600,
            queue_size: 4,
        }
    }
}

impl GradientConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_bounds(self.floor, self.ceiling)?;
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(config_error(
                "smoothing",
                format!("must lie in (0, 1], got {}", self.smoothing),
            ));
        }
        if !(self.rtt_tolerance >= 1.0 && self.rtt_tolerance.is_finite()) {
            return Err(config_error(
                "rtt_tolerance",
                format!("must be at least 1, got {}", self.rtt_tolerance),
            ));
        }
        if self.long_window == 0 {
            return Err(config_error("long_window", "must be at least 1, got 0".into()));
        }
        if self.queue_size == 0 {
            // Without headroom the target never exceeds the estimate: one latency
            // spike would pin the limit at the floor for good.
            return Err(config_error(
                "queue_size",
                "must be at least 1, or the limit can never grow".into(),
            ));
        }
        Ok(())
    }
}

/// The running state of an adaptive limit.
#[derive(Debug)]
pub(crate) enum LimitState {
    Aimd {
        config: AimdConfig,
    },
    Gradient {
        config: GradientConfig,
        estimate: f64,
        long_rtt: Option<f64>,
    },
}

impl LimitState {
    pub(crate) fn new(adaptive: crate::config::Adaptive, initial: usize) -> Self {
        match adaptive {
            crate::config::Adaptive::Aimd(config) => LimitState::Aimd { config },
            crate::config::Adaptive::Gradient(config) => LimitState::Gradient {
                config,
                estimate: initial as f64,
                long_rtt: None,
            },
        }
    }

    /// The limit was set from outside (a handle): start from it.
    pub(crate) fn reset(&mut self, limit: usize) {
        if let LimitState::Gradient { estimate, .. } = self {
            *estimate = limit as f64;
        }
    }

    pub(crate) fn bounds(&self) -> (usize, usize) {
        match self {
            LimitState::Aimd { config } => (config.floor, config.ceiling),
            LimitState::Gradient { config, .. } => (config.floor, config.ceiling),
        }
    }

    /// One call ended with `outcome` after `rtt`, with `in_flight` permits
    /// held (its own included) under `limit`. Returns the new limit.
    pub(crate) fn update(&mut self, limit: usize, in_flight: usize, outcome: Outcome, rtt: Duration) -> usize {
        if outcome == Outcome::Ignored {
            return limit;
        }
        match self {
            LimitState::Aimd { config } => {
                let slow = rtt >= config.latency_threshold;
                let new = if outcome == Outcome::Failure || slow {
                    let cut = (limit as f64 * config.decrease_ratio) as usize;
                    cut.min(limit.saturating_sub(1))
                } else if in_flight * 2 >= limit {
                    limit.saturating_add(config.increase_by)
                } else {
                    limit
                };
                new.clamp(config.floor, config.ceiling)
            }
            LimitState::Gradient {
                config,
                estimate,
                long_rtt,
            } => {
                let sample = rtt.as_secs_f64().max(1e-9);
                let long = match *long_rtt {
                    None => sample,
                    Some(long) => {
                        let mut long = long + (sample - long) / f64::from(config.long_window);
                        if long / sample > 2.0 {
                            long *= 0.95;
                        }
                        long
                    }
                };
                *long_rtt = Some(long);
                let gradient = if outcome == Outcome::Failure {
                    0.5
                } else {
                    if (in_flight as f64) < *estimate / 2.0 {
                        return limit;
                    }
                    (config.rtt_tolerance * long / sample).clamp(0.5, 1.0)
                };
                let target = *estimate * gradient + config.queue_size as f64;
                let next = *estimate * (1.0 - config.smoothing) + target * config.smoothing;
                *estimate = next.clamp(config.floor as f64, config.ceiling as f64);
                (*estimate as usize).clamp(config.floor, config.ceiling)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Adaptive;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn aimd_grows_on_fast_successes_under_load_and_cuts_on_failure_or_latency() {
        let mut s = LimitState::new(Adaptive::Aimd(AimdConfig::default()), 10);
        assert_eq!(s.update(10, 10, Outcome::Success, 10 * MS), 11);
        assert_eq!(s.update(10, 2, Outcome::Success, 10 * MS), 10, "app-limited: no growth");
        assert_eq!(s.update(10, 10, Outcome::Failure, 10 * MS), 9);
        assert_eq!(
            s.update(10, 10, Outcome::Success, 2000 * MS),
            9,
            "slow counts as overload"
        );
        assert_eq!(s.update(3, 3, Outcome::Failure, MS), 2, "always at least one lower");
        assert_eq!(s.update(1, 1, Outcome::Failure, MS), 1, "never below the floor");
        assert_eq!(s.update(10, 10, Outcome::Ignored, 2000 * MS), 10);
    }

    #[test]
    fn gradient_shrinks_when_latency_rises_and_grows_when_it_is_normal() {
        let config = GradientConfig {
            long_window: 100,
            ..GradientConfig::default()
        };
        let mut s = LimitState::new(Adaptive::Gradient(config), 20);
        let mut limit = 20;
        for _ in 0..20 {
            limit = s.update(limit, limit, Outcome::Success, 10 * MS);
        }
        let grown = limit;
        assert!(grown > 20, "normal latency grows the limit: {grown}");
        for _ in 0..20 {
            limit = s.update(limit, limit, Outcome::Success, 100 * MS);
        }
        assert!(limit < grown / 2, "10x latency shrinks the limit: {grown} -> {limit}");
        let low = limit;
        for _ in 0..40 {
            limit = s.update(limit, limit, Outcome::Success, 10 * MS);
        }
        assert!(limit > low, "it recovers: {low} -> {limit}");
        let before = limit;
        limit = s.update(limit, limit, Outcome::Failure, 10 * MS);
        assert!(limit < before);
    }
}
