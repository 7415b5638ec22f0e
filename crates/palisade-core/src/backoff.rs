//! Backoff: how long to wait before the next attempt, shared by retry delays,
//! breaker cooldowns and registry reconnects.
//!
//! A [`Backoff`] has a shape (constant, linear or exponential), a cap and a
//! [`Jitter`]. Attempt numbers start at 0 (the wait before the first retry).
//! The un-jittered delay of attempt `n` is
//!
//! | shape | `d(n)` |
//! |---|---|
//! | constant | `min(cap, base)` |
//! | linear | `min(cap, base * (n + 1))` |
//! | exponential | `min(cap, base * factor^n)` |
//!
//! and the delay returned lies in these bounds, never above `cap`:
//!
//! | jitter | delay |
//! |---|---|
//! | [`Jitter::None`] | exactly `d(n)` |
//! | [`Jitter::Full`] | uniform in `[0, d(n)]` |
//! | [`Jitter::Equal`] | uniform in `[d(n) / 2, d(n)]` |
//! | [`Jitter::Decorrelated`] | uniform in `[base, 3 * previous]`, capped; `previous` is the last delay returned (`base` at first) |
//! | [`Jitter::Proportional`] | uniform in `[low * d(n), high * d(n)]`, capped (gRPC's `0.8..1.2`) |
//!
//! Arithmetic is saturating: attempt 10,000 of an exponential backoff is the cap,
//! not an overflow.
//!
//! # Randomness
//!
//! [`Backoff::delay`] draws from the thread's generator, so calls made at the
//! same moment by many clients (or many calls of one client) do not retry in
//! step: that is what production wants. A test that must replay a jittered
//! run draws from a seeded generator instead: [`Backoff::delay_with`] takes
//! one, and a [`JitterSeed`] hands one generator to each call of a layer, the
//! n-th call getting the same generator in every run and different calls
//! different ones (so seeded calls stay decorrelated from each other too).
//!
//! ```
//! use palisade_core::backoff::{Backoff, Jitter};
//! use std::time::Duration;
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100))
//!     .factor(2.0)
//!     .max_delay(Duration::from_secs(1))
//!     .jitter(Jitter::None)
//!     .build()
//!     .unwrap();
//! let delays: Vec<_> = (0..6).map(|n| backoff.delay(n, None)).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ConfigError;

/// How the un-jittered delay grows with the attempt number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// The same delay every time.
    Constant,
    /// `base * (attempt + 1)`.
    Linear,
    /// `base * factor^attempt`.
    Exponential {
        /// The growth factor, at least 1.
        factor: f64,
    },
}

/// How a delay is randomised, so that many clients do not retry in step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    /// No randomness.
    None,
    /// Uniform between zero and the delay ("full jitter").
    Full,
    /// Half the delay plus uniform up to the other half ("equal jitter").
    Equal,
    /// Uniform between the base and three times the previous delay ("decorrelated jitter").
    Decorrelated,
    /// The delay times a uniform factor in `[low, high]`, as gRPC's 0.8 to 1.2.
    Proportional {
        /// The smallest factor, at least 0.
        low: f64,
        /// The largest factor, at least `low`.
        high: f64,
    },
}

/// A validated backoff policy. Build one with [`Backoff::exponential`],
/// [`Backoff::linear`] or [`Backoff::constant`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    shape: Shape,
    cap: Duration,
    jitter: Jitter,
}

/// Builds a [`Backoff`]; [`build`](Self::build) checks it.
#[derive(Clone, Copy, Debug)]
pub struct BackoffBuilder {
    inner: Backoff,
}

impl Backoff {
    /// The cap used when none is set.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

    fn builder(base: Duration, shape: Shape) -> BackoffBuilder {
        BackoffBuilder {
            inner: Backoff {
                base,
                shape,
                cap: Self::DEFAULT_CAP.max(base),
                jitter: Jitter::None,
            },
        }
    }

    /// Exponential from `base`, factor 2, cap 30 s, no jitter until set.
    pub fn exponential(base: Duration) -> BackoffBuilder {
        Self::builder(base, Shape::Exponential { factor: 2.0 })
    }

    /// Linear from `base`: `base`, `2 * base`, `3 * base`, ...
    pub fn linear(base: Duration) -> BackoffBuilder {
        Self::builder(base, Shape::Linear)
    }

    /// Always `base`.
    pub fn constant(base: Duration) -> BackoffBuilder {
        Self::builder(base, Shape::Constant)
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay ever returned.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay `d(attempt)`, capped.
    pub fn undithered(&self, attempt: u32) -> Duration {
        let base = self.base.as_secs_f64();
        let raw = match self.shape {
            Shape::Constant => base,
            Shape::Linear => base * (f64::from(attempt) + 1.0),
            Shape::Exponential { factor } => {
                if base == 0.0 {
                    0.0
                } else {
                    base * factor.powf(f64::from(attempt))
                }
            }
        };
        self.clamp_secs(raw)
    }

    /// The delay before attempt `attempt` (0 before the first retry), with the
    /// thread's random generator. `previous` is the delay returned last time,
    /// used by [`Jitter::Decorrelated`].
    pub fn delay(&self, attempt: u32, previous: Option<Duration>) -> Duration {
        self.delay_with(attempt, previous, &mut unseeded_rng())
    }

    /// As [`delay`](Self::delay), drawing from `rng` (seed it for repeatable delays).
    pub fn delay_with(&self, attempt: u32, previous: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        let d = self.undithered(attempt).as_secs_f64();
        let secs = match self.jitter {
            Jitter::None => d,
            Jitter::Full => d * rng.f64(),
            Jitter::Equal => d / 2.0 + d / 2.0 * rng.f64(),
            Jitter::Decorrelated => {
                let base = self.base.as_secs_f64();
                let previous = previous.unwrap_or(self.base).as_secs_f64();
                let high = (previous * 3.0).max(base);
                base + (high - base) * rng.f64()
            }
            Jitter::Proportional { low, high } => d * (low + (high - low) * rng.f64()),
        };
        self.clamp_secs(secs)
    }

    fn clamp_secs(&self, secs: f64) -> Duration {
        let cap = self.cap.as_secs_f64();
        if secs.is_nan() || secs <= 0.0 {
            return Duration::ZERO;
        }
        if secs >= cap {
            return self.cap;
        }
        Duration::try_from_secs_f64(secs).map_or(self.cap, |d| d.min(self.cap))
    }
}

/// A seed for the jitter of a layer's calls, so that a test can replay a
/// jittered run exactly (a proptest failure, say).
///
/// Each [`rng`](Self::rng) is the generator of one call: the n-th generator
/// drawn from a seed is the same in every run, and no two are alike, so the
/// calls of a seeded layer are still decorrelated from each other. Drawing
/// costs one relaxed atomic increment. Production code leaves layers
/// unseeded ([`unseeded_rng`]).
///
/// ```
/// use palisade_core::backoff::{Backoff, Jitter, JitterSeed};
/// use std::time::Duration;
///
/// let backoff = Backoff::constant(Duration::from_millis(320)).jitter(Jitter::Full).build().unwrap();
/// let run = |seed: &JitterSeed| {
///     let mut rng = seed.rng();
///     (0..5).map(|n| backoff.delay_with(n, None, &mut rng)).collect::<Vec<_>>()
/// };
/// let (a, b) = (JitterSeed::new(7), JitterSeed::new(7));
/// assert_eq!(run(&a), run(&b), "the same seed replays the same delays");
/// assert_ne!(run(&a), run(&a), "the next call of a seed draws other delays");
/// ```
#[derive(Debug)]
pub struct JitterSeed {
    seed: u64,
    calls: AtomicU64,
}

impl JitterSeed {
    /// A sequence of generators starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            calls: AtomicU64::new(0),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The generator of the next call.
    pub fn rng(&self) -> fastrand::Rng {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        // Spread consecutive calls over the seed space (the golden-ratio
        // increment of splitmix64); the generator mixes its seed itself.
        fastrand::Rng::with_seed(self.seed ^ call.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// A generator for one call of an unseeded layer, seeded from the thread's
/// generator: what [`Backoff::delay`] draws from, one draw per call instead
/// of one per delay.
pub fn unseeded_rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(fastrand::u64(..))
}

impl BackoffBuilder {
    /// The growth factor of an exponential backoff (ignored by other shapes). Default 2.
    pub fn factor(mut self, factor: f64) -> Self {
        if let Shape::Exponential { .. } = self.inner.shape {
            self.inner.shape = Shape::Exponential { factor };
        }
        self
    }

    /// The largest delay. Default 30 s (or the base, if larger).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.inner.cap = cap;
        self
    }

    /// The jitter. Default none.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.inner.jitter = jitter;
        self
    }

    /// Checks the policy: the factor is finite and at least 1, the cap is at
    /// least the base, proportional jitter bounds are finite with `0 <= low <= high`.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let b = self.inner;
        if let Shape::Exponential { factor } = b.shape
            && (!factor.is_finite() || factor < 1.0)
        {
            return Err(ConfigError::new(
                "backoff",
                "factor",
                format!("must be a finite number of at least 1, got {factor}"),
            ));
        }
        if b.cap < b.base {
            return Err(ConfigError::new(
                "backoff",
                "max_delay",
                format!("must be at least the base delay {:?}, got {:?}", b.base, b.cap),
            ));
        }
        if let Jitter::Proportional { low, high } = b.jitter
            && !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high)
        {
            return Err(ConfigError::new(
                "backoff",
                "jitter",
                format!("proportional bounds must satisfy 0 <= low <= high, got {low}..{high}"),
            ));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn exact(b: BackoffBuilder) -> Backoff {
        b.jitter(Jitter::None).build().unwrap()
    }

    #[test]
    fn polly_table_constant_linear_exponential() {
        let s = Duration::from_secs(1);
        let delays = |b: Backoff| (0..3).map(|n| b.delay(n, None)).collect::<Vec<_>>();
        assert_eq!(delays(exact(Backoff::constant(s))), [s, s, s]);
        assert_eq!(delays(exact(Backoff::linear(s))), [1, 2, 3].map(Duration::from_secs));
        assert_eq!(
            delays(exact(Backoff::exponential(s))),
            [1, 2, 4].map(Duration::from_secs)
        );
        let capped = exact(Backoff::linear(s).max_delay(Duration::from_millis(2500)));
        assert_eq!(delays(capped), [MS(1000), MS(2000), MS(2500)]);
    }

    #[test]
    fn grpc_style_proportional_bounds() {
        let b = Backoff::exponential(MS(100))
            .max_delay(MS(1000))
            .jitter(Jitter::Proportional { low: 0.8, high: 1.2 })
            .build()
            .unwrap();
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            for (n, (lo, hi)) in [(80, 120), (160, 240), (320, 480)].into_iter().enumerate() {
                let d = b.delay_with(n as u32, None, &mut rng);
                assert!(MS(lo) <= d && d <= MS(hi), "attempt {n}: {d:?}");
            }
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let e = Backoff::exponential(MS(1)).factor(0.5).build().unwrap_err();
        assert_eq!(e.field(), "factor");
        let e = Backoff::exponential(MS(1)).factor(f64::NAN).build().unwrap_err();
        assert_eq!(e.field(), "factor");
        let e = Backoff::constant(MS(10)).max_delay(MS(5)).build().unwrap_err();
        assert_eq!(e.field(), "max_delay");
        let e = Backoff::constant(MS(10))
            .jitter(Jitter::Proportional { low: 1.5, high: 1.0 })
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "jitter");
    }

    fn jitter_strategy() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            (0.0f64..2.0, 0.0f64..2.0).prop_map(|(a, b)| Jitter::Proportional {
                low: a.min(b),
                high: a.max(b)
            }),
        ]
    }

    fn shape_strategy() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Constant),
            Just(Shape::Linear),
            (1.0f64..16.0).prop_map(|factor| Shape::Exponential { factor }),
        ]
    }

    proptest! {
        #[test]
        fn every_delay_lies_within_its_documented_bounds(
            base_ms in 0u64..10_000_000,
            extra_cap_ms in 0u64..100_000_000,
            shape in shape_strategy(),
            jitter in jitter_strategy(),
            attempt in prop_oneof![0u32..64, Just(10_000u32), Just(u32::MAX)],
            previous_ms in proptest::option::of(0u64..1_000_000_000),
            seed in any::<u64>(),
        ) {
            let base = MS(base_ms);
            let cap = MS(base_ms + extra_cap_ms);
            let builder = match shape {
                Shape::Constant => Backoff::constant(base),
                Shape::Linear => Backoff::linear(base),
                Shape::Exponential { factor } => Backoff::exponential(base).factor(factor),
            };
            let backoff = builder.max_delay(cap).jitter(jitter).build().unwrap();
            let d = backoff.undithered(attempt);
            prop_assert!(d <= cap);
            // The un-jittered delay follows its shape (within float rounding).
            let expected = match shape {
                Shape::Constant => base_ms as f64,
                Shape::Linear => base_ms as f64 * (f64::from(attempt) + 1.0),
                Shape::Exponential { factor } => if base_ms == 0 { 0.0 } else { base_ms as f64 * factor.powf(f64::from(attempt)) },
            }.min(cap.as_secs_f64() * 1e3);
            prop_assert!((d.as_secs_f64() * 1e3 - expected).abs() <= expected * 1e-9 + 1e-6);

            let previous = previous_ms.map(MS);
            let mut rng = fastrand::Rng::with_seed(seed);
            let delay = backoff.delay_with(attempt, previous, &mut rng);
            prop_assert!(delay <= cap, "{delay:?} above cap {cap:?}");
            let tolerance = Duration::from_nanos(2);
            let (lo, hi) = match jitter {
                Jitter::None => (d, d),
                Jitter::Full => (Duration::ZERO, d),
                Jitter::Equal => (d / 2, d),
                Jitter::Decorrelated => {
                    let prev = previous.unwrap_or(base);
                    (base.min(cap), prev.saturating_mul(3).max(base).min(cap))
                }
                Jitter::Proportional { low, high } => (
                    Duration::from_secs_f64(d.as_secs_f64() * low).min(cap),
                    Duration::from_secs_f64(d.as_secs_f64() * high).min(cap),
                ),
            };
            prop_assert!(delay + tolerance >= lo && delay <= hi + tolerance, "{delay:?} not in [{lo:?}, {hi:?}]");
        }
    }
}
