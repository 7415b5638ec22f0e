//! [`BulkheadLayer`] and [`KeyedBulkheadLayer`].

use std::sync::Arc;

use std::time::Duration;

use palisade_core::error::ConfigError;
use palisade_core::event::Listener;
use palisade_core::protocol::{IsGrpc, Plain, Unchosen};
use tower_layer::Layer;

use crate::config::{BulkheadConfig, BulkheadConfigBuilder};
use palisade_core::keyed::{ByRoute, KeyFn};

use crate::keyed::{Keyed, KeyedBulkhead, KeyedHandle};
use crate::policy::{AimdConfig, GradientConfig};
use crate::service::Bulkhead;
use crate::shared::{BulkheadHandle, Limiter};

/// Wraps services in a [`Bulkhead`].
///
/// The bulkhead is created with the layer: **every service this layer value
/// (or a clone of it) wraps shares one bulkhead**, unlike tower's
/// `ConcurrencyLimitLayer`, which makes a new semaphore per wrapped service.
/// For one bulkhead per service, use one layer per service.
#[derive(Clone, Debug)]
pub struct BulkheadLayer<P = Plain> {
    shared: Arc<Limiter>,
    protocol: P,
}

impl BulkheadLayer<Plain> {
    /// The way to build a bulkhead layer: the configuration's knobs, a
    /// protocol chosen with `.grpc()`, `.http()`, `.plain()` or
    /// `.protocol(p)` (without one there is no `build()`), then `build()?`.
    ///
    /// ```
    /// use palisade_bulkhead::BulkheadLayer;
    /// let layer = BulkheadLayer::builder().http().max_concurrent(8).build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    pub fn builder() -> BulkheadLayerBuilder<Unchosen> {
        BulkheadLayerBuilder {
            config: BulkheadConfig::builder(),
            protocol: Unchosen,
        }
    }

    /// A layer with an already validated configuration, on [`Plain`] until
    /// [`protocol`](Self::protocol) chooses another: a convenience for
    /// non-http services, as tower's `ConcurrencyLimitLayer::new`. Over http
    /// or gRPC prefer [`builder`](Self::builder).
    pub fn new(config: BulkheadConfig) -> Self {
        let limit = config.max_concurrent;
        Self {
            shared: Arc::new(Limiter::new(&config, limit, None)),
            protocol: Plain,
        }
    }
}

impl Default for BulkheadLayer<Plain> {
    /// The default configuration: 3 concurrent calls, a queue of 10, no wait limit.
    fn default() -> Self {
        Self::new(BulkheadConfig::default())
    }
}

impl<P> BulkheadLayer<P> {
    /// Classifies and follows responses with `protocol`
    /// ([`Http`](palisade_core::protocol::Http) for hyper,
    /// [`Grpc`](palisade_core::protocol::Grpc) for tonic): permits then live
    /// until the response body ends.
    pub fn protocol<Q>(self, protocol: Q) -> BulkheadLayer<Q> {
        BulkheadLayer {
            shared: self.shared,
            protocol,
        }
    }

    /// A handle on the layer's bulkhead: counters and live limit changes.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, P: Clone> Layer<S> for BulkheadLayer<P> {
    type Service = Bulkhead<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::from_parts(inner, self.shared.clone(), self.protocol.clone())
    }
}

/// Wraps services in a [`KeyedBulkhead`]: one bulkhead per key of the request
/// (by default its route: the http path or gRPC method).
///
/// As with [`BulkheadLayer`], every service this layer value wraps shares the
/// same set of partitions.
#[derive(Clone, Debug)]
pub struct KeyedBulkheadLayer<P = Plain, K = ByRoute> {
    keyed: Arc<Keyed>,
    protocol: P,
    key: K,
}

impl KeyedBulkheadLayer<Plain, ByRoute> {
    /// The way to build a keyed layer, as [`BulkheadLayer::builder`].
    pub fn builder() -> KeyedBulkheadLayerBuilder<Unchosen> {
        KeyedBulkheadLayerBuilder {
            config: BulkheadConfig::builder(),
            protocol: Unchosen,
        }
    }

    /// A keyed layer; each partition gets `config`'s limits (or its
    /// [`key_limit`](crate::BulkheadConfigBuilder::key_limit)).
    pub fn new(config: BulkheadConfig) -> Self {
        Self {
            keyed: Arc::new(Keyed::new(config)),
            protocol: Plain,
            key: ByRoute,
        }
    }
}

impl<P, K> KeyedBulkheadLayer<P, K> {
    /// Classifies, follows and inspects requests with `protocol` (its
    /// [`Inspect::route`](palisade_core::protocol::Inspect::route) is the default key).
    pub fn protocol<Q>(self, protocol: Q) -> KeyedBulkheadLayer<Q, K> {
        KeyedBulkheadLayer {
            keyed: self.keyed,
            protocol,
            key: self.key,
        }
    }

    /// Takes the key from the request with `f` instead of the route
    /// ([`KeyFn`]): a key borrowed from the request or a static one is free,
    /// a computed one costs its `String`. A request for which `f` returns
    /// `None` uses the default partition.
    pub fn key_fn<Req, F>(self, f: F) -> KeyedBulkheadLayer<P, KeyFn<F>>
    where
        F: for<'r> Fn(&'r Req) -> Option<std::borrow::Cow<'r, str>>,
    {
        self.key_by(KeyFn::new(f))
    }

    /// Derives keys with `key` (any [`KeyOf`](palisade_core::keyed::KeyOf))
    /// instead of the route.
    pub fn key_by<K2>(self, key: K2) -> KeyedBulkheadLayer<P, K2> {
        KeyedBulkheadLayer {
            keyed: self.keyed,
            protocol: self.protocol,
            key,
        }
    }

    /// A handle on the partitions.
    pub fn handle(&self) -> KeyedHandle {
        KeyedHandle {
            keyed: self.keyed.clone(),
        }
    }
}

impl<S, P: Clone, K: Clone> Layer<S> for KeyedBulkheadLayer<P, K> {
    type Service = KeyedBulkhead<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBulkhead::from_parts(inner, self.keyed.clone(), self.protocol.clone(), self.key.clone())
    }
}

macro_rules! layer_builder {
    ($(#[$doc:meta])* $builder:ident => $layer:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a builder does nothing until `build()`"]
        pub struct $builder<P = Unchosen> {
            config: BulkheadConfigBuilder,
            protocol: P,
        }

        impl<P> $builder<P> {
            /// Starts from `config` instead of the defaults.
            pub fn config(mut self, config: BulkheadConfigBuilder) -> Self {
                self.config = config;
                self
            }

            palisade_core::protocol_methods! {
                builder: $builder<_>,
                rebuild: |self, protocol: Q| $builder { config: self.config, protocol },
                protocol: "It classifies and follows responses.",
                grpc: "permits live until the trailers.",
                http: "permits live until the body ends.",
                plain: "the permit is released with the response.",
            }

            palisade_core::forward_config! {
                /// See [`BulkheadConfigBuilder::max_concurrent`].
                max_concurrent(n: usize);
                /// See [`BulkheadConfigBuilder::max_queue`].
                max_queue(n: usize);
                /// See [`BulkheadConfigBuilder::max_wait`].
                max_wait(wait: Duration);
                /// See [`BulkheadConfigBuilder::aimd`].
                aimd(config: AimdConfig);
                /// See [`BulkheadConfigBuilder::gradient`].
                gradient(config: GradientConfig);
                /// See [`BulkheadConfigBuilder::listener`].
                listener(listener: Arc<dyn Listener>);
                /// See [`BulkheadConfigBuilder::max_keys`].
                max_keys(n: usize);
                /// See [`BulkheadConfigBuilder::key_idle_timeout`].
                key_idle_timeout(idle: Duration);
                /// See [`BulkheadConfigBuilder::key_limit`].
                key_limit(key: impl Into<String>, max_concurrent: usize);
            }
        }

        impl<P: IsGrpc> $builder<P> {
            /// Validates the configuration and builds the layer.
            ///
            /// # Errors
            ///
            /// The [`ConfigError`] of [`BulkheadConfigBuilder::build`].
            pub fn build(self) -> Result<$layer<P>, ConfigError> {
                Ok($layer::new(self.config.build()?).protocol(self.protocol))
            }
        }
    };
}

layer_builder! {
    /// Builds a [`BulkheadLayer`]: the [`BulkheadConfigBuilder`] knobs plus the
    /// protocol. Made by [`BulkheadLayer::builder`]; `build()` exists once a
    /// protocol is chosen, so forgetting it is a compile error, not a permit
    /// silently released at the response head:
    ///
    /// ```compile_fail
    /// use palisade_bulkhead::BulkheadLayer;
    /// let layer = BulkheadLayer::builder().max_concurrent(8).build();
    /// ```
    BulkheadLayerBuilder => BulkheadLayer
}

layer_builder! {
    /// Builds a [`KeyedBulkheadLayer`]. Made by [`KeyedBulkheadLayer::builder`];
    /// `build()` exists once a protocol is chosen.
    KeyedBulkheadLayerBuilder => KeyedBulkheadLayer
}
