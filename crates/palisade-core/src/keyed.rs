//! Per-key state, bounded: how a keyed layer (one breaker, one bulkhead per
//! route or gRPC method) finds the key of a request and keeps one value per key.
//!
//! - [`KeyOf`] derives a key from a request; [`ByRoute`] keys by
//!   [`Inspect::route`] and [`KeyFn`] by a closure.
//! - [`KeyedMap`] keeps one `Arc<V>` per key, at most
//!   [`max_keys`](KeyedMap::max_keys) of them, evicting idle or least
//!   recently used values that nobody else holds, and never scanning a map
//!   full of busy values more than once per [`BUSY_RESCAN`].
//!
//! # Why the key is a `Cow<'r, str>` borrowed from the request
//!
//! [`KeyOf::key`] returns `Option<Cow<'r, str>>` where `'r` is the request's
//! lifetime. The common key, the route, is a `&str` inside the request (the
//! http path, the gRPC method): [`ByRoute`] returns it as `Cow::Borrowed`,
//! which is a pointer and a length with no allocation, no reference count and
//! nothing to free, and the map's lookup of a known key takes that `&str` as
//! it is (a read lock, a hash, no allocation). A key that must be computed (a
//! route template, a tenant and a method joined) is returned as
//! `Cow::Owned` and costs its `String`, which only such keys pay. A bare
//! `&'r str` would forbid computed keys; a `String` would allocate for every
//! call, route keys included; `Cow` is the one signature that lets both
//! exist while the route key stays free.
//!
//! # Eviction
//!
//! A [`KeyedMap`] is scanned only when a *new* key arrives and the map holds
//! `max_keys` values. A value can go only when the map holds its only `Arc`
//! (nothing in flight, no waiter, no handle) and the value agrees
//! ([`Evictable::evictable`]): first every such value idle for
//! [`idle_timeout`](KeyedMap::idle_timeout), then, if the map is still full,
//! the least recently used one. If nothing can go, the new key gets no value
//! ([`KeyedMap::get_or_insert_with`] returns `None`: the layer uses its
//! shared unkeyed value instead) and the map is not scanned again for
//! [`BUSY_RESCAN`], so that a flood of new keys does not serialise every call
//! behind an O(keys) scan under the write lock. The map never holds more than
//! `max_keys` values.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use palisade_core::keyed::{Evictable, KeyedMap};
//!
//! struct Counter;
//! impl Evictable for Counter {}
//!
//! let map: KeyedMap<Counter> = KeyedMap::new(1, Duration::from_secs(60));
//! let a = map.get_or_insert_with("/a", || Arc::new(Counter)).unwrap();
//! // "/a" is held (by `a`), so "/b" finds the map full and gets no value of its own.
//! assert!(map.get_or_insert_with("/b", || Arc::new(Counter)).is_none());
//! assert_eq!(map.keys(), ["/a"]);
//! # drop(a);
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::protocol::Inspect;

/// Derives the key of a request for a keyed layer.
///
/// `protocol` is the layer's protocol, which knows where the route is
/// ([`Inspect::route`]). See the [module docs](self) for why the key is a
/// `Cow` borrowed from the request.
pub trait KeyOf<Req, P> {
    /// The key of `request`, or `None` for the layer's shared unkeyed value.
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<Cow<'r, str>>;
}

/// Keys by [`Inspect::route`]: the http path, or the gRPC method as
/// `/package.Service/Method`. Borrows the key from the request: no allocation.
///
/// gRPC methods are few, which suits keyed layers. An http route is the *raw
/// path* (`/users/123`, not `/users/{id}`): every distinct path gets a value
/// of its own until the map is full. For templated http routes key with a
/// [`KeyFn`] closure that returns the template. With the
/// [`Plain`](crate::protocol::Plain) protocol there is no route, and every
/// call uses the unkeyed value.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByRoute;

impl<Req, P: Inspect<Req>> KeyOf<Req, P> for ByRoute {
    #[inline]
    fn key<'r>(&self, protocol: &P, request: &'r Req) -> Option<Cow<'r, str>> {
        protocol.route(request).map(Cow::Borrowed)
    }
}

/// Keys by a closure of the request, made by [`KeyFn::new`] (or a layer's
/// `key_fn`). The closure returns a key borrowed from the request
/// (`Some(path.into())`, free), a static one (`Some("/users/{id}".into())`,
/// free) or a computed one (`Some(format!(..).into())`, one `String`), or
/// `None` for the unkeyed value.
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> KeyFn<F> {
    /// Keys requests of type `Req` by `f`.
    ///
    /// ```
    /// use palisade_core::keyed::{KeyFn, KeyOf};
    /// use palisade_core::protocol::Plain;
    ///
    /// let key = KeyFn::new(|(tenant, _): &(&'static str, u32)| Some((*tenant).into()));
    /// assert_eq!(key.key(&Plain, &("acme", 7)).as_deref(), Some("acme"));
    /// ```
    pub fn new<Req>(f: F) -> Self
    where
        F: for<'r> Fn(&'r Req) -> Option<Cow<'r, str>>,
    {
        Self(f)
    }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

impl<Req, P, F> KeyOf<Req, P> for KeyFn<F>
where
    F: for<'r> Fn(&'r Req) -> Option<Cow<'r, str>>,
{
    #[inline]
    fn key<'r>(&self, _: &P, request: &'r Req) -> Option<Cow<'r, str>> {
        (self.0)(request)
    }
}

/// Whether a [`KeyedMap`] may forget a value that nobody else holds.
///
/// The default lets every unheld value go. A circuit breaker refuses while
/// forgetting it would lift protection (open, half-open, forced).
pub trait Evictable {
    /// Whether the value may be evicted; `idle` tells whether it has been
    /// unused for the map's idle timeout (the first pass) or is merely the
    /// least recently used one (the second pass).
    fn evictable(&self, idle: bool) -> bool {
        let _ = idle;
        true
    }
}

/// How long a full map in which nothing could be evicted is not scanned
/// again: new keys share the unkeyed value meanwhile. One second.
pub const BUSY_RESCAN: Duration = Duration::from_secs(1);

const BUSY_RESCAN_MS: u64 = 1_000;

struct Slot<V> {
    value: Arc<V>,
    last_used_ms: AtomicU64,
}

/// One `Arc<V>` per key, bounded by `max_keys`, with idle and LRU eviction
/// (see the [module docs](self)). Lookups of a known key take a read lock and
/// allocate nothing; a new key allocates its entry once.
pub struct KeyedMap<V> {
    map: RwLock<HashMap<Box<str>, Slot<V>>>,
    max_keys: usize,
    idle_timeout: Duration,
    idle_ms: u64,
    origin: Instant,
    /// When (ms since `origin`, plus one) an eviction scan last found nothing
    /// to evict; 0 when it did not.
    busy_scan_at: AtomicU64,
}

impl<V> fmt::Debug for KeyedMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedMap")
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl<V> KeyedMap<V> {
    /// An empty map of at most `max_keys` values (none at all when 0: every
    /// key then uses the unkeyed value), where a value unused for
    /// `idle_timeout` goes first when room is needed.
    pub fn new(max_keys: usize, idle_timeout: Duration) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            max_keys,
            idle_timeout,
            idle_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            busy_scan_at: AtomicU64::new(0),
        }
    }

    /// The most values kept at once.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How long a value must be unused to be evicted first.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The value of `key`, if it is in the map now (does not mark it used).
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.map.read().get(key).map(|s| Arc::clone(&s.value))
    }

    /// The keys in the map now, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.map.read().keys().map(|k| k.to_string()).collect()
    }

    /// How many values the map holds now.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether the map holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }
}

impl<V: Evictable> KeyedMap<V> {
    /// The value of `key`, marked used now; if `key` is new, `make()`'s value,
    /// after making room if the map is full. `None` when the map is full and
    /// nothing could go (or was found busy less than [`BUSY_RESCAN`] ago):
    /// the caller then uses its unkeyed value.
    pub fn get_or_insert_with(&self, key: &str, make: impl FnOnce() -> Arc<V>) -> Option<Arc<V>> {
        self.lookup_at(key, self.now_ms(), make)
    }

    fn lookup_at(&self, key: &str, now: u64, make: impl FnOnce() -> Arc<V>) -> Option<Arc<V>> {
        if let Some(slot) = self.map.read().get(key) {
            slot.last_used_ms.store(now, Ordering::Relaxed);
            return Some(Arc::clone(&slot.value));
        }
        let mut map = self.map.write();
        if let Some(slot) = map.get(key) {
            slot.last_used_ms.store(now, Ordering::Relaxed);
            return Some(Arc::clone(&slot.value));
        }
        if map.len() >= self.max_keys {
            let busy_at = self.busy_scan_at.load(Ordering::Relaxed);
            if busy_at != 0 && now.saturating_sub(busy_at - 1) < BUSY_RESCAN_MS {
                return None;
            }
            self.evict(&mut map, now);
            if map.len() >= self.max_keys {
                self.busy_scan_at.store(now.saturating_add(1), Ordering::Relaxed);
                return None;
            }
        }
        self.busy_scan_at.store(0, Ordering::Relaxed);
        let value = make();
        map.insert(
            Box::from(key),
            Slot {
                value: Arc::clone(&value),
                last_used_ms: AtomicU64::new(now),
            },
        );
        Some(value)
    }

    /// Makes room in a full map: every unheld, idle, evictable value, then if
    /// still full the least recently used unheld, evictable one.
    fn evict(&self, map: &mut HashMap<Box<str>, Slot<V>>, now: u64) {
        let unheld = |s: &Slot<V>| Arc::strong_count(&s.value) == 1;
        let is_idle = |s: &Slot<V>| now.saturating_sub(s.last_used_ms.load(Ordering::Relaxed)) >= self.idle_ms;
        map.retain(|_, s| !(unheld(s) && is_idle(s) && s.value.evictable(true)));
        if map.len() >= self.max_keys {
            let oldest = map
                .iter()
                .filter(|(_, s)| unheld(s) && s.value.evictable(false))
                .min_by_key(|(_, s)| s.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Grpc, Plain};

    /// A value that may refuse eviction (a breaker that is open).
    #[derive(Default)]
    struct Value {
        pinned: AtomicBool,
    }

    impl Evictable for Value {
        fn evictable(&self, _idle: bool) -> bool {
            !self.pinned.load(Ordering::Relaxed)
        }
    }

    fn new() -> Arc<Value> {
        Arc::new(Value::default())
    }

    fn sorted(map: &KeyedMap<Value>) -> Vec<String> {
        let mut keys = map.keys();
        keys.sort();
        keys
    }

    #[test]
    fn a_known_key_returns_its_value() {
        let map = KeyedMap::new(4, Duration::from_secs(1));
        let a = map.lookup_at("a", 0, new).unwrap();
        let again = map.lookup_at("a", 5, || unreachable!("a is known")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(Arc::ptr_eq(&a, &map.get("a").unwrap()));
        assert_eq!(map.len(), 1);
        assert!(map.get("b").is_none());
    }

    #[test]
    fn nothing_is_evicted_while_there_is_room() {
        let map = KeyedMap::new(3, Duration::from_millis(10));
        map.lookup_at("a", 0, new).unwrap();
        map.lookup_at("b", 1_000, new).unwrap();
        assert_eq!(sorted(&map), ["a", "b"]);
    }

    #[test]
    fn idle_values_go_first_then_the_least_recently_used() {
        let map = KeyedMap::new(3, Duration::from_millis(100));
        map.lookup_at("a", 0, new).unwrap();
        map.lookup_at("b", 10, new).unwrap();
        map.lookup_at("c", 20, new).unwrap();
        // At 115 "a" and "b" are idle: both go, "c" stays.
        map.lookup_at("d", 115, new).unwrap();
        assert_eq!(sorted(&map), ["c", "d"]);
        map.lookup_at("e", 116, new).unwrap();
        // Nothing idle: the least recently used ("c") goes.
        map.lookup_at("c", 117, || unreachable!()).unwrap();
        map.lookup_at("f", 118, new).unwrap();
        assert_eq!(sorted(&map), ["c", "e", "f"]);
    }

    #[test]
    fn held_and_refusing_values_stay_and_the_new_key_gets_none() {
        let map = KeyedMap::new(2, Duration::from_millis(100));
        let held = map.lookup_at("a", 0, new).unwrap();
        map.lookup_at("b", 0, new)
            .unwrap()
            .pinned
            .store(true, Ordering::Relaxed);
        assert!(map.lookup_at("c", 1_000, new).is_none());
        assert_eq!(sorted(&map), ["a", "b"]);
        drop(held);
        // Busy a moment ago: not rescanned for a second, even though "a" could go.
        assert!(map.lookup_at("c", 1_999, new).is_none());
        assert_eq!(sorted(&map), ["a", "b"]);
        map.lookup_at("c", 2_000, new).unwrap();
        assert_eq!(sorted(&map), ["b", "c"]);
    }

    #[test]
    fn a_successful_insert_ends_the_busy_throttle() {
        let map = KeyedMap::new(1, Duration::from_millis(100));
        let held = map.lookup_at("a", 0, new).unwrap();
        assert!(map.lookup_at("b", 0, new).is_none());
        drop(held);
        map.lookup_at("b", 1_000, new).unwrap();
        // A later full map is scanned again at once.
        map.lookup_at("c", 1_001, new).unwrap();
        assert_eq!(sorted(&map), ["c"]);
    }

    #[test]
    fn a_zero_sized_map_holds_nothing() {
        let map: KeyedMap<Value> = KeyedMap::new(0, Duration::from_secs(1));
        assert!(map.lookup_at("a", 0, new).is_none());
        assert!(map.is_empty());
    }

    #[test]
    fn keys_by_route_borrow_and_closures_may_own() {
        let request = http::Request::post("http://peer/echo.Echo/Unary").body(()).unwrap();
        let key = ByRoute.key(&Grpc::default(), &request);
        assert!(matches!(key, Some(Cow::Borrowed("/echo.Echo/Unary"))));
        assert!(KeyOf::<_, Plain>::key(&ByRoute, &Plain, &request).is_none());
        let owned = KeyFn::new(|r: &http::Request<()>| Some(format!("{} {}", r.method(), r.uri().path()).into()));
        assert_eq!(owned.key(&Plain, &request).as_deref(), Some("POST /echo.Echo/Unary"));
        let borrowed = KeyFn::new(|r: &http::Request<()>| r.uri().host().map(Cow::Borrowed));
        assert!(matches!(borrowed.key(&Plain, &request), Some(Cow::Borrowed("peer"))));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Looks a key up and keeps (or drops) the value.
        Lookup {
            key: u8,
            hold: bool,
        },
        /// Releases the oldest held value.
        Release,
        /// Pins or unpins a key's value (refuses eviction).
        Pin {
            key: u8,
            pinned: bool,
        },
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, any::<bool>()).prop_map(|(key, hold)| Op::Lookup { key, hold }),
            1 => Just(Op::Release),
            1 => (0u8..12, any::<bool>()).prop_map(|(key, pinned)| Op::Pin { key, pinned }),
            2 => (0u16..1_500).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// The map never outgrows `max_keys`, never forgets a held or pinned
        /// value, hands out one value per key, and refuses a new key only
        /// when it is full of values that cannot go (or was so within the
        /// throttle second).
        #[test]
        fn bounded_and_never_forgets_what_is_in_use(
            max_keys in 0usize..5,
            idle in 1u64..2_000,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let map: KeyedMap<Value> = KeyedMap::new(max_keys, Duration::from_millis(idle));
            let mut now = 0u64;
            let mut held: Vec<(String, Arc<Value>)> = Vec::new();
            let mut last_busy: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Lookup { key, hold } => {
                        let key = key.to_string();
                        let before = map.get(&key);
                        let could_go = map.map.read().values().any(|s| {
                            Arc::strong_count(&s.value) == 1 && s.value.evictable(false)
                        });
                        let full = map.len() >= max_keys;
                        let got = map.lookup_at(&key, now, new);
                        match (&before, &got) {
                            (Some(b), Some(g)) => prop_assert!(Arc::ptr_eq(b, g), "a known key keeps its value"),
                            (Some(_), None) => prop_assert!(false, "a known key is always found"),
                            (None, None) => {
                                prop_assert!(full, "a new key is refused only by a full map");
                                let throttled = last_busy.is_some_and(|at| now - at < BUSY_RESCAN_MS);
                                prop_assert!(!could_go || throttled, "refused although a value could go");
                                if !throttled {
                                    last_busy = Some(now);
                                }
                            }
                            (None, Some(_)) => last_busy = None,
                        }
                        if let Some(value) = got {
                            prop_assert!(map.get(&key).is_some());
                            if hold {
                                held.push((key, value));
                            }
                        }
                    }
                    Op::Release => {
                        if !held.is_empty() {
                            held.remove(0);
                        }
                    }
                    Op::Pin { key, pinned } => {
                        if let Some(value) = map.get(&key.to_string()) {
                            value.pinned.store(pinned, Ordering::Relaxed);
                        }
                    }
                    Op::Advance(ms) => now += u64::from(ms),
                }
                prop_assert!(map.len() <= max_keys, "{} keys > max {}", map.len(), max_keys);
                for (key, value) in &held {
                    let kept = map.get(key);
                    prop_assert!(kept.is_some_and(|k| Arc::ptr_eq(&k, value)), "held {key} was evicted");
                }
            }
        }
    }
}
