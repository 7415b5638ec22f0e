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
//! allocates its partition once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use palisade_body::TrackResponse;
use palisade_core::BoxError;
use palisade_core::classify::Classify;
use palisade_core::protocol::{Inspect, Plain};
use parking_lot::RwLock;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::BulkheadConfig;
use crate::future::{ResponseFuture, admit};
use crate::shared::{BulkheadHandle, BulkheadPermit, Limiter};

/// Chooses the partition key of a request.
pub trait KeyFor<Req, P> {
    /// The key of `request`, if it has one; `None` uses the default partition.
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<&'r str>;
}

/// Keys by [`Inspect::route`]: the http path, or the gRPC method as
/// `/package.Service/Method`.
///
/// gRPC methods are few, which suits a keyed bulkhead. An http path is the
/// full path (`/users/123`): for templated routes key with a closure that
/// returns the template, or every id becomes a partition until `max_keys` is
/// reached and new keys fall back to the default partition. With the
/// [`Plain`] protocol there is no route and every call uses the default partition.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByRoute;

impl<Req, P: Inspect<Req>> KeyFor<Req, P> for ByRoute {
    #[inline]
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<&'r str> {
        protocol.route(request)
    }
}

/// Keys by a closure. See [`KeyedBulkheadLayer::key_fn`](crate::KeyedBulkheadLayer::key_fn).
#[derive(Clone, Copy)]
pub struct ByFn<F>(pub F);

impl<F> fmt::Debug for ByFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByFn(..)")
    }
}

impl<Req, P, F> KeyFor<Req, P> for ByFn<F>
where
    F: for<'r> Fn(&'r Req) -> Option<&'r str>,
{
    #[inline]
    fn key<'r>(&self, _: &P, request: &'r Req) -> Option<&'r str> {
        (self.0)(request)
    }
}

#[derive(Debug)]
struct Partition {
    shared: Arc<Limiter>,
    last_used: AtomicU64,
}

/// The partitions of a keyed bulkhead.
#[derive(Debug)]
pub(crate) struct Keyed {
    config: BulkheadConfig,
    default: Arc<Limiter>,
    partitions: RwLock<HashMap<Box<str>, Partition>>,
    epoch: Instant,
    /// When (ms since `epoch`, plus one) an eviction scan last found every
    /// partition in use; 0 when it did not. New keys then go to the default
    /// partition without rescanning for a while, so a flood of new keys does
    /// not serialise every call behind an O(keys) scan under the write lock.
    busy_scan_at: AtomicU64,
}

/// How long a map found full of busy partitions is not scanned again.
const BUSY_RESCAN_MS: u64 = 1_000;

impl Keyed {
    pub(crate) fn new(config: BulkheadConfig) -> Self {
        let default = Arc::new(Limiter::new(&config, config.max_concurrent, None));
        Self {
            config,
            default,
            partitions: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            busy_scan_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn partition(&self, key: Option<&str>) -> Arc<Limiter> {
        let Some(key) = key else {
            return self.default.clone();
        };
        let now = self.now_ms();
        {
            let map = self.partitions.read();
            if let Some(p) = map.get(key) {
                p.last_used.store(now, Ordering::Relaxed);
                return p.shared.clone();
            }
        }
        let mut map = self.partitions.write();
        if let Some(p) = map.get(key) {
            p.last_used.store(now, Ordering::Relaxed);
            return p.shared.clone();
        }
        if map.len() >= self.config.max_keys {
            let busy_at = self.busy_scan_at.load(Ordering::Relaxed);
            if busy_at != 0 && now.saturating_sub(busy_at - 1) < BUSY_RESCAN_MS {
                return self.default.clone();
            }
            self.evict(&mut map, now);
        }
        if map.len() >= self.config.max_keys {
            self.busy_scan_at.store(now.saturating_add(1), Ordering::Relaxed);
            return self.default.clone();
        }
        self.busy_scan_at.store(0, Ordering::Relaxed);
        let limit = self.config.limit_for_key(key);
        let shared = Arc::new(Limiter::new(&self.config, limit, Some(key.into())));
        map.insert(
            key.into(),
            Partition {
                shared: shared.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        shared
    }

    fn evict(&self, map: &mut HashMap<Box<str>, Partition>, now: u64) {
        let idle = u64::try_from(self.config.key_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        // Only the map holds an unused partition: no permit, waiter or handle.
        let unused = |p: &Partition| Arc::strong_count(&p.shared) == 1;
        map.retain(|_, p| !(unused(p) && now.saturating_sub(p.last_used.load(Ordering::Relaxed)) >= idle));
        if map.len() >= self.config.max_keys {
            let oldest = map
                .iter()
                .filter(|(_, p)| unused(p))
                .min_by_key(|(_, p)| p.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
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
            .field("partitions", &self.keyed.partitions.read().len())
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
    K: KeyFor<Req, P>,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P>;

    /// Forwards the inner service's readiness; never waits for a slot.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = self.keyed.partition(self.key.key(&self.protocol, &request));
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
        self.keyed.partitions.read().get(key).map(|p| BulkheadHandle {
            shared: p.shared.clone(),
        })
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
        self.keyed.partitions.read().len()
    }

    /// Whether no keyed partition exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
