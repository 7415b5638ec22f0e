//! Keyed breakers: one breaker per key derived from the request (a gRPC
//! method, an http route), with per-key configuration and a bounded map.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_body::TrackResponse;
use palisade_core::classify::Classify;
use palisade_core::error::BoxError;
use palisade_core::keyed::{ByRoute, KeyFn, KeyOf, KeyedMap};
use palisade_core::protocol::Plain;
use palisade_core::route::RouteTable;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::CircuitBreakerConfig;
use crate::future::ResponseFuture;
use crate::shared::{Breaker, CallGuard, CircuitBreakerHandle};

/// The default [`max_keys`](crate::KeyedCircuitBreakerLayerBuilder::max_keys).
pub(crate) const DEFAULT_MAX_KEYS: usize = 1024;
/// The default [`idle_timeout`](crate::KeyedCircuitBreakerLayerBuilder::idle_timeout).
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The breakers of a keyed layer: a bounded [`KeyedMap`] plus the unkeyed one.
pub(crate) struct Keyed {
    base: CircuitBreakerConfig,
    overrides: RouteTable<CircuitBreakerConfig>,
    map: KeyedMap<Breaker>,
    unkeyed: Arc<Breaker>,
}

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed").field("map", &self.map).finish_non_exhaustive()
    }
}

impl Keyed {
    pub(crate) fn new(
        base: CircuitBreakerConfig,
        overrides: RouteTable<CircuitBreakerConfig>,
        max_keys: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            unkeyed: Breaker::new(base.clone(), None),
            base,
            overrides,
            map: KeyedMap::new(max_keys, idle_timeout),
        }
    }

    fn lookup(&self, key: &str) -> Arc<Breaker> {
        self.map
            .get_or_insert_with(key, || {
                let config = self.overrides.get(key).unwrap_or(&self.base).clone();
                Breaker::new(config, Some(Arc::from(key)))
            })
            .unwrap_or_else(|| Arc::clone(&self.unkeyed))
    }
}

/// Wraps services in a [`KeyedCircuitBreaker`]: one breaker per request key.
///
/// Every service the layer wraps shares its map of breakers.
#[derive(Debug)]
pub struct KeyedCircuitBreakerLayer<P = Plain, K = ByRoute> {
    keyed: Arc<Keyed>,
    protocol: P,
    key: K,
}

impl<P: Clone, K: Clone> Clone for KeyedCircuitBreakerLayer<P, K> {
    fn clone(&self) -> Self {
        Self {
            keyed: Arc::clone(&self.keyed),
            protocol: self.protocol.clone(),
            key: self.key.clone(),
        }
    }
}

impl KeyedCircuitBreakerLayer {
    /// A keyed layer whose keys get breakers configured by an already
    /// validated `base`, with the default bounds (1024 keys, 10 minutes idle),
    /// classifying with [`Plain`] until [`protocol`](Self::protocol) chooses
    /// another: a convenience for non-http services. Over http or gRPC prefer
    /// [`builder`](Self::builder), which makes the protocol choice explicit.
    pub fn new(base: CircuitBreakerConfig) -> Self {
        Self::from_keyed(
            Keyed::new(base, RouteTable::empty(), DEFAULT_MAX_KEYS, DEFAULT_IDLE_TIMEOUT),
            Plain,
        )
    }
}

impl<P> KeyedCircuitBreakerLayer<P> {
    pub(crate) fn from_keyed(keyed: Keyed, protocol: P) -> Self {
        Self {
            keyed: Arc::new(keyed),
            protocol,
            key: ByRoute,
        }
    }
}

impl<P, K> KeyedCircuitBreakerLayer<P, K> {
    /// Classifies with `protocol` (which also finds the route for [`ByRoute`]).
    pub fn protocol<Q>(self, protocol: Q) -> KeyedCircuitBreakerLayer<Q, K> {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed,
            protocol,
            key: self.key,
        }
    }

    /// Derives keys with `key` (any [`KeyOf`]) instead of the route.
    pub fn key_by<K2>(self, key: K2) -> KeyedCircuitBreakerLayer<P, K2> {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed,
            protocol: self.protocol,
            key,
        }
    }

    /// Takes the key from the request with `f` instead of the route
    /// ([`KeyFn`]): a key borrowed from the request or a static one is free,
    /// a computed one costs its `String`. A request for which `f` returns
    /// `None` uses the unkeyed breaker.
    pub fn key_fn<Req, F>(self, f: F) -> KeyedCircuitBreakerLayer<P, KeyFn<F>>
    where
        F: for<'r> Fn(&'r Req) -> Option<std::borrow::Cow<'r, str>>,
    {
        self.key_by(KeyFn::new(f))
    }

    /// A handle on the layer's breakers.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle {
        KeyedCircuitBreakerHandle {
            keyed: Arc::clone(&self.keyed),
        }
    }
}

impl<S, P: Clone, K: Clone> Layer<S> for KeyedCircuitBreakerLayer<P, K> {
    type Service = KeyedCircuitBreaker<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            keyed: Arc::clone(&self.keyed),
            protocol: self.protocol.clone(),
            key: self.key.clone(),
        }
    }
}

/// A service with one circuit breaker per request key. Requests without a key
/// share one unkeyed breaker with the base configuration.
#[derive(Debug)]
pub struct KeyedCircuitBreaker<S, P = Plain, K = ByRoute> {
    inner: S,
    keyed: Arc<Keyed>,
    protocol: P,
    key: K,
}

impl<S: Clone, P: Clone, K: Clone> Clone for KeyedCircuitBreaker<S, P, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: Arc::clone(&self.keyed),
            protocol: self.protocol.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, P, K> KeyedCircuitBreaker<S, P, K> {
    /// A handle on the breakers.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle {
        KeyedCircuitBreakerHandle {
            keyed: Arc::clone(&self.keyed),
        }
    }
}

impl<S, P, K, Req> Service<Req> for KeyedCircuitBreaker<S, P, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: TrackResponse<S::Response, S::Error, CallGuard> + Clone,
    K: KeyOf<Req, P>,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let cancelled = Classify::<S::Response, S::Error>::abandon_policy(&self.protocol).call_dropped();
        let admitted = match self.key.key(&self.protocol, &request) {
            Some(key) => self.keyed.lookup(&key).acquire(cancelled),
            None => self.keyed.unkeyed.acquire(cancelled),
        };
        match admitted {
            Ok(guard) => ResponseFuture::called(self.inner.call(request), guard, self.protocol.clone()),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

/// Reads and controls the breakers of a keyed layer.
#[derive(Clone, Debug)]
pub struct KeyedCircuitBreakerHandle {
    keyed: Arc<Keyed>,
}

impl KeyedCircuitBreakerHandle {
    /// The breaker of `key`, if the key is known (has not been evicted).
    pub fn get(&self, key: &str) -> Option<CircuitBreakerHandle> {
        self.keyed.map.get(key).map(|shared| CircuitBreakerHandle { shared })
    }

    /// The breaker of requests without a key.
    pub fn unkeyed(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.keyed.unkeyed),
        }
    }

    /// The keys known now.
    pub fn keys(&self) -> Vec<String> {
        self.keyed.map.keys()
    }

    /// How many keys are known now.
    pub fn len(&self) -> usize {
        self.keyed.map.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
