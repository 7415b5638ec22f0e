//! The breaker layer.

use std::sync::Arc;

use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, PeerId};
use std::time::Duration;

use palisade_core::backoff::Jitter;
use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{Grpc, Http, IsGrpc, Plain, Unchosen};
use tower_layer::Layer;

use crate::config::{CircuitBreakerConfig, CircuitBreakerConfigBuilder};
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

macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.config = self.config.$name($($arg),*);
                self
            }
        )*
    };
}

impl<P> CircuitBreakerLayerBuilder<P> {
    /// Starts from `config` instead of the defaults (for example
    /// [`CircuitBreakerConfig::for_balancer`]).
    pub fn config(mut self, config: CircuitBreakerConfigBuilder) -> Self {
        self.config = config;
        self
    }

    /// Classifies with `protocol`: [`Http`], [`Grpc`], [`Plain`] or a classifier
    /// refined with [`ClassifyExt`](palisade_core::classify::ClassifyExt).
    pub fn protocol<Q>(self, protocol: Q) -> CircuitBreakerLayerBuilder<Q> {
        CircuitBreakerLayerBuilder {
            config: self.config,
            protocol,
        }
    }

    /// gRPC over http (a tonic `Channel`): statuses in trailers count.
    pub fn grpc(self) -> CircuitBreakerLayerBuilder<Grpc> {
        self.protocol(Grpc::default())
    }

    /// Plain http (a hyper client): 5xx statuses are failures.
    pub fn http(self) -> CircuitBreakerLayerBuilder<Http> {
        self.protocol(Http::default())
    }

    /// Any non-http service: every `Ok` is a success.
    pub fn plain(self) -> CircuitBreakerLayerBuilder<Plain> {
        self.protocol(Plain)
    }

    forward! {
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
