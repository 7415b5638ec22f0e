//! The request path: choose a peer and hand it the call.
//!
//! In order, each bounded so that a call costs O(1) however the fleet is
//! doing:
//!
//! 1. **A peer due for a look goes first** (the probe queue's head, when its
//!    instant has passed): an open peer whose cooldown ended gets its probe
//!    on the next call, whatever the random draws would say, and so does a
//!    degraded peer once per recheck. At most [`PROBE_POPS`] per call.
//! 2. **Power of two choices** among the pickable peers ([`choose`]). The
//!    winner is asked its availability and polled for readiness under its
//!    own lock; if it cannot take the call, the other candidate is tried.
//! 3. **Every peer open**: the all-open policy ([`AllOpenPolicy`]) may reset
//!    the open breakers or send this call as an early probe.
//! 4. Otherwise the call fails at once with [`NoAvailablePeers`], built from
//!    the counts the set keeps.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use palisade_core::BoxError;
use palisade_core::error::NoAvailablePeers;
use palisade_core::peer::{AttemptRecord, Availability, CheckAvailability, PeerId};
use palisade_core::protocol::Inspect;
use parking_lot::RwLockReadGuard;
use tokio::time::Instant;
use tower::discover::Discover;
use tower_service::Service;

use super::driver::Waiters;
use super::events::{self, Deferred};
use super::set::{Category, PeerSet, Tracked};
use super::{Balancer, choose};
use crate::config::AllOpenPolicy;
use crate::future::{InFlight, error_chain};
use crate::health::Readiness;
use crate::peer::PeerWeight;

/// How many due peers one call looks at at most (the rest wait for the next
/// calls), so that a call stays cheap after many cooldowns ended at once.
const PROBE_POPS: usize = 8;
/// How many rounds of two choices a call makes at most, when chosen peers
/// turn out unable to take it (reports not yet applied, a client that just
/// became busy).
const PICK_ROUNDS: usize = 3;

/// The peers (by their cell's serial) that one call already took from the
/// probe queue and offered itself to: the same call does not offer itself
/// to them again (a peer whose client is not ready, or that refused, would
/// otherwise come back at the queue's head and eat the call's attempts).
/// On the stack: no allocation.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    serials: [u64; PROBE_POPS],
    len: usize,
}

impl Tried {
    pub(crate) fn contains(&self, serial: u64) -> bool {
        self.serials[..self.len].contains(&serial)
    }

    pub(crate) fn push(&mut self, serial: u64) {
        if self.len < self.serials.len() {
            self.serials[self.len] = serial;
            self.len += 1;
        }
    }
}

/// A call handed to a peer.
pub(crate) struct Sent<F> {
    pub(crate) future: F,
    pub(crate) guard: InFlight,
    /// The chosen peer, when the request carries an attempt record.
    pub(crate) peer: Option<PeerId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Whether it is available (a pick).
    Check,
    /// Whether it is available, for a peer taken from the probe queue: what
    /// it answers is reported even when the balancer believed it already,
    /// which queues it again (a degraded peer's next recheck).
    Due,
    /// For an early probe (the all-open policy).
    EarlyProbe,
}

enum Due<F, Req> {
    Sent(Sent<F>),
    /// The due peer could not take the call.
    Failed(Req),
    /// No due peer this call may use.
    NoneFresh(Req),
}

enum Policy<F, Req> {
    Sent(Sent<F>),
    /// Peers may be available now: pick again.
    Again(Req),
    /// Nothing to do: fail the call.
    No(Req),
}

/// The all-open policy is being applied: raised while the policy's lock is
/// held, lowered (and the callers waiting in `poll_ready` woken) on every
/// path out, a panic of a peer's code included.
struct Acting<'a> {
    flag: &'a AtomicBool,
    waiters: &'a Waiters,
    _lock: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::SeqCst);
        self.waiters.wake_all();
    }
}

type Fut<D, Req> = <<D as Discover>::Service as Service<Req>>::Future;
type Set<'a, D> = RwLockReadGuard<'a, PeerSet<<D as Discover>::Key, <D as Discover>::Service>>;

impl<D> Balancer<D>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: CheckAvailability + PeerWeight,
    D::Error: Into<BoxError>,
{
    /// Chooses a peer for `req` and calls it, or says why none could take it.
    #[inline]
    pub(crate) fn call<Req, P>(&self, protocol: &P, mut req: Req) -> Result<Sent<Fut<D, Req>>, NoAvailablePeers>
    where
        P: Inspect<Req>,
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        self.apply_inbox();
        // A retry's record (a handle: cloned only when it names peers).
        let record = protocol.attempt_record(&req).filter(|r| !r.is_empty()).cloned();
        let mut due_budget = PROBE_POPS;
        let mut rounds = 0;
        let mut policy_tried = false;
        // Due peers that an earlier attempt of this call used wait for the
        // next call, unless no other peer can take this one.
        let mut due_ignores_record = false;
        let mut skip_due = false;
        // Separate lists: a peer the due step asked (and found still open)
        // may yet be asked for an early probe by the all-open policy.
        let mut due_tried = Tried::default();
        let mut policy_tried_peers = Tried::default();
        loop {
            let set = self.set.read();
            let due_head = set.next_due().filter(|&(at, _)| at <= Instant::now());
            if due_budget > 0 && due_head.is_some() && !skip_due {
                due_budget -= 1;
                drop(set);
                match self.call_due(protocol, req, record.as_ref(), due_ignores_record, &mut due_tried) {
                    Due::Sent(sent) => return Ok(sent),
                    Due::Failed(back) => req = back,
                    Due::NoneFresh(back) => {
                        req = back;
                        skip_due = true;
                    }
                }
                continue;
            }
            if !set.pickable().is_empty() {
                rounds += 1;
                let excluding = if self.in_panic(&set) { None } else { record.as_ref() };
                let (first, second) = choose::two(&set, excluding);
                for i in std::iter::once(first).chain(second) {
                    match self.try_peer(&set, i, req, Ask::Check, protocol) {
                        Ok(sent) => return Ok(sent),
                        Err(back) => req = back,
                    }
                }
                drop(set);
                self.apply_inbox();
                if rounds >= PICK_ROUNDS {
                    break;
                }
                continue;
            }
            drop(set);
            if due_budget > 0 && due_head.is_some() && !due_ignores_record {
                due_ignores_record = true;
                skip_due = false;
                continue;
            }
            if policy_tried {
                break;
            }
            policy_tried = true;
            match self.all_open(protocol, req, &mut policy_tried_peers) {
                Policy::Sent(sent) => return Ok(sent),
                Policy::Again(back) => req = back,
                Policy::No(back) => {
                    drop(back);
                    break;
                }
            }
        }
        Err(self.reject())
    }

    /// Below the panic threshold the attempt record no longer excludes
    /// peers, so that retries spread over the few peers left.
    fn in_panic(&self, set: &PeerSet<D::Key, D::Service>) -> bool {
        self.settings
            .panic_threshold
            .is_some_and(|t| (set.pickable().len() as f64) < t * set.len() as f64)
    }

    /// Pops the first due peer that `record` does not name (or, with
    /// `allow_used`, one it names when no other is due) and offers it the
    /// call. Whatever it answers is reported, which queues it again when it
    /// still is not available; peers set aside for the record are queued
    /// again at once, and so are peers this call already offered itself to
    /// (`tried`).
    fn call_due<Req, P>(
        &self,
        protocol: &P,
        req: Req,
        record: Option<&AttemptRecord>,
        allow_used: bool,
        tried: &mut Tried,
    ) -> Due<Fut<D, Req>, Req>
    where
        P: Inspect<Req>,
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        let mut set = self.set.write();
        self.drain(&mut set);
        let now = Instant::now();
        let mut chosen = None;
        let mut used = Vec::new();
        let mut skipped = Vec::new();
        for _ in 0..PROBE_POPS {
            let Some(i) = set.pop_due(now) else { break };
            if tried.contains(set.peer(i).cell.serial) {
                skipped.push(i);
            } else if record.is_some_and(|r| r.contains(&set.peer(i).id)) {
                used.push(i);
            } else {
                chosen = Some(i);
                break;
            }
        }
        if chosen.is_none() && allow_used {
            chosen = used.pop();
        }
        for i in used.into_iter().chain(skipped) {
            set.requeue(i);
        }
        if let Some(i) = chosen {
            tried.push(set.peer(i).cell.serial);
        }
        let events = std::mem::take(&mut set.deferred);
        let set = parking_lot::RwLockWriteGuard::downgrade(set);
        let result = match chosen {
            Some(i) => match self.try_peer(&set, i, req, Ask::Due, protocol) {
                Ok(sent) => Due::Sent(sent),
                Err(back) => Due::Failed(back),
            },
            None => Due::NoneFresh(req),
        };
        drop(set);
        events::emit(&events, &self.settings);
        result
    }

    /// Offers the call to peer `i`: asks it (availability, or an early
    /// probe), polls its client without a waker, and calls it. Returns the
    /// request when the peer cannot take it; what was learnt is reported to
    /// the peer's cell either way, unless it is what the balancer believes
    /// already (the everyday case reports nothing).
    #[inline]
    fn try_peer<Req, P>(
        &self,
        set: &Set<'_, D>,
        i: usize,
        mut req: Req,
        ask: Ask,
        protocol: &P,
    ) -> Result<Sent<Fut<D, Req>>, Req>
    where
        P: Inspect<Req>,
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        let slot = set.peer(i);
        let mut service = slot.service.lock();
        let (availability, refused) = match ask {
            Ask::Check | Ask::Due => (service.availability(), false),
            Ask::EarlyProbe => {
                let taken = service.request_probe();
                (service.availability(), !taken)
            }
        };
        if refused {
            slot.cell.observe(|o| {
                o.availability = Some((availability, Instant::now()));
                o.refused_policy = true;
            });
            return Err(req);
        }
        let believed = match (availability, slot.tracked) {
            (Availability::Available, Tracked::Available) => true,
            (Availability::Degraded, Tracked::Degraded { .. }) => ask != Ask::Due,
            _ => false,
        };
        if !believed {
            slot.cell.observe_availability(availability);
        }
        if !availability.is_available() {
            return Err(req);
        }
        // The balancer does not wait on one peer: a peer that is not ready
        // is skipped, and its client wakes the peer's own waker when it is
        // ready again, which wakes every caller waiting in `poll_ready`.
        let mut cx = Context::from_waker(&slot.waker);
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                slot.cell.observe_readiness(Readiness::NotReady);
                return Err(req);
            }
            Poll::Ready(Err(error)) => {
                let error: BoxError = error.into();
                tracing::warn!(target: "palisade", layer = "discovery", peer = %slot.id, error = %error_chain(&*error), "peer client failed; not picked until replaced");
                slot.stats.record_error(&*error);
                slot.cell.observe_readiness(Readiness::Failed);
                return Err(req);
            }
        }
        let mut peer = None;
        if let Some(record) = protocol
            .extensions_mut(&mut req)
            .and_then(|e| e.get_mut::<AttemptRecord>())
        {
            record.record(slot.id.clone());
            peer = Some(slot.id.clone());
        }
        let guard = InFlight::new(slot.stats.clone());
        let future = service.call(req);
        if availability == Availability::Probe {
            // Its probe is out. Taking a probe slot is not reported, so ask
            // again: with every slot taken the peer waits for the probe's
            // result (reported) or a recheck; with a slot still free it
            // stays first in line.
            slot.cell.observe_availability(service.availability());
        }
        Ok(Sent { future, guard, peer })
    }

    /// No peer is pickable and none is due: when every peer that could take
    /// a call is open (none merely busy), applies the all-open policy.
    ///
    /// The policy's lock is only tried, never waited for on the request
    /// path: a caller that finds another acting looks at the set again (the
    /// other's resets or early probe may have made peers pickable) and picks
    /// again, or fails; a caller in `poll_ready` waits (without blocking its
    /// thread) until the acting caller is done.
    fn all_open<Req, P>(&self, protocol: &P, req: Req, tried: &mut Tried) -> Policy<Fut<D, Req>, Req>
    where
        P: Inspect<Req>,
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        let policy = self.settings.all_open;
        let applies = |set: &PeerSet<D::Key, D::Service>| {
            set.pickable().is_empty()
                && set.counts().get(Category::NotReady) == 0
                && !set.policy_candidates().is_empty()
        };
        if policy == AllOpenPolicy::FailFast || !applies(&self.set.read()) {
            return Policy::No(req);
        }
        // One caller acts, so that a fleet is reset once, not once per
        // caller. The others do not block on it: they look at the set again.
        let Some(acting) = self.policy_lock.try_lock() else {
            self.apply_inbox();
            return if self.set.read().pickable().is_empty() {
                Policy::No(req)
            } else {
                Policy::Again(req)
            };
        };
        self.policy_acting.store(true, Ordering::SeqCst);
        let _acting = Acting {
            flag: &self.policy_acting,
            waiters: &self.waiters,
            _lock: acting,
        };
        self.apply_inbox();
        match policy {
            AllOpenPolicy::Reset => self.reset_all(req, applies),
            AllOpenPolicy::ProbeNow => self.probe_now(protocol, req, tried),
            AllOpenPolicy::FailFast => Policy::No(req),
        }
    }

    /// Resets every open breaker of the set (once per episode: a peer that
    /// refuses, such as one forced open, is left out until it changes), then
    /// lets the caller pick again. O(open peers), once per fleet-wide trip.
    fn reset_all<Req, F>(&self, req: Req, applies: impl Fn(&PeerSet<D::Key, D::Service>) -> bool) -> Policy<F, Req> {
        let set = self.set.read();
        if !set.pickable().is_empty() {
            return Policy::Again(req);
        }
        if !applies(&set) {
            return Policy::No(req);
        }
        let candidates = set.policy_candidates().to_vec();
        let mut reset = 0;
        for i in candidates {
            let slot = set.peer(i);
            let (taken, availability) = {
                let service = slot.service.lock();
                let taken = service.reset_open();
                (taken, service.availability())
            };
            reset += usize::from(taken);
            slot.cell.observe(|o| {
                o.availability = Some((availability, Instant::now()));
                o.refused_policy = !taken;
            });
        }
        drop(set);
        self.metrics.policy(AllOpenPolicy::Reset);
        events::emit(
            &[Deferred::Policy {
                policy: AllOpenPolicy::Reset,
                peers: reset,
            }],
            &self.settings,
        );
        self.apply_inbox();
        Policy::Again(req)
    }

    /// Sends the call as an early probe of the peer whose probe is due
    /// soonest, respecting its probe limit; tries a few peers at most.
    ///
    /// Every peer popped from the probe queue is either offered the call or
    /// queued again before the write lock is released: peers the policy may
    /// not ask (refused before, failed) and peers this call already offered
    /// itself to (`tried`: one that refused, or whose client was not ready)
    /// are set aside and requeued at their own time, so that one refusing or
    /// busy peer at the head of the queue cannot eat the call's attempts. A
    /// peer that granted the early probe but whose client was not ready is
    /// half-open with a free probe slot: due at once, its probe goes out
    /// with the next call that finds its client ready (its client wakes the
    /// balancer when it is), and no probe slot is held meanwhile.
    fn probe_now<Req, P>(&self, protocol: &P, mut req: Req, tried: &mut Tried) -> Policy<Fut<D, Req>, Req>
    where
        P: Inspect<Req>,
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        for _ in 0..PROBE_POPS {
            let mut set = self.set.write();
            self.drain(&mut set);
            if !set.pickable().is_empty() {
                let events = std::mem::take(&mut set.deferred);
                drop(set);
                events::emit(&events, &self.settings);
                return Policy::Again(req);
            }
            if set.policy_candidates().is_empty() {
                let events = std::mem::take(&mut set.deferred);
                drop(set);
                events::emit(&events, &self.settings);
                break;
            }
            let mut chosen = None;
            let mut skipped = Vec::new();
            for _ in 0..PROBE_POPS {
                let Some(i) = set.pop_head() else { break };
                if !set.is_policy_candidate(i) || tried.contains(set.peer(i).cell.serial) {
                    skipped.push(i);
                } else {
                    chosen = Some(i);
                    break;
                }
            }
            // Back in the queue at their time, under the same lock (the
            // indices are stable until it is released).
            for i in skipped {
                set.requeue(i);
            }
            let events = std::mem::take(&mut set.deferred);
            let Some(i) = chosen else {
                drop(set);
                events::emit(&events, &self.settings);
                break;
            };
            tried.push(set.peer(i).cell.serial);
            let set = parking_lot::RwLockWriteGuard::downgrade(set);
            let result = self.try_peer(&set, i, req, Ask::EarlyProbe, protocol);
            drop(set);
            events::emit(&events, &self.settings);
            match result {
                Ok(sent) => {
                    self.metrics.policy(AllOpenPolicy::ProbeNow);
                    events::emit(
                        &[Deferred::Policy {
                            policy: AllOpenPolicy::ProbeNow,
                            peers: 1,
                        }],
                        &self.settings,
                    );
                    return Policy::Sent(sent);
                }
                Err(back) => req = back,
            }
        }
        Policy::No(req)
    }

    /// The error of a call no peer could take, from the kept counts.
    fn reject(&self) -> NoAvailablePeers {
        let set = self.set.read();
        let c = set.counts();
        let excluded = c.get(Category::NotReady) + c.get(Category::Failed) + c.get(Category::Other);
        let mut error = NoAvailablePeers::new(set.len(), c.get(Category::Open), c.get(Category::Probing), excluded);
        if let Some(service) = &self.settings.service {
            error = error.with_service(service.as_ref());
        }
        if let Some(at) = set.next_open_due() {
            error = error.with_next_probe_in(at.saturating_duration_since(Instant::now()));
        }
        drop(set);
        self.metrics.rejected();
        events::emit(&[Deferred::Rejected], &self.settings);
        error
    }
}
