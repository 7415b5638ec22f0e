//! The balancer's shared state and how it is kept up to date.
//!
//! # Locks
//!
//! - The peer set lives under a read-mostly [`RwLock`]: every pick takes
//!   the read lock, so threads calling through clones choose at the same
//!   time; the write lock is taken only to apply news (a registry change,
//!   the reports of peers, a probe popped from the queue). A pick then locks
//!   only the chosen peer's service, for its `poll_ready` + `call`.
//! - The discover sits under its own lock, taken only when its waker raised
//!   a flag ([`driver`]); peers report into an [`Inbox`](cell::Inbox) that
//!   never takes the set's lock ([`cell`]).
//! - The all-open policy holds a lock of its own while it acts, so that a
//!   fleet is reset (or probed) once, not once per caller. It is only ever
//!   *tried* on the request path: a caller that finds it taken looks at the
//!   set again instead of blocking its thread, and a caller in `poll_ready`
//!   waits (Pending, woken when the acting caller is done).
//!
//! Lock order: discover, then set, then one peer's service, then a cell,
//! then the inbox. User code (a breaker's listeners, a peer's
//! `poll_ready`/`call`/`availability`) runs with at most the set's read lock
//! held, never its write lock, and events are emitted once every lock is
//! released.

mod call;
mod cell;
mod choose;
mod driver;
mod eject;
mod events;
mod probes;
mod set;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use palisade_core::BoxError;
use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, PeerId, Unavailable};
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower_service::Service;

use self::cell::{Inbox, PeerCell};
use self::driver::{DiscoverStatus, DiscoverWake, Driver, Waiters};
use self::eject::EjectionBudget;
use self::events::Metrics;
use self::set::{Joining, PeerSet, Tracked};
use crate::config::Settings;
use crate::future::{PeerStats, error_chain};
use crate::health::{HealthReport, PeerHealth, PeerState, Readiness};
use crate::peer::PeerWeight;
pub(crate) use call::Sent;

/// What `poll_ready` does after looking at the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Ready: a call may be made.
    Go,
    /// Pending: the caller's waker is registered for any news.
    Pending,
    /// News came in while looking: apply it and look again.
    News,
}

/// How many not-ready peers one `poll_ready` re-polls at most.
const NOT_READY_POLLS: usize = 8;

/// Keeps a value on a cache line of its own: the set's lock word is written
/// by every pick (a read lock is an atomic add), and must not evict the
/// read-mostly fields next to it from the other threads' caches.
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct CacheLine<T>(pub(crate) T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Everything the clones of one [`PeerDiscovery`](crate::PeerDiscovery) share.
pub(crate) struct Balancer<D: Discover> {
    pub(crate) settings: Arc<Settings>,
    set: CacheLine<RwLock<PeerSet<D::Key, D::Service>>>,
    driver: Mutex<Driver<D>>,
    discover_status: Mutex<DiscoverStatus>,
    wake: Arc<DiscoverWake>,
    /// The discover's waker (built once: polling allocates nothing).
    waker: Waker,
    waiters: Arc<Waiters>,
    inbox: Arc<Inbox>,
    /// How many peers their breakers may take out of rotation at once.
    ejections: Arc<EjectionBudget>,
    /// Mirrors the set's not-ready list length, so that `poll_ready` skips
    /// the re-polling without a lock when there is none.
    not_ready: CacheLine<AtomicUsize>,
    not_ready_cursor: AtomicUsize,
    next_serial: AtomicU64,
    policy_lock: Mutex<()>,
    /// Raised while a caller applies the all-open policy (holds
    /// `policy_lock`): callers in `poll_ready` wait for it instead of
    /// failing.
    policy_acting: AtomicBool,
    metrics: Metrics,
}

impl<D: Discover> fmt::Debug for Balancer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.settings.service)
            .finish_non_exhaustive()
    }
}

impl<D: Discover> Balancer<D> {
    pub(crate) fn new(discover: D, settings: Arc<Settings>) -> Self {
        let waiters = Arc::new(Waiters::default());
        let wake = DiscoverWake::new(waiters.clone());
        let waker = Waker::from(wake.clone());
        Self {
            metrics: Metrics::new(&settings),
            ejections: Arc::new(EjectionBudget::new(settings.max_ejected_share)),
            settings,
            set: CacheLine(RwLock::new(PeerSet::default())),
            driver: Mutex::new(Driver {
                discover: Some(Box::pin(discover)),
            }),
            discover_status: Mutex::new(DiscoverStatus::default()),
            wake,
            waker,
            inbox: Arc::new(Inbox::new(waiters.clone())),
            waiters,
            not_ready: CacheLine(AtomicUsize::new(0)),
            not_ready_cursor: AtomicUsize::new(0),
            next_serial: AtomicU64::new(0),
            policy_lock: Mutex::new(()),
            policy_acting: AtomicBool::new(false),
        }
    }
}

impl<D> Balancer<D>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: CheckAvailability + PeerWeight,
    D::Error: Into<BoxError>,
{
    pub(crate) fn len(&self) -> usize {
        self.set.read_recursive().len()
    }

    /// Applies the reports waiting in the inbox, if any (one atomic load
    /// when there are none).
    pub(crate) fn apply_inbox(&self) {
        if !self.inbox.is_pending() {
            return;
        }
        let mut set = self.set.write();
        self.drain(&mut set);
        let events = std::mem::take(&mut set.deferred);
        drop(set);
        events::emit(&events, &self.settings);
    }

    /// Applies the inbox under the write lock the caller holds.
    fn drain(&self, set: &mut PeerSet<D::Key, D::Service>) {
        if !self.inbox.is_pending() {
            return;
        }
        let mut cells = std::mem::take(&mut set.drained);
        self.inbox.take(&mut cells);
        let now = Instant::now();
        let mut early = Vec::new();
        for cell in cells.drain(..) {
            if !cell.is_active_member() {
                continue;
            }
            let i = cell.index();
            if i < set.len() && Arc::ptr_eq(&set.peer(i).cell, &cell) {
                let observed = cell.take();
                set.apply(i, observed, now);
            } else {
                // Reported between joining and being inserted.
                early.push(cell);
            }
        }
        set.drained = cells;
        if !early.is_empty() {
            self.inbox.put_back(early);
        }
        self.after_change(set);
    }

    fn after_change(&self, set: &PeerSet<D::Key, D::Service>) {
        self.not_ready.store(set.not_ready().len(), Ordering::Relaxed);
        self.ejections.set_peers(set.len());
        self.metrics.counts(set.len(), set.counts(), self.ejections.ejected());
    }

    /// Applies every change the discover has ready, if its waker said it
    /// has news. Never fails: a discover error is logged and kept for the
    /// health report, the last known set keeps serving, and a discover that
    /// ended leaves the set as it is.
    pub(crate) fn drive_discover(&self) {
        if !self.wake.has_news() {
            return;
        }
        // Another thread is draining it: it applies what is ready.
        let Some(mut driver) = self.driver.try_lock() else {
            return;
        };
        if !self.wake.take_news() {
            return;
        }
        let mut cx = Context::from_waker(&self.waker);
        while let Some(discover) = driver.discover.as_mut() {
            match discover.as_mut().poll_discover(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    tracing::debug!(target: "palisade", layer = "discovery", "discover stream ended; keeping the last known peers");
                    driver.discover = None;
                    self.discover_status.lock().ended = true;
                }
                Poll::Ready(Some(Ok(Change::Insert(key, service)))) => self.insert(key, service),
                Poll::Ready(Some(Ok(Change::Remove(key)))) => self.remove(&key),
                Poll::Ready(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    tracing::warn!(target: "palisade", layer = "discovery", error = %error_chain(&*error), "discover failed; keeping the last known peers");
                    self.discover_status.lock().error = Some(error_chain(&*error));
                    // A `Discover` is a `TryStream`: an error item does not
                    // end it. Stop for now (a stream that fails at once again
                    // must not spin here) and poll it on the next `poll_ready`.
                    self.wake.raise();
                    return;
                }
            }
        }
    }

    /// Adds a peer (or replaces a known key's service in place). The peer
    /// joins the fleet and is asked its availability before the write lock
    /// is taken: no user code runs under it.
    fn insert(&self, key: D::Key, service: D::Service) {
        let known = self.set.read().cell_of(&key);
        let cell = known.unwrap_or_else(|| {
            PeerCell::new(
                self.next_serial.fetch_add(1, Ordering::Relaxed),
                &self.inbox,
                &self.ejections,
            )
        });
        let notifies = service.join_fleet(FleetMembership::new(cell.clone()));
        let availability = service.availability();
        let joining = Joining {
            weight: service.weight().max(1),
            service,
            cell,
            notifies,
            availability,
            at: Instant::now(),
        };
        let id = PeerId::new(key.to_string());
        let load = self.settings.load;
        let (replaced, events) = {
            let mut set = self.set.write();
            let replaced = set.insert(key, id, joining, || Arc::new(PeerStats::new(load)));
            self.drain(&mut set);
            self.after_change(&set);
            (replaced, std::mem::take(&mut set.deferred))
        };
        if replaced.is_some() {
            tracing::debug!(target: "palisade", layer = "discovery", "peer replaced in place (load, breaker state and history kept)");
        }
        // The old service is dropped outside the lock.
        drop(replaced);
        events::emit(&events, &self.settings);
    }

    fn remove(&self, key: &D::Key) {
        let (removed, events) = {
            let mut set = self.set.write();
            let removed = set.remove(key);
            self.after_change(&set);
            (removed, std::mem::take(&mut set.deferred))
        };
        // The removed peer's service and state are freed outside the lock;
        // calls in flight hold their own future and in-flight guard.
        drop(removed);
        events::emit(&events, &self.settings);
    }

    /// Re-polls a few peers whose client was not ready, each with its own
    /// waker (see [`PeerCell`]): a client that becomes ready wakes it, which
    /// brings the peer back and wakes every caller waiting in `poll_ready`.
    pub(crate) fn poll_not_ready<Req>(&self)
    where
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        if self.not_ready.load(Ordering::Relaxed) == 0 {
            return;
        }
        {
            let set = self.set.read();
            let list = set.not_ready();
            let n = list.len();
            let start = self.not_ready_cursor.fetch_add(NOT_READY_POLLS, Ordering::Relaxed);
            for k in 0..n.min(NOT_READY_POLLS) {
                let slot = set.peer(list[(start + k) % n]);
                let mut service = slot.service.lock();
                let mut cx = Context::from_waker(&slot.waker);
                match service.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => slot.cell.observe_readiness(Readiness::Ready),
                    Poll::Pending => {}
                    Poll::Ready(Err(error)) => {
                        let error: BoxError = error.into();
                        tracing::warn!(target: "palisade", layer = "discovery", peer = %slot.id, error = %error_chain(&*error), "peer client failed; not picked until replaced");
                        slot.stats.record_error(&*error);
                        slot.cell.observe_readiness(Readiness::Failed);
                    }
                }
            }
        }
        self.apply_inbox();
    }

    /// Whether the caller must wait (back-pressure): no peer can take a call
    /// now, but some available peer's client is only busy (not ready), no
    /// probe is due and no news is waiting; or another caller is applying
    /// the all-open policy right now. The caller is woken on any news: a
    /// busy client that becomes ready (every not-ready client was last
    /// polled with its peer's waker, which queues the peer as news), a
    /// registry change, a peer's report, the end of the policy's action.
    pub(crate) fn must_wait(&self, cx: &Context<'_>) -> Wait {
        let acting = || self.policy_acting.load(Ordering::SeqCst);
        if self.not_ready.load(Ordering::Relaxed) == 0 && !acting() {
            return Wait::Go;
        }
        let blocked = || {
            if self.inbox.is_pending() {
                // News to apply first (a client woke, a peer reported).
                return Wait::News;
            }
            let set = self.set.read();
            let blocked = set.pickable().is_empty()
                && (acting()
                    || (!set.not_ready().is_empty() && set.next_due().is_none_or(|(at, _)| at > Instant::now())));
            if blocked { Wait::Pending } else { Wait::Go }
        };
        let first = blocked();
        if first != Wait::Pending {
            return first;
        }
        // Registered, then checked again: news that came in between is not
        // lost (it either shows in the check or wakes the waker).
        self.waiters.register(cx.waker());
        blocked()
    }

    pub(crate) fn health(&self) -> HealthReport {
        // `read_recursive`: a breaker's listener may call this while the
        // same thread holds the read lock for a pick.
        let set = self.set.read_recursive();
        let now = Instant::now();
        let status = self.discover_status.lock().clone();
        let peers = set
            .peers()
            .map(|slot| {
                // A peer whose service is busy (this very thread may be
                // inside its call) is reported from what the balancer knows.
                let availability = match slot.service.try_lock() {
                    Some(service) => service.availability(),
                    None => believed(slot.tracked, now),
                };
                let last = slot.stats.last_error();
                PeerHealth::new(
                    slot.id.clone(),
                    PeerState::of(availability, now),
                    availability,
                    slot.readiness,
                    slot.weight,
                    &slot.stats,
                    last,
                )
            })
            .collect();
        HealthReport::new(
            self.settings.service.as_deref().map(str::to_owned),
            self.settings.registry.as_ref().map(|r| r.state()),
            self.settings.registry.as_ref().and_then(|r| r.note()),
            status.error,
            status.ended,
            self.settings.all_open,
            now,
            peers,
        )
        .with_ejections(
            self.ejections.is_capped(),
            self.ejections.ejected(),
            self.ejections.limit(),
        )
    }
}

/// What the balancer believes of a peer, as an [`Availability`].
fn believed(tracked: Tracked, now: Instant) -> Availability {
    match tracked {
        Tracked::Available => Availability::Available,
        Tracked::Degraded { .. } => Availability::Degraded,
        Tracked::Probe { .. } => Availability::Probe,
        Tracked::Open { until } => Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in: until.saturating_duration_since(now),
        },
        Tracked::Busy { .. } => Availability::Unavailable {
            reason: Unavailable::ProbesBusy,
            retry_in: std::time::Duration::ZERO,
        },
        Tracked::Other { until } => Availability::Unavailable {
            reason: Unavailable::Other,
            retry_in: until.saturating_duration_since(now),
        },
    }
}

#[cfg(test)]
mod tests;
