//! Keyed partitions: one bulkhead per key of the request.
//!
//! A slow route (or gRPC method) fills only its own partition; the others keep
//! their slots. Memory is bounded:
//!
//! - at most `max_keys` partitions are kept;
//! - when a new key arrives and the map is full, partitions that are *unused*
//!   (nothing in flight, nobody queued, no handle held) and idle for
//!   `key_idle_timeout` are evicted; if none is, the least recently used
//!   unused partition is evicted;
//! - if every partition is in use, the new key shares the *default
//!   partition*, which also serves requests without a key.
//!
//! Lookups of a known key take a read lock and allocate nothing; a new key
//! allocates its partition once. The key trait ([`KeyOf`], [`ByRoute`],
//! [`KeyFn`](palisade_core::keyed::KeyFn)) and the bounded map with its
//! eviction are `palisade-core`'s ([`palisade_core::keyed`]), shared with
//! the keyed circuit breaker; a map found full of busy partitions is not
//! scanned again for a second.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_body::TrackResponse;
use palisade_core::BoxError;
use palisade_core::classify::Classify;
use palisade_core::keyed::{ByRoute, KeyOf, KeyedMap};
use palisade_core::protocol::{Inspect, Plain};
use tower_service::Service;

use crate::config::BulkheadConfig;
use crate::future::{ResponseFuture, admit};
use crate::shared::{BulkheadHandle, BulkheadPermit, Limiter};

/// The partitions of a keyed bulkhead: a bounded [`KeyedMap`] plus the
/// default partition.
#[derive(Debug)]
pub(crate) struct Keyed {
    config: BulkheadConfig,
    default: Arc<Limiter>,
    partitions: KeyedMap<Limiter>,
}

impl Keyed {
    pub(crate) fn new(config: BulkheadConfig) -> Self {
        let default = Arc::new(Limiter::new(&config, config.max_concurrent, None));
        Self {
            partitions: KeyedMap::new(config.max_keys, config.key_idle_timeout),
            config,
            default,
        }
    }

    pub(crate) fn partition(&self, key: Option<&str>) -> Arc<Limiter> {
        let Some(key) = key else {
            return self.default.clone();
        };
        self.partitions
            .get_or_insert_with(key, || {
                let limit = self.config.limit_for_key(key);
                Arc::new(Limiter::new(&self.config, limit, Some(key.into())))
            })
            .unwrap_or_else(|| self.default.clone())
    }
}

/// A bulkhead per key of the request. Built by
/// [`KeyedBulkheadLayer`](crate::KeyedBulkheadLayer); clones share the partitions.
pub struct KeyedBulkhead<S, P = Plain, K = ByRoute> {
    inner: S,
    keyed: Arc<Keyed>,
    protocol: P,
    key: K,
}

impl<S: fmt::Debug, P: fmt::Debug, K> fmt::Debug for KeyedBulkhead<S, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBulkhead")
            .field("inner", &self.inner)
            .field("partitions", &self.keyed.partitions.len())
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl<S: Clone, P: Clone, K: Clone> Clone for KeyedBulkhead<S, P, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: self.keyed.clone(),
            protocol: self.protocol.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, P, K> KeyedBulkhead<S, P, K> {
    pub(crate) fn from_parts(inner: S, keyed: Arc<Keyed>, protocol: P, key: K) -> Self {
        Self {
            inner,
            keyed,
            protocol,
            key,
        }
    }

    /// A handle on the partitions.
    pub fn handle(&self) -> KeyedHandle {
        KeyedHandle {
            keyed: self.keyed.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, P, K, Req> Service<Req> for KeyedBulkhead<S, P, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: TrackResponse<S::Response, S::Error, BulkheadPermit> + Inspect<Req> + Clone,
    K: KeyOf<Req, P>,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P>;

    /// Forwards the inner service's readiness; never waits for a slot.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = self.keyed.partition(self.key.key(&self.protocol, &request).as_deref());
        let cancelled = Classify::<S::Response, S::Error>::abandon_policy(&self.protocol).call_dropped();
        admit(&shared, &mut self.inner, request, self.protocol.clone(), cancelled)
    }
}

/// Reads and controls the partitions of a keyed bulkhead.
#[derive(Clone, Debug)]
pub struct KeyedHandle {
    pub(crate) keyed: Arc<Keyed>,
}

impl KeyedHandle {
    /// The partition of `key`, if it exists now.
    pub fn partition(&self, key: &str) -> Option<BulkheadHandle> {
        self.keyed.partitions.get(key).map(|shared| BulkheadHandle { shared })
    }

    /// The default partition: requests without a key, and keys that found the
    /// map full of busy partitions.
    pub fn default_partition(&self) -> BulkheadHandle {
        BulkheadHandle {
            shared: self.keyed.default.clone(),
        }
    }

    /// How many keyed partitions exist now.
    pub fn len(&self) -> usize {
        self.keyed.partitions.len()
    }

    /// Whether no keyed partition exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
