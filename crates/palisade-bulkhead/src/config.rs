//! The bulkhead's configuration and its validating builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::route::{RouteTable, RouteTableBuilder};

use crate::policy::{AimdConfig, GradientConfig};

const LAYER: &str = "bulkhead";

/// Which adaptive algorithm moves the concurrency limit, if any.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Adaptive {
    /// Additive increase, multiplicative decrease. See [`AimdConfig`].
    Aimd(AimdConfig),
    /// Latency gradient in the style of Netflix's `Gradient2Limit`. See [`GradientConfig`].
    Gradient(GradientConfig),
}

impl Adaptive {
    pub(crate) fn bounds(&self) -> (usize, usize) {
        match self {
            Adaptive::Aimd(c) => (c.floor, c.ceiling),
            Adaptive::Gradient(c) => (c.floor, c.ceiling),
        }
    }
}

/// A validated bulkhead configuration. Make one with [`BulkheadConfig::builder`].
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `max_concurrent` | 3 | calls in flight at once (the initial limit when adaptive) |
/// | `max_queue` | 10 | callers waiting in FIFO order; 0 rejects as soon as every slot is busy |
/// | `max_wait` | none | how long a queued caller waits before `BulkheadFull` (`WaitTimedOut`) |
/// | adaptive | off | [`Adaptive::Aimd`] or [`Adaptive::Gradient`] |
/// | `max_keys` | 1024 | partitions a keyed bulkhead keeps at most |
/// | `key_idle_timeout` | 300 s | an unused partition idle this long may be evicted |
/// | `key_limit` | none | a per-key `max_concurrent` for a keyed bulkhead |
#[derive(Clone)]
pub struct BulkheadConfig {
    pub(crate) max_concurrent: usize,
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) adaptive: Option<Adaptive>,
    pub(crate) listeners: Listeners,
    pub(crate) max_keys: usize,
    pub(crate) key_idle_timeout: Duration,
    pub(crate) key_limits: Arc<RouteTable<usize>>,
}

impl fmt::Debug for BulkheadConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadConfig")
            .field("max_concurrent", &self.max_concurrent)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .field("adaptive", &self.adaptive)
            .field("listeners", &self.listeners)
            .field("max_keys", &self.max_keys)
            .field("key_idle_timeout", &self.key_idle_timeout)
            .field("key_limits", &self.key_limits)
            .finish()
    }
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 3,
            max_queue: 10,
            max_wait: None,
            adaptive: None,
            listeners: Listeners::new(),
            max_keys: 1024,
            key_idle_timeout: Duration::from_secs(300),
            key_limits: Arc::new(RouteTable::empty()),
        }
    }
}

impl BulkheadConfig {
    /// A builder starting from the defaults (3 concurrent, queue of 10, unbounded wait).
    pub fn builder() -> BulkheadConfigBuilder {
        BulkheadConfigBuilder {
            config: BulkheadConfig::default(),
            key_limits: RouteTableBuilder::new(),
        }
    }

    /// The concurrency limit (the initial one, when adaptive).
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// How many callers may wait.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// How long a queued caller waits at most.
    pub fn max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The adaptive algorithm, if any.
    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.adaptive.as_ref()
    }

    pub(crate) fn limit_for_key(&self, key: &str) -> usize {
        self.key_limits.get(key).copied().unwrap_or(self.max_concurrent)
    }
}

/// Builds a [`BulkheadConfig`]; [`build`](Self::build) validates it.
#[derive(Debug)]
pub struct BulkheadConfigBuilder {
    config: BulkheadConfig,
    key_limits: RouteTableBuilder<usize>,
}

impl BulkheadConfigBuilder {
    /// Calls in flight at once (default 3). Must be at least 1.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.config.max_concurrent = n;
        self
    }

    /// Callers that may wait for a slot, in FIFO order (default 10). 0 means
    /// reject as soon as every slot is busy.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.config.max_queue = n;
        self
    }

    /// A queued caller gives up after `wait` with
    /// [`BulkheadRejection::WaitTimedOut`](palisade_core::error::BulkheadRejection::WaitTimedOut)
    /// (default: waits as long as it takes). Must not be zero.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.config.max_wait = Some(wait);
        self
    }

    /// Moves the limit with AIMD between the config's floor and ceiling,
    /// starting at `max_concurrent`.
    pub fn aimd(mut self, config: AimdConfig) -> Self {
        self.config.adaptive = Some(Adaptive::Aimd(config));
        self
    }

    /// Moves the limit with the gradient algorithm between the config's floor
    /// and ceiling, starting at `max_concurrent`.
    pub fn gradient(mut self, config: GradientConfig) -> Self {
        self.config.adaptive = Some(Adaptive::Gradient(config));
        self
    }

    /// Registers a listener for rejections and limit changes.
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.config.listeners = self.config.listeners.with(listener);
        self
    }

    /// Keyed bulkheads: keep at most `n` partitions (default 1024).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.config.max_keys = n;
        self
    }

    /// Keyed bulkheads: a partition with nothing in flight or queued for this
    /// long may be evicted (default 300 s).
    pub fn key_idle_timeout(mut self, idle: Duration) -> Self {
        self.config.key_idle_timeout = idle;
        self
    }

    /// Keyed bulkheads: the partition of `key` allows `max_concurrent` calls
    /// instead of the default. Matched exactly against the key (the route, by
    /// default); a key configured twice is an error at [`build`](Self::build)
    /// (see [`palisade_core::route`]).
    pub fn key_limit(mut self, key: impl Into<String>, max_concurrent: usize) -> Self {
        self.key_limits.push(key, max_concurrent);
        self
    }

    /// Validates the configuration; the error names the offending field (for
    /// a `key_limit`, an empty key or a key configured twice as well).
    pub fn build(self) -> Result<BulkheadConfig, ConfigError> {
        let BulkheadConfigBuilder { mut config, key_limits } = self;
        if config.max_concurrent == 0 {
            return Err(ConfigError::new(LAYER, "max_concurrent", "must be at least 1, got 0"));
        }
        if config.max_wait == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                LAYER,
                "max_wait",
                "must be greater than zero (use max_queue(0) to never wait)",
            ));
        }
        if config.max_keys == 0 {
            return Err(ConfigError::new(LAYER, "max_keys", "must be at least 1, got 0"));
        }
        if let Some((key, _)) = key_limits.iter().find(|(_, n)| **n == 0) {
            return Err(ConfigError::new(
                LAYER,
                "key_limit",
                format!("must be at least 1 for key {key:?}, got 0"),
            ));
        }
        if let Some(adaptive) = &config.adaptive {
            match adaptive {
                Adaptive::Aimd(c) => c.validate()?,
                Adaptive::Gradient(c) => c.validate()?,
            }
            let (floor, ceiling) = adaptive.bounds();
            if config.max_concurrent < floor || config.max_concurrent > ceiling {
                return Err(ConfigError::new(
                    LAYER,
                    "max_concurrent",
                    format!(
                        "is the initial adaptive limit and must lie in [floor, ceiling] = [{floor}, {ceiling}], got {}",
                        config.max_concurrent
                    ),
                ));
            }
        }
        config.key_limits = Arc::new(key_limits.build(LAYER, "key_limit")?);
        Ok(config)
    }
}

pub(crate) fn check_bounds(floor: usize, ceiling: usize) -> Result<(), ConfigError> {
    if floor == 0 {
        return Err(ConfigError::new(LAYER, "floor", "must be at least 1, got 0"));
    }
    if floor > ceiling {
        return Err(ConfigError::new(
            LAYER,
            "floor",
            format!("must not exceed the ceiling: floor {floor} > ceiling {ceiling}"),
        ));
    }
    Ok(())
}

pub(crate) fn config_error(field: &'static str, problem: String) -> ConfigError {
    ConfigError::new(LAYER, field, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = BulkheadConfig::builder().build().unwrap();
        assert_eq!((c.max_concurrent(), c.max_queue(), c.max_wait()), (3, 10, None));
        assert!(c.adaptive().is_none());
    }

    #[test]
    fn invalid_values_name_their_field() {
        let field = |b: BulkheadConfigBuilder| b.build().unwrap_err().field();
        assert_eq!(field(BulkheadConfig::builder().max_concurrent(0)), "max_concurrent");
        assert_eq!(field(BulkheadConfig::builder().max_wait(Duration::ZERO)), "max_wait");
        assert_eq!(field(BulkheadConfig::builder().max_keys(0)), "max_keys");
        assert_eq!(field(BulkheadConfig::builder().key_limit("/a", 0)), "key_limit");
        assert_eq!(field(BulkheadConfig::builder().key_limit("", 1)), "key_limit");
        let twice = BulkheadConfig::builder()
            .key_limit("/a", 1)
            .key_limit("/b", 2)
            .key_limit("/a", 3)
            .build()
            .unwrap_err();
        assert_eq!(twice.field(), "key_limit");
        assert!(twice.to_string().contains("`/a` is configured twice"), "{twice}");
        let limits = BulkheadConfig::builder()
            .max_concurrent(4)
            .key_limit("/a", 1)
            .key_limit("/b", 2)
            .build()
            .unwrap();
        assert_eq!(
            (
                limits.limit_for_key("/a"),
                limits.limit_for_key("/b"),
                limits.limit_for_key("/c")
            ),
            (1, 2, 4)
        );
        let inverted = AimdConfig {
            floor: 10,
            ceiling: 5,
            ..AimdConfig::default()
        };
        assert_eq!(field(BulkheadConfig::builder().aimd(inverted)), "floor");
        let zero_floor = GradientConfig {
            floor: 0,
            ..GradientConfig::default()
        };
        assert_eq!(field(BulkheadConfig::builder().gradient(zero_floor)), "floor");
        let ratio = AimdConfig {
            decrease_ratio: 1.5,
            ..AimdConfig::default()
        };
        assert_eq!(field(BulkheadConfig::builder().aimd(ratio)), "decrease_ratio");
        let smoothing = GradientConfig {
            smoothing: 0.0,
            ..GradientConfig::default()
        };
        assert_eq!(field(BulkheadConfig::builder().gradient(smoothing)), "smoothing");
        let no_headroom = GradientConfig {
            queue_size: 0,
            ..GradientConfig::default()
        };
        assert_eq!(field(BulkheadConfig::builder().gradient(no_headroom)), "queue_size");
        let outside = AimdConfig {
            floor: 5,
            ceiling: 10,
            ..AimdConfig::default()
        };
        let err = BulkheadConfig::builder()
            .max_concurrent(3)
            .aimd(outside)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_concurrent");
        assert!(err.to_string().contains("[5, 10]"), "{err}");
    }
}
