//! One bulkhead's shared state, the permit guard and the queued waiter.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_body::Settle;
use palisade_core::classify::Outcome;
use palisade_core::error::{BulkheadFull, BulkheadRejection, ConfigError};
use palisade_core::event::{Event, EventKind, LayerName, Listeners};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::BulkheadConfig;
use crate::policy::LimitState;
use crate::state::{Cancelled, Pool, WaitKey};

#[cfg(feature = "metrics")]
struct Gauges {
    in_flight: metrics::Gauge,
    queued: metrics::Gauge,
    limit: metrics::Gauge,
    rejected: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Gauges {
    fn new(key: Option<&str>) -> Self {
        let key = key.unwrap_or("").to_owned();
        Self {
            in_flight: metrics::gauge!("palisade_bulkhead_in_flight", "key" => key.clone()),
            queued: metrics::gauge!("palisade_bulkhead_queued", "key" => key.clone()),
            limit: metrics::gauge!("palisade_bulkhead_limit", "key" => key.clone()),
            rejected: metrics::counter!("palisade_bulkhead_rejected_total", "key" => key),
        }
    }
}

/// The state of one bulkhead (or one partition of a keyed bulkhead).
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) max_wait: Option<Duration>,
    listeners: Listeners,
    key: Option<Box<str>>,
    adaptive: Option<Mutex<LimitState>>,
    #[cfg(feature = "metrics")]
    gauges: Gauges,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("key", &self.key)
            .field("limit", &self.pool.limit())
            .field("in_flight", &self.pool.in_flight())
            .field("queued", &self.pool.queued())
            .field("max_queue", &self.pool.max_queue())
            .field("max_wait", &self.max_wait)
            .field("adaptive", &self.adaptive.is_some())
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(config: &BulkheadConfig, limit: usize, key: Option<Box<str>>) -> Self {
        let shared = Self {
            pool: Pool::new(limit, config.max_queue),
            max_wait: config.max_wait,
            listeners: config.listeners.clone(),
            adaptive: config.adaptive.map(|a| Mutex::new(LimitState::new(a, limit))),
            #[cfg(feature = "metrics")]
            gauges: Gauges::new(key.as_deref()),
            key,
        };
        #[cfg(feature = "metrics")]
        shared.gauges.limit.set(limit as f64);
        shared
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn emit(&self, kind: EventKind<'_>) {
        self.listeners
            .emit(&Event::new(LayerName::Bulkhead, kind).key(self.key()));
    }

    /// Records a refusal and returns its error.
    #[cold]
    pub(crate) fn reject(&self, reason: BulkheadRejection) -> BulkheadFull {
        let phrase = match reason {
            BulkheadRejection::QueueFull => "queue full",
            _ => "wait timed out",
        };
        self.emit(EventKind::Rejected { reason: phrase });
        #[cfg(feature = "metrics")]
        self.gauges.rejected.increment(1);
        BulkheadFull::new(self.pool.limit(), self.pool.max_queue(), reason)
    }

    pub(crate) fn queue_changed(&self) {
        #[cfg(feature = "metrics")]
        self.gauges.queued.set(self.pool.queued() as f64);
    }

    /// Emits the events of a limit change from `old` to `limit`, if it changed.
    fn limit_changed(&self, old: usize, limit: usize, reason: &'static str) {
        if old != limit {
            #[cfg(feature = "metrics")]
            self.gauges.limit.set(limit as f64);
            self.emit(EventKind::LimitChanged {
                from: old,
                to: limit,
                reason,
            });
            self.queue_changed();
        }
    }

    fn observe(&self, outcome: Outcome, rtt: Duration) {
        let Some(adaptive) = &self.adaptive else { return };
        let (old, new) = {
            let mut state = adaptive.lock();
            let old = self.pool.limit();
            let new = state.update(old, self.pool.in_flight(), outcome, rtt);
            if new != old {
                // Inside the lock, so that concurrent updates apply in order.
                self.pool.set_limit(new);
            }
            (old, new)
        };
        if new != old {
            #[cfg(feature = "metrics")]
            self.gauges.limit.set(new as f64);
            let reason = if new > old {
                "adaptive increase"
            } else {
                "adaptive decrease"
            };
            self.emit(EventKind::LimitChanged {
                from: old,
                to: new,
                reason,
            });
            self.queue_changed();
        }
    }

    pub(crate) fn set_limit_by_handle(&self, limit: usize) {
        let old = match &self.adaptive {
            // Under the adaptive lock, so that an adaptive update in progress
            // cannot land after the operator's value and overwrite it.
            Some(adaptive) => {
                let mut state = adaptive.lock();
                state.reset(limit);
                self.pool.set_limit(limit)
            }
            None => self.pool.set_limit(limit),
        };
        self.limit_changed(old, limit, "set by handle");
    }

    pub(crate) fn adaptive_bounds(&self) -> Option<(usize, usize)> {
        self.adaptive.as_ref().map(|a| a.lock().bounds())
    }
}

/// The permit of one admitted call.
///
/// It is held while the inner service works on the call and, for http and
/// gRPC responses, inside the response body (a
/// [`TrackedBody`](palisade_body::TrackedBody)) until the body ends, fails or
/// is dropped. Dropping it returns the slot to the bulkhead — also when the
/// call is cancelled or the inner service panics. With an adaptive limit, its
/// [`Settle`] feeds the call's outcome and latency (from admission) to the
/// algorithm.
pub struct BulkheadPermit {
    shared: Arc<Shared>,
    start: Option<Instant>,
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit")
            .field("bulkhead", &self.shared)
            .finish()
    }
}

impl BulkheadPermit {
    /// Wraps a permit already taken from `shared`'s pool.
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        #[cfg(feature = "metrics")]
        shared.gauges.in_flight.increment(1.0);
        let start = shared.adaptive.is_some().then(Instant::now);
        Self { shared, start }
    }
}

impl Settle for BulkheadPermit {
    #[inline]
    fn settle(self, outcome: Outcome) {
        if let Some(start) = self.start {
            self.shared.observe(outcome, start.elapsed());
        }
        // Drop returns the slot.
    }
}

impl Drop for BulkheadPermit {
    #[inline]
    fn drop(&mut self) {
        self.shared.pool.release();
        #[cfg(feature = "metrics")]
        self.shared.gauges.in_flight.decrement(1.0);
        #[cfg(feature = "metrics")]
        self.shared.queue_changed();
    }
}

/// A caller's place in the queue. Dropping it leaves the queue at once (and
/// passes on a permit that reached it meanwhile).
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    key: WaitKey,
    live: bool,
}

impl Waiter {
    pub(crate) fn new(shared: Arc<Shared>, key: WaitKey) -> Self {
        shared.queue_changed();
        Self {
            shared,
            key,
            live: true,
        }
    }

    /// `Ready` with the permit once the queue reaches this caller.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<BulkheadPermit> {
        if !self.live {
            return Poll::Pending;
        }
        match self.shared.pool.poll_waiter(self.key, cx) {
            Poll::Ready(()) => {
                self.live = false;
                self.shared.queue_changed();
                Poll::Ready(BulkheadPermit::new(self.shared.clone()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives up waiting; returns the permit if one reached the caller meanwhile.
    pub(crate) fn give_up(&mut self) -> Option<BulkheadPermit> {
        if !self.live {
            return None;
        }
        self.live = false;
        let outcome = self.shared.pool.cancel(self.key);
        self.shared.queue_changed();
        match outcome {
            Cancelled::HadPermit => Some(BulkheadPermit::new(self.shared.clone())),
            Cancelled::Left => None,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // A permit that reached us is dropped at once, which passes it on.
        drop(self.give_up());
    }
}

/// Controls a bulkhead while it runs: read its counters, change its limit.
///
/// Obtained from [`BulkheadLayer::handle`](crate::BulkheadLayer::handle),
/// [`Bulkhead::handle`](crate::Bulkhead::handle) or a keyed bulkhead's
/// [`KeyedHandle`](crate::KeyedHandle). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BulkheadHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BulkheadHandle {
    /// Sets the concurrency limit now. Lowering it revokes no permit: calls in
    /// flight finish, and new calls are admitted once fewer than `limit` are
    /// in flight. Raising it admits queued callers at once. With an adaptive
    /// limit, the algorithm continues from `limit` (and later stays within its
    /// floor and ceiling).
    pub fn set_max_concurrent(&self, limit: usize) -> Result<(), ConfigError> {
        if limit == 0 {
            return Err(crate::config::config_error(
                "max_concurrent",
                "must be at least 1, got 0".into(),
            ));
        }
        self.shared.set_limit_by_handle(limit);
        Ok(())
    }

    /// The concurrency limit in force.
    pub fn max_concurrent(&self) -> usize {
        self.shared.pool.limit()
    }

    /// Permits held now (may exceed the limit right after it was lowered).
    pub fn in_flight(&self) -> usize {
        self.shared.pool.in_flight()
    }

    /// Callers waiting now.
    pub fn queued(&self) -> usize {
        self.shared.pool.queued()
    }

    /// The queue's size.
    pub fn max_queue(&self) -> usize {
        self.shared.pool.max_queue()
    }

    /// The floor and ceiling of the adaptive limit, if the limit is adaptive.
    pub fn adaptive_bounds(&self) -> Option<(usize, usize)> {
        self.shared.adaptive_bounds()
    }

    /// The key of this partition, for a keyed bulkhead.
    pub fn key(&self) -> Option<&str> {
        self.shared.key()
    }

    /// Whether two handles control the same bulkhead.
    pub fn same_bulkhead(&self, other: &BulkheadHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
