//! Keyed breakers: one breaker per key derived from the request (a gRPC
//! method, an http route), with per-key configuration and a bounded map.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_body::TrackResponse;
use palisade_core::classify::Classify;
use palisade_core::error::{BoxError, ConfigError};
use palisade_core::protocol::{Inspect, Plain};
use palisade_core::route::{RouteTable, RouteTableBuilder};
use parking_lot::RwLock;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::CircuitBreakerConfig;
use crate::future::ResponseFuture;
use crate::shared::{Breaker, CallGuard, CircuitBreakerHandle};

/// Derives a breaker key from a request.
pub trait KeyOf<P, Req> {
    /// The key of `request`, or `None` for the shared unkeyed breaker.
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<Cow<'r, str>>;
}

/// Keys by [`Inspect::route`]: the http path, or the gRPC method as
/// `/package.Service/Method`. Borrows the key from the request: no allocation.
///
/// gRPC methods are few, which suits keyed breakers. An http route is the
/// *raw path* (`/users/123`, not `/users/{id}`): every distinct path gets a
/// breaker of its own, and each one needs its own failures to trip. For
/// templated http routes, key with a [`KeyFn`] closure that returns the
/// template, or the map fills up with one breaker per id (up to
/// [`max_keys`](KeyedCircuitBreakerBuilder::max_keys), after which new keys
/// share the unkeyed breaker).
#[derive(Clone, Copy, Debug, Default)]
pub struct ByRoute;

impl<P: Inspect<Req>, Req> KeyOf<P, Req> for ByRoute {
    #[inline]
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<Cow<'r, str>> {
        protocol.route(request).map(Cow::Borrowed)
    }
}

/// Keys by a closure returning an owned key (one `String` per call).
#[derive(Clone, Copy)]
pub struct KeyFn<F>(pub F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<P, Req, F> KeyOf<P, Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<String>,
{
    fn key<'r>(&self, _: &P, request: &'r Req) -> Option<Cow<'r, str>> {
        (self.0)(request).map(Cow::Owned)
    }
}

struct Entry {
    shared: Arc<Breaker>,
    last_used_ms: AtomicU64,
}

struct Keyed {
    base: CircuitBreakerConfig,
    overrides: RouteTable<CircuitBreakerConfig>,
    max_keys: usize,
    idle_timeout: Duration,
    origin: Instant,
    map: RwLock<HashMap<Box<str>, Entry>>,
    unkeyed: Arc<Breaker>,
    /// When (ms since `origin`, plus one) an eviction scan last found nothing
    /// to evict; 0 when it did not. New keys then share the unkeyed breaker
    /// without rescanning for [`BUSY_RESCAN_MS`], so that a flood of new keys
    /// does not serialise every call behind an O(keys) scan under the write lock.
    busy_scan_at: AtomicU64,
}

/// How long a full map in which nothing could be evicted is not scanned again.
const BUSY_RESCAN_MS: u64 = 1_000;

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("keys", &self.map.read().len())
            .finish_non_exhaustive()
    }
}

impl Keyed {
    fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn lookup(&self, key: &str) -> Arc<Breaker> {
        let now = self.now_ms();
        if let Some(entry) = self.map.read().get(key) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Arc::clone(&entry.shared);
        }
        let mut map = self.map.write();
        if let Some(entry) = map.get(key) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Arc::clone(&entry.shared);
        }
        if map.len() >= self.max_keys {
            let busy_at = self.busy_scan_at.load(Ordering::Relaxed);
            if busy_at != 0 && now.saturating_sub(busy_at - 1) < BUSY_RESCAN_MS {
                return Arc::clone(&self.unkeyed);
            }
            self.evict(&mut map, now);
            if map.len() >= self.max_keys {
                self.busy_scan_at.store(now.saturating_add(1), Ordering::Relaxed);
                return Arc::clone(&self.unkeyed);
            }
        }
        self.busy_scan_at.store(0, Ordering::Relaxed);
        let config = self.overrides.get(key).unwrap_or(&self.base).clone();
        let shared = Breaker::new(config, Some(Arc::from(key)));
        map.insert(
            Box::from(key),
            Entry {
                shared: Arc::clone(&shared),
                last_used_ms: AtomicU64::new(now),
            },
        );
        shared
    }

    /// Makes room in a full map. Only breakers nobody else holds (no call in
    /// flight, no handle) can go, and only if forgetting them loses no
    /// protection: closed breakers, or open ones idle for `idle_timeout`
    /// whose cooldown has passed (the next call would be a probe anyway).
    /// Idle ones go first; if none is idle, the least recently used closed one.
    fn evict(&self, map: &mut HashMap<Box<str>, Entry>, now: u64) {
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let unused = |e: &Entry| Arc::strong_count(&e.shared) == 1;
        let is_idle = |e: &Entry| now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) >= idle;
        map.retain(|_, e| !(unused(e) && is_idle(e) && e.shared.evictable(true)));
        if map.len() >= self.max_keys {
            let oldest = map
                .iter()
                .filter(|(_, e)| unused(e) && e.shared.evictable(false))
                .min_by_key(|(_, e)| e.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
    }
}

/// Builds a [`KeyedCircuitBreakerLayer`].
#[derive(Debug)]
pub struct KeyedCircuitBreakerBuilder {
    base: CircuitBreakerConfig,
    overrides: RouteTableBuilder<CircuitBreakerConfig>,
    max_keys: usize,
    idle_timeout: Duration,
}

impl KeyedCircuitBreakerBuilder {
    /// The configuration of `key`'s breaker, instead of the base one.
    /// Matched exactly against the key (the route, by default); a key
    /// configured twice is an error at [`build`](Self::build) (see
    /// [`palisade_core::route`]).
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
    /// unkeyed breaker, and the map is not scanned again for a second.
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

    /// Validates and builds the layer: `max_keys` and `idle_timeout` must
    /// not be zero, and each `key_config` key non-empty and configured once.
    pub fn build(self) -> Result<KeyedCircuitBreakerLayer, ConfigError> {
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
        let unkeyed = Breaker::new(self.base.clone(), None);
        Ok(KeyedCircuitBreakerLayer {
            keyed: Arc::new(Keyed {
                base: self.base,
                overrides,
                max_keys: self.max_keys,
                idle_timeout: self.idle_timeout,
                origin: Instant::now(),
                map: RwLock::new(HashMap::new()),
                unkeyed,
                busy_scan_at: AtomicU64::new(0),
            }),
            protocol: Plain,
            key: ByRoute,
        })
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
    /// A builder whose keys get breakers configured by `base` unless overridden.
    pub fn builder(base: CircuitBreakerConfig) -> KeyedCircuitBreakerBuilder {
        KeyedCircuitBreakerBuilder {
            base,
            overrides: RouteTableBuilder::new(),
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
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

    /// Derives keys with `key` instead of the route.
    pub fn key_by<K2>(self, key: K2) -> KeyedCircuitBreakerLayer<P, K2> {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed,
            protocol: self.protocol,
            key,
        }
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
    K: KeyOf<P, Req>,
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
        self.keyed.map.read().get(key).map(|e| CircuitBreakerHandle {
            shared: Arc::clone(&e.shared),
        })
    }

    /// The breaker of requests without a key.
    pub fn unkeyed(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.keyed.unkeyed),
        }
    }

    /// The keys known now.
    pub fn keys(&self) -> Vec<String> {
        self.keyed.map.read().keys().map(|k| k.to_string()).collect()
    }

    /// How many keys are known now.
    pub fn len(&self) -> usize {
        self.keyed.map.read().len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
