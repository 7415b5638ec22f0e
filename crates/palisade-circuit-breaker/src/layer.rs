//! The breaker layer.

use std::sync::Arc;

use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, PeerId};
use std::time::Duration;

use palisade_core::backoff::Jitter;
use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{IsGrpc, Plain, Unchosen};
use tower_layer::Layer;

use palisade_core::route::RouteTableBuilder;

use crate::config::{CircuitBreakerConfig, CircuitBreakerConfigBuilder};
use crate::keyed::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_KEYS, Keyed, KeyedCircuitBreakerLayer};
use crate::service::CircuitBreaker;
use crate::shared::{Breaker, CircuitBreakerHandle};

/// Wraps services in a [`CircuitBreaker`].
///
/// The layer holds one breaker: every service it wraps, and every clone of
/// the layer, shares it, so a framework that calls [`Layer::layer`] again and
/// again still gets one breaker that trips. For a breaker per peer, make one
/// explicitly with [`for_peer`](Self::for_peer).
#[derive(Debug)]
pub struct CircuitBreakerLayer<P = Plain> {
    shared: Arc<Breaker>,
    protocol: P,
}

impl<P: Clone> Clone for CircuitBreakerLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
        }
    }
}

impl CircuitBreakerLayer<Plain> {
    /// The way to build a breaker layer: the configuration's knobs, a
    /// protocol chosen with `.grpc()`, `.http()`, `.plain()` or
    /// `.protocol(p)` (without one there is no `build()`), then `build()?`.
    ///
    /// ```
    /// use palisade_circuit_breaker::CircuitBreakerLayer;
    /// let layer = CircuitBreakerLayer::builder().grpc().failure_threshold(5).build()?;
    /// # Ok::<(), palisade_circuit_breaker::ConfigError>(())
    /// ```
    pub fn builder() -> CircuitBreakerLayerBuilder<Unchosen> {
        CircuitBreakerLayerBuilder {
            config: CircuitBreakerConfig::builder(),
            protocol: Unchosen,
        }
    }

    /// A layer with one breaker configured by an already validated `config`,
    /// classifying with [`Plain`] until [`protocol`](Self::protocol) chooses
    /// another: a convenience for non-http services, as tower's
    /// `ConcurrencyLimitLayer::new`. Over http or gRPC prefer
    /// [`builder`](Self::builder), which makes the protocol choice explicit.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            shared: Breaker::new(config, None),
            protocol: Plain,
        }
    }
}

impl<P> CircuitBreakerLayer<P> {
    /// Classifies (and follows responses) with `protocol`: [`Http`](palisade_core::protocol::Http),
    /// [`Grpc`](palisade_core::protocol::Grpc), or any classifier refined with
    /// [`ClassifyExt`](palisade_core::classify::ClassifyExt) closures. Keeps the breaker.
    pub fn protocol<Q>(self, protocol: Q) -> CircuitBreakerLayer<Q> {
        CircuitBreakerLayer {
            shared: self.shared,
            protocol,
        }
    }

    /// A layer with a fresh breaker of its own for `peer`, with this layer's
    /// configuration and protocol: what a balancer uses to give each peer its
    /// own state.
    pub fn for_peer(&self, peer: impl Into<PeerId>) -> Self
    where
        P: Clone,
    {
        Self {
            shared: Breaker::new(self.shared.config().clone().with_peer(peer), None),
            protocol: self.protocol.clone(),
        }
    }

    /// A handle on the layer's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        self.shared.config()
    }
}

impl<S, P: Clone> Layer<S> for CircuitBreakerLayer<P> {
    type Service = CircuitBreaker<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_shared(inner, Arc::clone(&self.shared), self.protocol.clone())
    }
}

impl<P> CheckAvailability for CircuitBreakerLayer<P> {
    fn availability(&self) -> Availability {
        self.shared.availability()
    }
    fn join_fleet(&self, membership: FleetMembership) -> bool {
        self.shared.join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        self.shared.request_probe()
    }

    fn reset_open(&self) -> bool {
        self.shared.reset_open()
    }
}

/// Builds a [`CircuitBreakerLayer`]: the [`CircuitBreakerConfigBuilder`]
/// knobs plus the protocol. Made by [`CircuitBreakerLayer::builder`];
/// `build()` exists once a protocol is chosen, so forgetting it is a
/// compile error, not a breaker that silently ignores gRPC trailers:
///
/// ```compile_fail
/// use palisade_circuit_breaker::CircuitBreakerLayer;
/// let layer = CircuitBreakerLayer::builder().failure_threshold(5).build();
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct CircuitBreakerLayerBuilder<P = Unchosen> {
    config: CircuitBreakerConfigBuilder,
    protocol: P,
}

/// The [`CircuitBreakerConfigBuilder`] knobs, forwarded by both layer builders.
macro_rules! config_knobs {
    () => {
        palisade_core::forward_config! {
            /// See [`CircuitBreakerConfigBuilder::peer`].
            peer(peer: impl Into<palisade_core::peer::PeerId>);
            /// See [`CircuitBreakerConfigBuilder::failure_threshold`].
            failure_threshold(n: u32);
            /// See [`CircuitBreakerConfigBuilder::failure_window`].
            failure_window(window: Duration);
            /// See [`CircuitBreakerConfigBuilder::without_consecutive`].
            without_consecutive();
            /// See [`CircuitBreakerConfigBuilder::failure_rate_threshold`].
            failure_rate_threshold(threshold: f64);
            /// See [`CircuitBreakerConfigBuilder::min_requests`].
            min_requests(n: u32);
            /// See [`CircuitBreakerConfigBuilder::rate_window`].
            rate_window(window: Duration);
            /// See [`CircuitBreakerConfigBuilder::rate_buckets`].
            rate_buckets(n: u32);
            /// See [`CircuitBreakerConfigBuilder::slow_call_duration`].
            slow_call_duration(duration: Duration);
            /// See [`CircuitBreakerConfigBuilder::slow_call_rate_threshold`].
            slow_call_rate_threshold(threshold: f64);
            /// See [`CircuitBreakerConfigBuilder::cooldown`].
            cooldown(cooldown: Duration);
            /// See [`CircuitBreakerConfigBuilder::max_cooldown`].
            max_cooldown(max: Duration);
            /// See [`CircuitBreakerConfigBuilder::jitter`].
            jitter(jitter: Jitter);
            /// See [`CircuitBreakerConfigBuilder::half_open_max_probes`].
            half_open_max_probes(n: u32);
            /// See [`CircuitBreakerConfigBuilder::success_threshold`].
            success_threshold(n: u32);
            /// See [`CircuitBreakerConfigBuilder::probe_timeout`].
            probe_timeout(timeout: Duration);
            /// See [`CircuitBreakerConfigBuilder::listener`].
            listener(listener: Arc<dyn Listener>);
            /// See [`CircuitBreakerConfigBuilder::listeners`].
            listeners(listeners: Listeners);
        }
    };
}

impl<P> CircuitBreakerLayerBuilder<P> {
    /// Starts from `config` instead of the defaults (for example
    /// [`CircuitBreakerConfig::for_balancer`]).
    pub fn config(mut self, config: CircuitBreakerConfigBuilder) -> Self {
        self.config = config;
        self
    }

    palisade_core::protocol_methods! {
        builder: CircuitBreakerLayerBuilder<_>,
        rebuild: |self, protocol: Q| CircuitBreakerLayerBuilder { config: self.config, protocol },
        protocol: "It decides which results are failures.",
        grpc: "statuses in trailers count.",
        http: "5xx statuses are failures.",
        plain: "every `Ok` is a success.",
    }

    config_knobs!();
}

impl<P: IsGrpc> CircuitBreakerLayerBuilder<P> {
    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`CircuitBreakerConfigBuilder::build`].
    pub fn build(self) -> Result<CircuitBreakerLayer<P>, ConfigError> {
        Ok(CircuitBreakerLayer::new(self.config.build()?).protocol(self.protocol))
    }
}

impl KeyedCircuitBreakerLayer<Plain> {
    /// The way to build a keyed breaker layer, as [`CircuitBreakerLayer::builder`]:
    /// the knobs of the keys' base configuration, the bounds of the map, per-key
    /// overrides, a protocol chosen with `.grpc()`, `.http()`, `.plain()` or
    /// `.protocol(p)` (without one there is no `build()`), then `build()?`.
    ///
    /// ```
    /// use palisade_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
    /// let strict = CircuitBreakerConfig::builder().failure_threshold(1).build()?;
    /// let layer = KeyedCircuitBreakerLayer::builder()
    ///     .grpc()
    ///     .failure_threshold(5)
    ///     .key_config("/pay.Pay/Charge", strict)
    ///     .max_keys(64)
    ///     .build()?;
    /// # Ok::<(), palisade_circuit_breaker::ConfigError>(())
    /// ```
    pub fn builder() -> KeyedCircuitBreakerLayerBuilder<Unchosen> {
        KeyedCircuitBreakerLayerBuilder {
            config: CircuitBreakerConfig::builder(),
            overrides: RouteTableBuilder::new(),
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            protocol: Unchosen,
        }
    }
}

/// Builds a [`KeyedCircuitBreakerLayer`]: the [`CircuitBreakerConfigBuilder`]
/// knobs of the keys' base configuration, the map's bounds, per-key
/// configurations and the protocol. Made by [`KeyedCircuitBreakerLayer::builder`];
/// `build()` exists once a protocol is chosen, so forgetting it is a compile
/// error, not keyed breakers that silently ignore gRPC trailers:
///
/// ```compile_fail
/// use palisade_circuit_breaker::KeyedCircuitBreakerLayer;
/// let layer = KeyedCircuitBreakerLayer::builder().failure_threshold(5).max_keys(64).build();
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct KeyedCircuitBreakerLayerBuilder<P = Unchosen> {
    config: CircuitBreakerConfigBuilder,
    overrides: RouteTableBuilder<CircuitBreakerConfig>,
    max_keys: usize,
    idle_timeout: Duration,
    protocol: P,
}

impl<P> KeyedCircuitBreakerLayerBuilder<P> {
    /// Starts the keys' base configuration from `config` instead of the defaults.
    pub fn config(mut self, config: CircuitBreakerConfigBuilder) -> Self {
        self.config = config;
        self
    }

    palisade_core::protocol_methods! {
        builder: KeyedCircuitBreakerLayerBuilder<_>,
        rebuild: |self, protocol: Q| KeyedCircuitBreakerLayerBuilder {
            config: self.config,
            overrides: self.overrides,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            protocol,
        },
        protocol: "It decides which results are failures and finds the route for \
            [`ByRoute`](palisade_core::keyed::ByRoute).",
        grpc: "statuses in trailers count, keys are gRPC methods.",
        http: "5xx statuses are failures, keys are paths.",
        plain: "every `Ok` is a success; key with [`KeyedCircuitBreakerLayer::key_fn`] (there is no route).",
    }

    /// The configuration of `key`'s breaker, instead of the base one.
    /// Matched exactly against the key (the route, by default); a key
    /// configured twice is an error at `build()` (see [`palisade_core::route`]).
    pub fn key_config(mut self, key: impl Into<String>, config: CircuitBreakerConfig) -> Self {
        self.overrides.push(key, config);
        self
    }

    /// The most keys kept at once. Default 1024.
    ///
    /// The map is only scanned when a new key arrives and it is full. Then
    /// breakers that nobody holds (no call in flight, no handle) and that are
    /// closed, or open, idle for [`idle_timeout`](Self::idle_timeout) and past
    /// their cooldown, can go: idle ones first, else the least recently used
    /// closed one. Open, half-open and forced breakers are kept, so eviction
    /// never lifts protection. If nothing can go, the new key shares the
    /// unkeyed breaker, and the map is not scanned again for a second
    /// ([`KeyedMap`](palisade_core::keyed::KeyedMap)).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// A key unused for this long is forgotten (with its breaker state) when a
    /// new key arrives and the map is full (see [`max_keys`](Self::max_keys)).
    /// Default 10 minutes.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    config_knobs!();
}

impl<P: IsGrpc> KeyedCircuitBreakerLayerBuilder<P> {
    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`CircuitBreakerConfigBuilder::build`]; `max_keys`
    /// of 0; a zero `idle_timeout`; an empty `key_config` key or one configured twice.
    pub fn build(self) -> Result<KeyedCircuitBreakerLayer<P>, ConfigError> {
        let base = self.config.build()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "circuit breaker",
                "max_keys",
                "must be at least 1, got 0",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "circuit breaker",
                "idle_timeout",
                "must be longer than zero",
            ));
        }
        let overrides = self.overrides.build("circuit breaker", "key_config")?;
        let keyed = Keyed::new(base, overrides, self.max_keys, self.idle_timeout);
        Ok(KeyedCircuitBreakerLayer::from_keyed(keyed, self.protocol))
    }
}
