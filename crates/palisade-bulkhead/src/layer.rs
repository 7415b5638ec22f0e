//! [`BulkheadLayer`] and [`KeyedBulkheadLayer`].

use std::sync::Arc;

use palisade_core::protocol::Plain;
use tower_layer::Layer;

use crate::config::BulkheadConfig;
use crate::keyed::{ByFn, ByRoute, Keyed, KeyedBulkhead, KeyedHandle};
use crate::service::Bulkhead;
use crate::shared::{BulkheadHandle, Shared};

/// Wraps services in a [`Bulkhead`].
///
/// The bulkhead is created with the layer: **every service this layer value
/// (or a clone of it) wraps shares one bulkhead**, unlike tower's
/// `ConcurrencyLimitLayer`, which makes a new semaphore per wrapped service.
/// For one bulkhead per service, use one layer per service.
#[derive(Clone, Debug)]
pub struct BulkheadLayer<P = Plain> {
    shared: Arc<Shared>,
    protocol: P,
}

impl BulkheadLayer<Plain> {
    /// A layer with the given configuration.
    pub fn new(config: BulkheadConfig) -> Self {
        let limit = config.max_concurrent;
        Self {
            shared: Arc::new(Shared::new(&config, limit, None)),
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

    /// Takes the key from the request with `f` instead of the route. A request
    /// for which `f` returns `None` uses the default partition.
    pub fn key_fn<Req, F>(self, f: F) -> KeyedBulkheadLayer<P, ByFn<F>>
    where
        F: for<'r> Fn(&'r Req) -> Option<&'r str>,
    {
        KeyedBulkheadLayer {
            keyed: self.keyed,
            protocol: self.protocol,
            key: ByFn(f),
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
