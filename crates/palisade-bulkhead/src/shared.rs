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
use crate::pool::{Cancelled, Pool, WaitKey};

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

/// The concurrency limiter of one bulkhead (or of one partition of a keyed
/// bulkhead): its permit pool, its adaptive limit, how long callers may
/// queue, and who hears about it. Shared (by `Arc`) by its services,
/// permits, waiters and handles.
pub(crate) struct Limiter {
    pub(crate) pool: Pool,
    pub(crate) max_wait: Option<Duration>,
    listeners: Listeners,
    key: Option<Box<str>>,
    adaptive: Option<Mutex<LimitState>>,
    /// The origin of an adaptive limit's call times.
    origin: Instant,
    #[cfg(feature = "metrics")]
    gauges: Gauges,
}

impl fmt::Debug for Limiter {
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

/// Any partition nobody holds (no permit, waiter or handle) may be evicted:
/// forgetting it loses no protection.
impl palisade_core::keyed::Evictable for Limiter {}

impl Limiter {
    pub(crate) fn new(config: &BulkheadConfig, limit: usize, key: Option<Box<str>>) -> Self {
        let shared = Self {
            pool: Pool::new(limit, config.max_queue),
            max_wait: config.max_wait,
            listeners: config.listeners.clone(),
            adaptive: config.adaptive.map(|a| Mutex::new(LimitState::new(a, limit))),
            origin: Instant::now(),
            #[cfg(feature = "metrics")]
            gauges: Gauges::new(key.as_deref()),
            key,
        };
        #[cfg(feature = "metrics")]
        shared.gauges.limit.set(limit as f64);
        shared
    }

    /// Nanoseconds since `origin` (saturating at about 584 years).
    #[inline]
    fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
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

    /// A queued call's deadline passed before it got a slot: it leaves with
    /// `DeadlineExceeded` (counted with the refusals).
    #[cold]
    pub(crate) fn deadline_passed_in_queue(&self) {
        self.emit(EventKind::Rejected {
            reason: "deadline passed while queued",
        });
        #[cfg(feature = "metrics")]
        self.gauges.rejected.increment(1);
    }

    /// A call that got a slot saw its deadline pass while the inner service
    /// was not ready: it leaves with `DeadlineExceeded`, unsent, and the
    /// slot comes back.
    #[cold]
    pub(crate) fn deadline_passed_awaiting_ready(&self) {
        self.emit(EventKind::Rejected {
            reason: "deadline passed waiting for the inner service to be ready",
        });
        #[cfg(feature = "metrics")]
        self.gauges.rejected.increment(1);
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
/// [`Settle`] feeds the call's outcome and latency to the algorithm: the
/// latency from admission to the response head (or the error), not to the end
/// of the body, so that a peer serving long streams does not look slow. A
/// call whose future is dropped before the response arrived feeds the
/// protocol's
/// [`call_dropped`](palisade_core::classify::AbandonPolicy::call_dropped)
/// outcome, if that is not `Ignored`.
pub struct BulkheadPermit {
    shared: Arc<Limiter>,
    latency: Latency,
}

/// What an adaptive limit learns of a call's latency: two words, so that the
/// permit stays three words and every write to it is a whole word (a byte
/// written into a value that is then moved as words stalls the copy, which
/// the free-slot path would pay on every call).
///
/// - `start == UNTIMED`: no adaptive limit, nothing is measured;
/// - otherwise the call was admitted `start` ns after the bulkhead's origin
///   (about 584 years of range), and `mark` is either one of the `RUNNING_*`
///   values (no response yet; dropped now, the call counts as that outcome)
///   or the latency to the response head (or error) in ns.
#[derive(Clone, Copy, Debug)]
struct Latency {
    start: u64,
    mark: u64,
}

impl Latency {
    const UNTIMED: u64 = u64::MAX;
    const RUNNING_IGNORED: u64 = u64::MAX;
    const RUNNING_SUCCESS: u64 = u64::MAX - 1;
    const RUNNING_FAILURE: u64 = u64::MAX - 2;

    const fn untimed() -> Self {
        Latency {
            start: Self::UNTIMED,
            mark: 0,
        }
    }

    fn is_timed(self) -> bool {
        self.start != Self::UNTIMED
    }

    /// Whether the call is timed and its response has not arrived.
    fn is_running(self) -> bool {
        self.is_timed() && self.mark >= Self::RUNNING_FAILURE
    }

    fn running_mark(cancelled: Outcome) -> u64 {
        match cancelled {
            Outcome::Ignored => Self::RUNNING_IGNORED,
            Outcome::Success => Self::RUNNING_SUCCESS,
            Outcome::Failure => Self::RUNNING_FAILURE,
        }
    }

    /// What a call dropped while running counts as.
    fn cancelled(self) -> Outcome {
        match self.mark {
            Self::RUNNING_SUCCESS => Outcome::Success,
            Self::RUNNING_FAILURE => Outcome::Failure,
            _ => Outcome::Ignored,
        }
    }
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
    pub(crate) fn new(shared: Arc<Limiter>) -> Self {
        #[cfg(feature = "metrics")]
        shared.gauges.in_flight.increment(1.0);
        let latency = if shared.adaptive.is_some() {
            Latency {
                start: shared.nanos(),
                mark: Latency::RUNNING_IGNORED,
            }
        } else {
            Latency::untimed()
        };
        Self { shared, latency }
    }

    /// The bulkhead the permit belongs to.
    pub(crate) fn shared(&self) -> &Limiter {
        &self.shared
    }

    /// Time since admission.
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.shared.nanos().saturating_sub(self.latency.start))
    }

    #[cold]
    #[inline(never)]
    fn fix_latency(&mut self) {
        // Below the RUNNING_* marks: 2^64 - 3 ns is some 584 years.
        let latency = self.shared.nanos().saturating_sub(self.latency.start);
        self.latency.mark = latency.min(Latency::RUNNING_FAILURE - 1);
    }

    /// Dropped while its call ran: an adaptive limit hears the call's `cancelled` outcome.
    #[cold]
    #[inline(never)]
    fn dropped_while_running(&self) {
        let cancelled = self.latency.cancelled();
        if cancelled != Outcome::Ignored {
            self.shared.observe(cancelled, self.elapsed());
        }
    }
}

/// The permit of a call whose inner future runs, held by the response future
/// until the response (or error) arrives. Dropped with it, the call was
/// cancelled: an adaptive limit hears the protocol's `call_dropped` outcome.
/// (Kept apart from [`BulkheadPermit`], whose `Drop` stays a bare release.)
pub(crate) struct RunningPermit(Option<BulkheadPermit>);

impl RunningPermit {
    /// `permit`'s call starts; dropped before its response it counts as `cancelled`.
    #[inline]
    pub(crate) fn new(mut permit: BulkheadPermit, cancelled: Outcome) -> Self {
        if permit.latency.is_timed() {
            permit.latency.mark = Latency::running_mark(cancelled);
        }
        Self(Some(permit))
    }

    /// The response head (or the error) arrived: the permit goes on with it,
    /// its call's latency fixed now. `None` once taken.
    #[inline]
    pub(crate) fn take_at_head(&mut self) -> Option<BulkheadPermit> {
        // Out of line: the adaptive path reads the clock, the others pay one compare.
        if let Some(permit) = &mut self.0
            && permit.latency.is_timed()
        {
            permit.fix_latency();
        }
        self.0.take()
    }
}

impl Drop for RunningPermit {
    #[inline]
    fn drop(&mut self) {
        if let Some(permit) = &self.0
            && permit.latency.is_timed()
        {
            permit.dropped_while_running();
        }
    }
}

impl Settle for BulkheadPermit {
    #[inline]
    fn settle(self, outcome: Outcome) {
        if self.latency.is_timed() {
            let latency = if self.latency.is_running() {
                // Settled without a response (a dropped future): its time so far.
                self.elapsed()
            } else {
                Duration::from_nanos(self.latency.mark)
            };
            self.shared.observe(outcome, latency);
        }
        // Drop returns the slot.
    }

    /// Only an adaptive limit hears outcomes: a fixed bulkhead's response is
    /// not classified at all.
    #[inline]
    fn wants_outcome(&self) -> bool {
        self.latency.is_timed()
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
    shared: Arc<Limiter>,
    key: WaitKey,
    live: bool,
}

impl Waiter {
    pub(crate) fn new(shared: Arc<Limiter>, key: WaitKey) -> Self {
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

    pub(crate) fn shared(&self) -> &Limiter {
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
    pub(crate) shared: Arc<Limiter>,
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
}
