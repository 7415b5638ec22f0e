//! Configuration of a circuit breaker, built and validated by [`CircuitBreakerConfigBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::peer::PeerId;

const LAYER: &str = "circuit breaker";

/// The consecutive-failures trip policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsecutivePolicy {
    /// How many consecutive failures trip the breaker.
    pub failure_threshold: u32,
    /// A failure continues the run only when it comes less than this after the previous one.
    pub failure_window: Duration,
}

/// The failure-rate (and slow-call-rate) trip policy over a sliding window of time buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RatePolicy {
    /// Trips when failures / calls reaches this; `None` when only the slow-call rate is watched.
    pub failure_rate_threshold: Option<f64>,
    /// Calls slower than the duration count as slow; trips when slow / calls reaches the rate.
    pub slow_call: Option<(Duration, f64)>,
    /// The rate is judged only once at least this many calls lie in the window.
    pub min_requests: u32,
    /// The length of the sliding window.
    pub window: Duration,
    /// How many buckets the window is cut into.
    pub buckets: u32,
}

/// A validated circuit-breaker configuration. Make one with [`CircuitBreakerConfig::builder`].
#[derive(Clone)]
pub struct CircuitBreakerConfig {
    pub(crate) peer: Option<PeerId>,
    pub(crate) consecutive: Option<ConsecutivePolicy>,
    pub(crate) rate: Option<RatePolicy>,
    pub(crate) backoff: Backoff,
    pub(crate) half_open_max_probes: u32,
    pub(crate) success_threshold: u32,
    pub(crate) probe_timeout: Duration,
    pub(crate) listeners: Listeners,
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("peer", &self.peer)
            .field("consecutive", &self.consecutive)
            .field("rate", &self.rate)
            .field("cooldown", &self.cooldown())
            .field("max_cooldown", &self.max_cooldown())
            .field("jitter", &self.backoff.jitter())
            .field("half_open_max_probes", &self.half_open_max_probes)
            .field("success_threshold", &self.success_threshold)
            .field("probe_timeout", &self.probe_timeout)
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// A builder with the defaults: the consecutive policy (3 failures, each
    /// within 60 s of the previous one), no failure-rate policy, cooldown 10 s
    /// doubling up to 120 s without jitter, 1 probe at a time, 2 probe
    /// successes to close, probe timeout `max(cooldown, 10 s)`: the seed
    /// system's numbers ([`seed`](Self::seed)). For a per-peer breaker inside
    /// a balancer, start from [`for_balancer`](Self::for_balancer) instead.
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder::default()
    }

    /// The seed system's numbers, which are also [`builder`](Self::builder)'s
    /// defaults: 3 consecutive failures (each within 60 s of the previous
    /// one), cooldown 10 s doubling up to 120 s, 1 probe at a time, 2 probe
    /// successes to close. Right for a standalone breaker in front of one
    /// service.
    pub fn seed() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder::default()
    }

    /// The defaults for a per-peer breaker inside a balancer
    /// (`palisade-discovery`), chosen with the measurements quoted in the
    /// crate docs ("Which numbers inside a balancer"): 5 consecutive failures
    /// (each within 60 s of the previous one), no failure-rate policy,
    /// cooldown 1 s doubling up to 10 s, 1 probe at a time, 2 probe
    /// successes to close, probe timeout 10 s. Tune it like any builder.
    pub fn for_balancer() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder {
            failure_threshold: 5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(10),
            ..CircuitBreakerConfigBuilder::default()
        }
    }

    /// The peer this breaker guards, if named.
    pub fn peer(&self) -> Option<&PeerId> {
        self.peer.as_ref()
    }

    /// The consecutive policy, if on.
    pub fn consecutive(&self) -> Option<&ConsecutivePolicy> {
        self.consecutive.as_ref()
    }

    /// The failure-rate policy, if on.
    pub fn rate(&self) -> Option<&RatePolicy> {
        self.rate.as_ref()
    }

    /// The base cooldown.
    pub fn cooldown(&self) -> Duration {
        self.backoff.base()
    }

    /// The largest cooldown.
    pub fn max_cooldown(&self) -> Duration {
        self.backoff.cap()
    }

    /// The shortest cooldown jitter can produce: half the base cooldown (see
    /// [`CircuitBreakerConfigBuilder::jitter`]).
    pub fn cooldown_floor(&self) -> Duration {
        self.backoff.base() / 2
    }

    /// The most probes in flight while half-open.
    pub fn half_open_max_probes(&self) -> u32 {
        self.half_open_max_probes
    }

    /// The probe successes that close a half-open breaker.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// How long a half-open breaker waits for its probes before reclaiming their slots.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    /// The same configuration for another peer (events and errors name it).
    pub fn with_peer(mut self, peer: impl Into<PeerId>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// The cooldown backoff policy.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

/// Builds a [`CircuitBreakerConfig`]; [`build`](Self::build) validates it.
#[derive(Clone)]
pub struct CircuitBreakerConfigBuilder {
    peer: Option<PeerId>,
    consecutive: bool,
    failure_threshold: u32,
    failure_window: Duration,
    failure_rate_threshold: Option<f64>,
    slow_call_duration: Option<Duration>,
    slow_call_rate_threshold: f64,
    min_requests: u32,
    rate_window: Duration,
    rate_buckets: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    jitter: Jitter,
    half_open_max_probes: u32,
    success_threshold: u32,
    probe_timeout: Option<Duration>,
    listeners: Listeners,
}

impl fmt::Debug for CircuitBreakerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfigBuilder")
            .field("peer", &self.peer)
            .field("failure_threshold", &self.failure_threshold)
            .finish_non_exhaustive()
    }
}

impl Default for CircuitBreakerConfigBuilder {
    fn default() -> Self {
        Self {
            peer: None,
            consecutive: true,
            failure_threshold: 3,
            failure_window: Duration::from_secs(60),
            failure_rate_threshold: None,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            min_requests: 20,
            rate_window: Duration::from_secs(60),
            rate_buckets: 10,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(120),
            jitter: Jitter::None,
            half_open_max_probes: 1,
            success_threshold: 2,
            probe_timeout: None,
            listeners: Listeners::new(),
        }
    }
}

impl CircuitBreakerConfigBuilder {
    /// Names the peer this breaker guards (in events and in [`CircuitOpen`](crate::CircuitOpen)).
    pub fn peer(mut self, peer: impl Into<PeerId>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Consecutive failures that trip the breaker. Default 3. Turns the consecutive policy on.
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self.consecutive = true;
        self
    }

    /// Each failure of a run must come less than this after the previous one,
    /// or the count starts again at 1. Default 60 s.
    pub fn failure_window(mut self, window: Duration) -> Self {
        self.failure_window = window;
        self
    }

    /// Turns the consecutive policy off (use the failure-rate policy alone).
    pub fn without_consecutive(mut self) -> Self {
        self.consecutive = false;
        self
    }

    /// Turns the failure-rate policy on: trips when failures / calls in the
    /// window reaches `threshold`, in `(0, 1]` (0.5 is the usual choice).
    pub fn failure_rate_threshold(mut self, threshold: f64) -> Self {
        self.failure_rate_threshold = Some(threshold);
        self
    }

    /// The calls that must lie in the window before a rate is judged. Default 20.
    pub fn min_requests(mut self, n: u32) -> Self {
        self.min_requests = n;
        self
    }

    /// The sliding window of the rate policies. Default 60 s.
    pub fn rate_window(mut self, window: Duration) -> Self {
        self.rate_window = window;
        self
    }

    /// How many buckets the rate window is cut into, 1 to 1000. Default 10.
    pub fn rate_buckets(mut self, n: u32) -> Self {
        self.rate_buckets = n;
        self
    }

    /// Turns the slow-call policy on: a call taking longer than `duration`
    /// (from admission until its outcome is known, body included) is slow,
    /// whether it succeeded or not.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// The slow-call rate that trips, in `(0, 1]`. Default 1.0 (every call in the window slow).
    pub fn slow_call_rate_threshold(mut self, threshold: f64) -> Self {
        self.slow_call_rate_threshold = threshold;
        self
    }

    /// The first cooldown after tripping, longer than zero. Default 10 s.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The cooldown doubles after each failed half-open round up to this. Default 120 s.
    pub fn max_cooldown(mut self, max: Duration) -> Self {
        self.max_cooldown = max;
        self
    }

    /// Randomises cooldowns, so that the clients of a peer that failed for
    /// all of them at once do not all probe it at the same moment. Default
    /// [`Jitter::None`].
    ///
    /// A jittered cooldown is never shorter than **half the base cooldown**
    /// ([`CircuitBreakerConfig::cooldown_floor`]): full jitter, or
    /// proportional jitter with a low bound under one half, would otherwise
    /// draw cooldowns near zero and probe a peer that has just failed at
    /// once, which is what rejecting `cooldown(0)` is meant to prevent. A
    /// draw below the floor is raised to it. Half the base rather than the
    /// base itself, because jittering only above the base would leave the
    /// first round, the one in which every client tripped together, without
    /// any spread. [`Jitter::Equal`] never goes below the floor anyway.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The most probes in flight while half-open. Default 1.
    pub fn half_open_max_probes(mut self, n: u32) -> Self {
        self.half_open_max_probes = n;
        self
    }

    /// Probe successes that close a half-open breaker. Default 2.
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }

    /// How long a half-open breaker whose probe slots are all taken waits,
    /// since the last probe was admitted, before it takes the slots back (the
    /// late results are then ignored). Default `max(cooldown, 10 s)`.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = Some(timeout);
        self
    }

    /// Adds a listener that hears every state change and rejection.
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Replaces the listeners.
    pub fn listeners(mut self, listeners: Listeners) -> Self {
        self.listeners = listeners;
        self
    }

    /// Validates the configuration; the error names the rejected field.
    pub fn build(self) -> Result<CircuitBreakerConfig, ConfigError> {
        let err = |field, problem: String| Err(ConfigError::new(LAYER, field, problem));
        let consecutive = if self.consecutive {
            if self.failure_threshold == 0 {
                return err("failure_threshold", "must be at least 1, got 0".into());
            }
            if self.failure_window.is_zero() {
                return err("failure_window", "must be longer than zero".into());
            }
            Some(ConsecutivePolicy {
                failure_threshold: self.failure_threshold,
                failure_window: self.failure_window,
            })
        } else {
            None
        };
        let valid_rate = |r: f64| r.is_finite() && r > 0.0 && r <= 1.0;
        if let Some(t) = self.failure_rate_threshold
            && !valid_rate(t)
        {
            return err("failure_rate_threshold", format!("must lie in (0, 1], got {t}"));
        }
        let slow_call = match self.slow_call_duration {
            Some(d) => {
                if d.is_zero() {
                    return err("slow_call_duration", "must be longer than zero".into());
                }
                let t = self.slow_call_rate_threshold;
                if !valid_rate(t) {
                    return err("slow_call_rate_threshold", format!("must lie in (0, 1], got {t}"));
                }
                Some((d, t))
            }
            None => None,
        };
        let rate = if self.failure_rate_threshold.is_some() || slow_call.is_some() {
            if self.min_requests == 0 {
                return err("min_requests", "must be at least 1, got 0".into());
            }
            if self.rate_window.is_zero() {
                return err("rate_window", "must be longer than zero".into());
            }
            if self.rate_buckets == 0 || self.rate_buckets > 1000 {
                return err(
                    "rate_buckets",
                    format!("must lie in 1..=1000, got {}", self.rate_buckets),
                );
            }
            if self.rate_window.as_nanos() < u128::from(self.rate_buckets) {
                return err("rate_buckets", "must not cut the window finer than 1 ns".into());
            }
            Some(RatePolicy {
                failure_rate_threshold: self.failure_rate_threshold,
                slow_call,
                min_requests: self.min_requests,
                window: self.rate_window,
                buckets: self.rate_buckets,
            })
        } else {
            None
        };
        if consecutive.is_none() && rate.is_none() {
            return err(
                "failure_rate_threshold",
                "must be set when the consecutive policy is off: a breaker needs a trip policy".into(),
            );
        }
        if self.cooldown.is_zero() {
            // A zero cooldown would send probes at once after every trip:
            // the breaker would never give the peer time to recover.
            return err("cooldown", "must be longer than zero".into());
        }
        if self.max_cooldown < self.cooldown {
            return err(
                "max_cooldown",
                format!(
                    "must be at least the cooldown {:?}, got {:?}",
                    self.cooldown, self.max_cooldown
                ),
            );
        }
        let backoff = Backoff::exponential(self.cooldown)
            .factor(2.0)
            .max_delay(self.max_cooldown)
            .jitter(self.jitter)
            .build()
            .map_err(|e| ConfigError::new(LAYER, "jitter", e.problem().to_owned()))?;
        if self.half_open_max_probes == 0 {
            return err("half_open_max_probes", "must be at least 1, got 0".into());
        }
        if self.success_threshold == 0 {
            return err("success_threshold", "must be at least 1, got 0".into());
        }
        let probe_timeout = self.probe_timeout.unwrap_or(self.cooldown.max(Duration::from_secs(10)));
        if probe_timeout.is_zero() {
            return err("probe_timeout", "must be longer than zero".into());
        }
        Ok(CircuitBreakerConfig {
            peer: self.peer,
            consecutive,
            rate,
            backoff,
            half_open_max_probes: self.half_open_max_probes,
            success_threshold: self.success_threshold,
            probe_timeout,
            listeners: self.listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let c = CircuitBreakerConfig::builder().build().unwrap();
        assert_eq!(
            c.consecutive(),
            Some(&ConsecutivePolicy {
                failure_threshold: 3,
                failure_window: Duration::from_secs(60)
            })
        );
        assert!(c.rate().is_none());
        assert_eq!(c.cooldown(), Duration::from_secs(10));
        assert_eq!(c.max_cooldown(), Duration::from_secs(120));
        assert_eq!(c.half_open_max_probes(), 1);
        assert_eq!(c.success_threshold(), 2);
        assert_eq!(c.probe_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn the_presets_are_the_seed_and_the_balancer_numbers() {
        let seed = CircuitBreakerConfig::seed().build().unwrap();
        let default = CircuitBreakerConfig::builder().build().unwrap();
        assert_eq!(
            format!("{seed:?}"),
            format!("{default:?}"),
            "builder() starts from the seed"
        );
        let b = CircuitBreakerConfig::for_balancer().build().unwrap();
        assert_eq!(
            b.consecutive(),
            Some(&ConsecutivePolicy {
                failure_threshold: 5,
                failure_window: Duration::from_secs(60)
            })
        );
        assert!(b.rate().is_none(), "no rate policy: the closed path takes no lock");
        assert_eq!(
            (b.cooldown(), b.max_cooldown()),
            (Duration::from_secs(1), Duration::from_secs(10))
        );
        assert_eq!((b.half_open_max_probes(), b.success_threshold()), (1, 2));
        assert_eq!(b.probe_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let b = CircuitBreakerConfig::builder;
        let field = |r: Result<CircuitBreakerConfig, ConfigError>| r.unwrap_err().field();
        assert_eq!(field(b().failure_threshold(0).build()), "failure_threshold");
        assert_eq!(field(b().failure_window(Duration::ZERO).build()), "failure_window");
        for t in [0.0, -0.1, 1.5, f64::NAN] {
            assert_eq!(field(b().failure_rate_threshold(t).build()), "failure_rate_threshold");
        }
        assert_eq!(
            field(
                b().slow_call_duration(Duration::from_secs(1))
                    .slow_call_rate_threshold(0.0)
                    .build()
            ),
            "slow_call_rate_threshold"
        );
        assert_eq!(
            field(b().slow_call_duration(Duration::ZERO).build()),
            "slow_call_duration"
        );
        assert_eq!(
            field(b().failure_rate_threshold(0.5).min_requests(0).build()),
            "min_requests"
        );
        assert_eq!(
            field(b().failure_rate_threshold(0.5).rate_window(Duration::ZERO).build()),
            "rate_window"
        );
        assert_eq!(
            field(b().failure_rate_threshold(0.5).rate_buckets(0).build()),
            "rate_buckets"
        );
        assert_eq!(field(b().without_consecutive().build()), "failure_rate_threshold");
        assert_eq!(
            field(
                b().cooldown(Duration::from_secs(5))
                    .max_cooldown(Duration::from_secs(1))
                    .build()
            ),
            "max_cooldown"
        );
        assert_eq!(field(b().cooldown(Duration::ZERO).build()), "cooldown");
        assert_eq!(
            field(b().cooldown(Duration::ZERO).max_cooldown(Duration::ZERO).build()),
            "cooldown"
        );
        assert_eq!(field(b().half_open_max_probes(0).build()), "half_open_max_probes");
        assert_eq!(field(b().success_threshold(0).build()), "success_threshold");
        assert_eq!(field(b().probe_timeout(Duration::ZERO).build()), "probe_timeout");
        let e = b().failure_rate_threshold(1.5).build().unwrap_err();
        assert!(e.to_string().contains("(0, 1]"), "{e}");
    }

    #[test]
    fn probe_timeout_defaults_to_the_longer_of_cooldown_and_ten_seconds() {
        let c = CircuitBreakerConfig::builder()
            .cooldown(Duration::from_secs(30))
            .build()
            .unwrap();
        assert_eq!(c.probe_timeout(), Duration::from_secs(30));
        let c = CircuitBreakerConfig::builder()
            .cooldown(Duration::from_millis(100))
            .max_cooldown(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(c.probe_timeout(), Duration::from_secs(10));
    }
}
