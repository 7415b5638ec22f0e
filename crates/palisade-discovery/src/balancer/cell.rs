//! How news about a peer reaches the balancer: each peer has a [`PeerCell`]
//! (the [`AvailabilitySink`] behind the peer's
//! [`FleetMembership`](palisade_core::peer::FleetMembership)) that records the
//! latest availability and readiness observed, and queues itself once in the
//! balancer's [`Inbox`]. The balancer applies the inbox under its write lock
//! the next time it looks (`poll_ready`, `call`).
//!
//! Why a queue and not a direct update: the peer's middleware reports on
//! whatever thread made the change, often *inside* the balancer's own call to
//! the peer, while the balancer holds its set's read lock. Taking the write
//! lock there would deadlock; so a report only takes the cell's lock and the
//! inbox's (never the set's), never calls back into anything, and allocates
//! nothing beyond the inbox's vector, which holds each peer at most once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Wake;

use palisade_core::peer::{Availability, AvailabilitySink};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::driver::Waiters;
use super::eject::EjectionBudget;
use crate::health::Readiness;

/// What was observed about one peer since the balancer last looked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The latest availability, and when it was observed (an open peer's
    /// probe is due `retry_in` after that).
    pub(crate) availability: Option<(Availability, Instant)>,
    /// The latest readiness of its client.
    pub(crate) readiness: Option<Readiness>,
    /// The peer refused the all-open policy (an early probe or a reset): it
    /// is left out of the policy until the peer reports a change.
    pub(crate) refused_policy: bool,
    /// The peer itself reported (a transition), rather than the balancer
    /// seeing it when it asked: what lets a refusing peer back into the
    /// policy, even when its reports were coalesced.
    pub(crate) reported: bool,
    /// The peer's client woke its waker (it was not ready when polled):
    /// it is taken as ready again, and its next `poll_ready` says for sure.
    pub(crate) woken: bool,
}

#[derive(Debug, Default)]
struct Pending {
    observed: Observed,
    queued: bool,
}

/// One peer's mailbox: the sink of its fleet membership.
#[derive(Debug)]
pub(crate) struct PeerCell {
    /// Its own weak reference, to queue itself.
    me: Weak<PeerCell>,
    inbox: Weak<Inbox>,
    /// The serial number of the slot it belongs to (unique over the
    /// balancer's life).
    pub(crate) serial: u64,
    /// The slot's index in the peer set; written under the set's write lock
    /// (a removal moves the last slot into the hole).
    index: AtomicUsize,
    /// False once the peer left the set.
    active: AtomicBool,
    /// The fleet's ejection budget, and whether this peer holds a grant of it.
    budget: Arc<EjectionBudget>,
    ejected: AtomicBool,
    pending: Mutex<Pending>,
}

impl PeerCell {
    pub(crate) fn new(serial: u64, inbox: &Arc<Inbox>, budget: &Arc<EjectionBudget>) -> Arc<Self> {
        Arc::new_cyclic(|me| PeerCell {
            me: me.clone(),
            inbox: Arc::downgrade(inbox),
            serial,
            index: AtomicUsize::new(usize::MAX),
            active: AtomicBool::new(true),
            budget: Arc::clone(budget),
            ejected: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Whether the peer holds an ejection grant.
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    fn give_back_ejection(&self) {
        if self.ejected.swap(false, Ordering::AcqRel) {
            self.budget.give_back();
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index.load(Ordering::Acquire)
    }

    pub(crate) fn set_index(&self, index: usize) {
        self.index.store(index, Ordering::Release);
    }

    /// The peer left the set: later reports are dropped, the peer may
    /// forget this membership, and its ejection grant (if any) goes back.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
        self.give_back_ejection();
    }

    pub(crate) fn is_active_member(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Records what was observed and queues the cell, once, in the inbox.
    pub(crate) fn observe(&self, update: impl FnOnce(&mut Observed)) {
        if !self.is_active_member() {
            return;
        }
        let first = {
            let mut pending = self.pending.lock();
            update(&mut pending.observed);
            !std::mem::replace(&mut pending.queued, true)
        };
        if first && let (Some(inbox), Some(me)) = (self.inbox.upgrade(), self.me.upgrade()) {
            inbox.push(me);
        }
    }

    pub(crate) fn observe_availability(&self, availability: Availability) {
        let now = Instant::now();
        self.observe(|o| o.availability = Some((availability, now)));
    }

    pub(crate) fn observe_readiness(&self, readiness: Readiness) {
        self.observe(|o| o.readiness = Some(readiness));
    }

    /// What was observed since the last call; the cell may queue itself again.
    pub(crate) fn take(&self) -> Observed {
        let mut pending = self.pending.lock();
        pending.queued = false;
        std::mem::take(&mut pending.observed)
    }
}

/// The waker a peer's client is polled with (in a pick and in `poll_ready`):
/// when a client that was not ready wakes it, the peer is queued in the
/// inbox as woken, which wakes every caller waiting in `poll_ready`. One
/// waker per peer, built once, shared by every caller: a client that keeps
/// only the last waker it was given (a tower `Buffer`, a tonic `Channel`)
/// cannot lose a caller's wake-up.
impl Wake for PeerCell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.observe(|o| o.woken = true);
    }
}

impl AvailabilitySink for PeerCell {
    fn availability_changed(&self, availability: Availability) {
        let now = Instant::now();
        self.observe(|o| {
            o.availability = Some((availability, now));
            o.reported = true;
            o.refused_policy = false;
        });
    }

    fn is_active(&self) -> bool {
        self.is_active_member()
    }

    /// Grants the ejection while the fleet's budget has room. A peer that
    /// left the set is no longer this fleet's to count: granted, and not
    /// counted.
    fn request_ejection(&self) -> bool {
        if !self.is_active_member() || self.is_ejected() {
            return true;
        }
        if !self.budget.try_take() {
            return false;
        }
        if self.ejected.swap(true, Ordering::AcqRel) {
            // A racing request of the same peer won: one grant per peer.
            self.budget.give_back();
        }
        if !self.is_active_member() {
            // Removed meanwhile: `deactivate` may have missed this grant.
            self.give_back_ejection();
        }
        true
    }

    fn release_ejection(&self) {
        self.give_back_ejection();
    }
}

/// The cells with news, waiting for the balancer's write lock.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Whether `queue` may be non-empty: one load on the hot path.
    pending: AtomicBool,
    queue: Mutex<Vec<Arc<PeerCell>>>,
    /// Tasks waiting in `poll_ready`: news may let them go.
    waiters: Arc<Waiters>,
}

impl Inbox {
    pub(crate) fn new(waiters: Arc<Waiters>) -> Self {
        Self {
            pending: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
            waiters,
        }
    }

    fn push(&self, cell: Arc<PeerCell>) {
        self.queue.lock().push(cell);
        // SeqCst with the waiters' flag: a caller that registers and then
        // finds nothing pending cannot miss this push's wake-up.
        self.pending.store(true, Ordering::SeqCst);
        self.waiters.wake_all();
    }

    /// Puts back cells whose peer is not in the set yet (a report that came
    /// between `join_fleet` and the insertion): applied at the next drain.
    pub(crate) fn put_back(&self, cells: impl IntoIterator<Item = Arc<PeerCell>>) {
        let mut queue = self.queue.lock();
        let before = queue.len();
        queue.extend(cells);
        if queue.len() > before {
            self.pending.store(true, Ordering::Release);
        }
    }

    /// Whether news is waiting.
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Moves the waiting cells into `into` (empty, its capacity reused), so
    /// that draining allocates nothing once the vectors have grown.
    pub(crate) fn take(&self, into: &mut Vec<Arc<PeerCell>>) {
        self.pending.store(false, Ordering::SeqCst);
        std::mem::swap(&mut *self.queue.lock(), into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::peer::FleetMembership;

    #[test]
    fn a_cell_queues_itself_once_until_taken_and_goes_quiet_when_removed() {
        let inbox = Arc::new(Inbox::default());
        let cell = PeerCell::new(7, &inbox, &Arc::new(EjectionBudget::new(None)));
        let membership = FleetMembership::new(cell.clone());
        assert!(!inbox.is_pending());
        membership.notify(Availability::Probe);
        cell.observe_readiness(Readiness::NotReady);
        membership.notify(Availability::Available);
        assert!(inbox.is_pending());
        let mut cells = Vec::new();
        inbox.take(&mut cells);
        assert_eq!(cells.len(), 1, "queued once for three reports");
        let observed = cells[0].take();
        assert_eq!(observed.availability.map(|a| a.0), Some(Availability::Available));
        assert_eq!(observed.readiness, Some(Readiness::NotReady));
        assert!(!inbox.is_pending());
        // Taken: the next report queues it again.
        membership.notify(Availability::Probe);
        let mut again = Vec::new();
        inbox.take(&mut again);
        assert_eq!(again.len(), 1);
        again[0].take();
        // Removed: reports are dropped, the peer may forget the membership,
        // and its ejection grant goes back.
        assert!(membership.request_ejection());
        assert!(cell.is_ejected());
        cell.deactivate();
        assert!(!cell.is_ejected());
        assert!(!membership.is_active());
        membership.notify(Availability::Available);
        assert!(!inbox.is_pending());
    }
}
