//! The peer set: a slab of per-peer slots with an index by key, and the
//! views the request path reads without scanning:
//!
//! - `pickable`: the peers that are available (or degraded: in rotation,
//!   but failing) and whose client was ready, exact (kept up to date on
//!   every observation), so that a pick draws from it in O(1) however many
//!   peers are unavailable;
//! - `not_ready`: available peers whose client was not ready, re-polled by
//!   `poll_ready`;
//! - `policy`: the open and half-open peers the all-open policy may ask for
//!   an early probe or a reset (not those that refused);
//! - the probe queue: every peer that is not plainly available, by when to
//!   look at it again (a degraded peer too: it gets one call per
//!   [`RECHECK`], so that it can show it recovered although the choice
//!   prefers healthier peers);
//! - counts by category, for `NoAvailablePeers` and the gauges.
//!
//! Everything here is plain data changed under the balancer's write lock: no
//! user code runs in this module.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use palisade_core::peer::{Availability, PeerId, Unavailable};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::cell::{Observed, PeerCell};
use super::events::Deferred;
use super::probes::{Entry, ProbeQueue};
use crate::future::PeerStats;
use crate::health::Readiness;

/// How soon a peer whose probe slots are all taken (or that is unavailable
/// for another reason without saying for how long) is looked at again.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);
/// How often a degraded peer gets a call whatever the choice would say (see
/// [`Tracked::Degraded`]).
pub(crate) const DEGRADED_RECHECK: Duration = RECHECK;

/// What the balancer believes about a peer's availability, from the last
/// thing its middleware reported or answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracked {
    Available,
    /// In rotation but failing ("open but kept" by the ejection cap): picked,
    /// but the choice prefers any peer that is not degraded. So that it can
    /// show it recovered, it is sent a call at `recheck` (one per
    /// [`DEGRADED_RECHECK`]) whatever the choice says.
    Degraded {
        recheck: Instant,
    },
    /// Half-open with a free probe slot: its probe is due at once.
    Probe {
        since: Instant,
    },
    Open {
        until: Instant,
    },
    /// Half-open with every probe slot taken: looked at again at `recheck`
    /// (its middleware reports when a slot comes back; this is the fallback).
    Busy {
        recheck: Instant,
    },
    /// Unavailable for another reason, until `until`.
    Other {
        until: Instant,
    },
}

impl Tracked {
    pub(crate) fn from_availability(availability: Availability, at: Instant) -> Self {
        // "Never by itself" (a retry_in too large to add) is the far future.
        let later = |d: Duration| palisade_core::time::after(at, d);
        match availability {
            Availability::Available => Tracked::Available,
            Availability::Degraded => Tracked::Degraded {
                recheck: at + DEGRADED_RECHECK,
            },
            Availability::Probe => Tracked::Probe { since: at },
            Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in,
            } => Tracked::Open { until: later(retry_in) },
            Availability::Unavailable {
                reason: Unavailable::ProbesBusy,
                ..
            } => Tracked::Busy { recheck: at + RECHECK },
            Availability::Unavailable { retry_in, .. } => Tracked::Other {
                until: later(retry_in.max(RECHECK)),
            },
            // A state this version does not know is not picked; it is
            // looked at again soon.
            _ => Tracked::Other { until: at + RECHECK },
        }
    }

    /// Whether the peer is in rotation but failing.
    pub(crate) fn is_degraded(self) -> bool {
        matches!(self, Tracked::Degraded { .. })
    }

    /// Whether a call may be sent to the peer (when its client is ready).
    pub(crate) fn takes_calls(self) -> bool {
        matches!(self, Tracked::Available | Tracked::Degraded { .. })
    }

    /// When the probe queue should bring the peer up again.
    fn due(self) -> Option<Instant> {
        match self {
            Tracked::Available => None,
            Tracked::Degraded { recheck } => Some(recheck),
            Tracked::Probe { since } => Some(since),
            Tracked::Open { until } | Tracked::Other { until } => Some(until),
            Tracked::Busy { recheck } => Some(recheck),
        }
    }
}

/// Where a peer stands, for counts and gauges: one category per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Category {
    Available,
    /// In rotation, but failing (kept by the ejection cap).
    Degraded,
    /// Available (or degraded), but its client was not ready.
    NotReady,
    Open,
    /// Half-open (probe due or probes in flight).
    Probing,
    Other,
    /// Its client's `poll_ready` failed: not picked until replaced.
    Failed,
}

impl Category {
    const ALL: usize = 7;

    fn of(tracked: Tracked, readiness: Readiness) -> Self {
        match (readiness, tracked) {
            (Readiness::Failed, _) => Category::Failed,
            (_, Tracked::Open { .. }) => Category::Open,
            (_, Tracked::Probe { .. } | Tracked::Busy { .. }) => Category::Probing,
            (_, Tracked::Other { .. }) => Category::Other,
            (Readiness::NotReady, Tracked::Available | Tracked::Degraded { .. }) => Category::NotReady,
            (Readiness::Ready, Tracked::Available) => Category::Available,
            (Readiness::Ready, Tracked::Degraded { .. }) => Category::Degraded,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// How many peers are in each category, kept incrementally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts([usize; Category::ALL]);

impl Counts {
    pub(crate) fn get(&self, category: Category) -> usize {
        self.0[category.slot()]
    }

    fn add(&mut self, category: Category) {
        self.0[category.slot()] += 1;
    }

    fn sub(&mut self, category: Category) {
        self.0[category.slot()] -= 1;
    }
}

pub(crate) struct Slot<K, S> {
    pub(crate) key: K,
    pub(crate) id: PeerId,
    /// The peer's service: locked only for the short, non-async `poll_ready`
    /// + `call` of one pick (and availability questions).
    pub(crate) service: Mutex<S>,
    pub(crate) stats: Arc<PeerStats>,
    pub(crate) cell: Arc<PeerCell>,
    /// The waker its client is polled with (its cell: see `PeerCell`'s
    /// `Wake`), built once.
    pub(crate) waker: Waker,
    pub(crate) weight: u32,
    /// Whether the peer reports its transitions (`join_fleet` said so).
    pub(crate) notifies: bool,
    pub(crate) tracked: Tracked,
    pub(crate) readiness: Readiness,
    refused_policy: bool,
    pick_pos: Option<usize>,
    not_ready_pos: Option<usize>,
    policy_pos: Option<usize>,
    /// When its live probe-queue entry is due, if it has one.
    probe_at: Option<Instant>,
    /// The generation of its live probe-queue entry.
    probe_generation: u64,
}

/// A position field of [`Slot`], naming which list it indexes.
type PosOf<K, S> = fn(&mut Slot<K, S>) -> &mut Option<usize>;

/// A pickable peer as the choice reads it: all that two choices compare,
/// in one dense entry, so that on a first attempt the losing candidate costs
/// this entry and its counters and not its slot (with thousands of peers
/// every slot is a cache miss on the request path; a retry's walk past the
/// peers of its record reads their ids in the slots).
pub(crate) struct Pick {
    /// The peer's slot.
    pub(crate) index: usize,
    pub(crate) weight: u32,
    pub(crate) degraded: bool,
    pub(crate) stats: Arc<PeerStats>,
}

/// An entry of one of the set's lists: it names a slot.
trait Member {
    fn slot(&self) -> usize;
    fn move_to(&mut self, slot: usize);
}

impl Member for usize {
    fn slot(&self) -> usize {
        *self
    }

    fn move_to(&mut self, slot: usize) {
        *self = slot;
    }
}

impl Member for Pick {
    fn slot(&self) -> usize {
        self.index
    }

    fn move_to(&mut self, slot: usize) {
        self.index = slot;
    }
}

pub(crate) struct PeerSet<K, S> {
    peers: Vec<Slot<K, S>>,
    index: HashMap<K, usize>,
    pickable: Vec<Pick>,
    not_ready: Vec<usize>,
    policy: Vec<usize>,
    /// Weight -> number of peers with it (the largest bounds weighted draws).
    weights: BTreeMap<u32, usize>,
    /// The largest weight, cached for the request path.
    max_weight: u32,
    probes: ProbeQueue,
    /// The open peers alone, by the end of their cooldown (the same entries
    /// as in `probes`): when the next probe of an open peer is due.
    open_probes: ProbeQueue,
    counts: Counts,
    /// Events waiting for the write lock to be released.
    pub(crate) deferred: Vec<Deferred>,
    /// The inbox's cells while they are applied (kept for its capacity).
    pub(crate) drained: Vec<Arc<PeerCell>>,
}

impl<K, S> Default for PeerSet<K, S> {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            index: HashMap::new(),
            pickable: Vec::new(),
            not_ready: Vec::new(),
            policy: Vec::new(),
            weights: BTreeMap::new(),
            max_weight: 1,
            probes: ProbeQueue::default(),
            open_probes: ProbeQueue::default(),
            counts: Counts::default(),
            deferred: Vec::new(),
            drained: Vec::new(),
        }
    }
}

/// What a new peer brings to [`PeerSet::insert`].
pub(crate) struct Joining<S> {
    pub(crate) service: S,
    pub(crate) weight: u32,
    pub(crate) cell: Arc<PeerCell>,
    pub(crate) notifies: bool,
    /// What the service answered just before (outside the lock).
    pub(crate) availability: Availability,
    pub(crate) at: Instant,
}

/// Adds peer `i` to `list` (the entry `entry` makes) unless it is in it.
fn list_add<K, S, E: Member>(
    list: &mut Vec<E>,
    peers: &mut [Slot<K, S>],
    i: usize,
    pos: PosOf<K, S>,
    entry: impl FnOnce(&Slot<K, S>) -> E,
) {
    if pos(&mut peers[i]).is_none() {
        let e = entry(&peers[i]);
        *pos(&mut peers[i]) = Some(list.len());
        list.push(e);
    }
}

fn list_remove<K, S, E: Member>(list: &mut Vec<E>, peers: &mut [Slot<K, S>], i: usize, pos: PosOf<K, S>) {
    if let Some(p) = pos(&mut peers[i]).take() {
        list.swap_remove(p);
        if let Some(moved) = list.get(p) {
            *pos(&mut peers[moved.slot()]) = Some(p);
        }
    }
}

fn list_set<K, S, E: Member>(
    list: &mut Vec<E>,
    peers: &mut [Slot<K, S>],
    i: usize,
    pos: PosOf<K, S>,
    member: bool,
    entry: impl FnOnce(&Slot<K, S>) -> E,
) {
    if member {
        list_add(list, peers, i, pos, entry);
    } else {
        list_remove(list, peers, i, pos);
    }
}

/// The dense entry of pickable peer `i`.
fn pick_entry<K, S>(i: usize) -> impl FnOnce(&Slot<K, S>) -> Pick {
    move |s| Pick {
        index: i,
        weight: s.weight,
        degraded: s.tracked.is_degraded(),
        stats: s.stats.clone(),
    }
}

fn pick_pos<K, S>(s: &mut Slot<K, S>) -> &mut Option<usize> {
    &mut s.pick_pos
}

fn not_ready_pos<K, S>(s: &mut Slot<K, S>) -> &mut Option<usize> {
    &mut s.not_ready_pos
}

fn policy_pos<K, S>(s: &mut Slot<K, S>) -> &mut Option<usize> {
    &mut s.policy_pos
}

impl<K: Hash + Eq + Clone, S> PeerSet<K, S> {
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn peer(&self, i: usize) -> &Slot<K, S> {
        &self.peers[i]
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &Slot<K, S>> {
        self.peers.iter()
    }

    pub(crate) fn cell_of(&self, key: &K) -> Option<Arc<PeerCell>> {
        self.index.get(key).map(|&i| self.peers[i].cell.clone())
    }

    pub(crate) fn pickable(&self) -> &[Pick] {
        &self.pickable
    }

    pub(crate) fn not_ready(&self) -> &[usize] {
        &self.not_ready
    }

    pub(crate) fn policy_candidates(&self) -> &[usize] {
        &self.policy
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    #[inline]
    pub(crate) fn max_weight(&self) -> u32 {
        self.max_weight
    }

    /// Whether some pickable peer is degraded (the choice then compares
    /// that first).
    #[inline]
    pub(crate) fn has_degraded(&self) -> bool {
        self.counts.get(Category::Degraded) > 0
    }

    /// Whether every peer has the same weight (draws need no rejection
    /// sampling, and do not touch the slots).
    #[inline]
    pub(crate) fn uniform_weights(&self) -> bool {
        self.weights.len() <= 1
    }

    /// The probe queue's head: the peer to look at next and when.
    pub(crate) fn next_due(&self) -> Option<(Instant, usize)> {
        self.probes.peek().map(|e| (e.at, e.cell.index()))
    }

    /// When the next probe of an open peer is due.
    pub(crate) fn next_open_due(&self) -> Option<Instant> {
        self.open_probes.peek().map(|e| e.at)
    }

    /// Pops the head if it is due by `now`: the caller looks at that peer
    /// (and reports what it finds, which queues it again if need be).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.next_due() {
            Some((at, _)) if at <= now => self.pop_head(),
            _ => None,
        }
    }

    /// Pops the head whenever it is due (the all-open policy's early probe:
    /// the peer whose probe is due soonest).
    pub(crate) fn pop_head(&mut self) -> Option<usize> {
        let (_, i) = self.next_due()?;
        self.probes.pop();
        self.peers[i].probe_at = None;
        self.clean_queue();
        Some(i)
    }

    /// Queues peer `i` again at its own time, after a pop that led nowhere.
    pub(crate) fn requeue(&mut self, i: usize) {
        let slot = &self.peers[i];
        let (tracked, readiness, refused) = (slot.tracked, slot.readiness, slot.refused_policy);
        self.update(i, tracked, readiness, refused, Instant::now(), false);
    }

    /// Whether the all-open policy may ask peer `i`.
    pub(crate) fn is_policy_candidate(&self, i: usize) -> bool {
        self.peers[i].policy_pos.is_some()
    }

    /// Adds a peer, or replaces the service of a known key in place: its
    /// load counters, cell and history stay, its weight is updated, and its
    /// availability is what the new service answered (the same breaker
    /// behind a clone: still open; a fresh client: available). Returns the
    /// replaced service, to drop once the lock is released.
    pub(crate) fn insert(
        &mut self,
        key: K,
        id: PeerId,
        joining: Joining<S>,
        stats: impl FnOnce() -> Arc<PeerStats>,
    ) -> Option<S> {
        let Joining {
            service,
            weight,
            cell,
            notifies,
            availability,
            at,
        } = joining;
        let observed = Observed {
            availability: Some((availability, at)),
            readiness: Some(Readiness::Ready),
            refused_policy: false,
            reported: true,
            woken: false,
        };
        if let Some(&i) = self.index.get(&key) {
            let old_weight = std::mem::replace(&mut self.peers[i].weight, weight);
            self.weight_remove(old_weight);
            self.weight_add(weight);
            let slot = &mut self.peers[i];
            slot.notifies = notifies;
            let old = std::mem::replace(slot.service.get_mut(), service);
            self.apply(i, observed, at);
            return Some(old);
        }
        let i = self.peers.len();
        cell.set_index(i);
        self.weight_add(weight);
        self.index.insert(key.clone(), i);
        self.deferred.push(Deferred::Added(id.clone()));
        self.peers.push(Slot {
            key,
            id,
            service: Mutex::new(service),
            stats: stats(),
            waker: Waker::from(cell.clone()),
            cell,
            weight,
            notifies,
            tracked: Tracked::Available,
            readiness: Readiness::Ready,
            refused_policy: false,
            pick_pos: None,
            not_ready_pos: None,
            policy_pos: None,
            probe_at: None,
            probe_generation: 0,
        });
        // Counted as available, then moved to what it answered; a new peer
        // reports `PeerAdded` only, no availability flip.
        self.counts.add(Category::Available);
        list_add(&mut self.pickable, &mut self.peers, i, pick_pos, pick_entry(i));
        self.update(
            i,
            Tracked::from_availability(availability, at),
            Readiness::Ready,
            false,
            at,
            false,
        );
        None
    }

    /// Removes the peer of `key`; returns its slot, to drop (with its
    /// service) once the lock is released. Calls in flight keep their own
    /// future and in-flight guard.
    pub(crate) fn remove(&mut self, key: &K) -> Option<Slot<K, S>> {
        let i = self.index.remove(key)?;
        list_remove(&mut self.pickable, &mut self.peers, i, pick_pos);
        list_remove(&mut self.not_ready, &mut self.peers, i, not_ready_pos);
        list_remove(&mut self.policy, &mut self.peers, i, policy_pos);
        let slot = &mut self.peers[i];
        self.counts.sub(Category::of(slot.tracked, slot.readiness));
        slot.probe_at = None;
        slot.cell.deactivate();
        let weight = slot.weight;
        self.weight_remove(weight);
        let slot = self.peers.swap_remove(i);
        if let Some(moved) = self.peers.get_mut(i) {
            self.index.insert(moved.key.clone(), i);
            moved.cell.set_index(i);
            if let Some(p) = moved.pick_pos {
                self.pickable[p].move_to(i);
            }
            if let Some(p) = moved.not_ready_pos {
                self.not_ready[p].move_to(i);
            }
            if let Some(p) = moved.policy_pos {
                self.policy[p].move_to(i);
            }
        }
        self.deferred.push(Deferred::Removed(slot.id.clone()));
        self.clean_queue();
        Some(slot)
    }

    /// Applies what was observed about peer `i`.
    pub(crate) fn apply(&mut self, i: usize, observed: Observed, now: Instant) {
        let slot = &self.peers[i];
        let tracked = observed
            .availability
            .map_or(slot.tracked, |(a, at)| Tracked::from_availability(a, at));
        let mut readiness = observed.readiness.unwrap_or(slot.readiness);
        if observed.woken && readiness == Readiness::NotReady {
            // Its client woke the waker it was polled with: picked again,
            // and its next poll says for sure.
            readiness = Readiness::Ready;
        }
        let refused = observed.refused_policy || (slot.refused_policy && !observed.reported);
        self.update(i, tracked, readiness, refused, now, true);
    }

    /// Moves peer `i` to `tracked` / `readiness`, keeping every view and
    /// count true. O(1), plus O(log n) when it needs a probe-queue entry.
    fn update(&mut self, i: usize, tracked: Tracked, readiness: Readiness, refused: bool, now: Instant, report: bool) {
        let slot = &mut self.peers[i];
        let before = Category::of(slot.tracked, slot.readiness);
        let was_pickable = slot.pick_pos.is_some();
        let was_degraded = slot.tracked.is_degraded();
        let was_open = matches!(slot.tracked, Tracked::Open { .. });
        slot.tracked = tracked;
        slot.readiness = readiness;
        slot.refused_policy = refused;
        let after = Category::of(tracked, readiness);
        self.counts.sub(before);
        self.counts.add(after);
        let available = tracked.takes_calls();
        let in_policy = matches!(
            tracked,
            Tracked::Open { .. } | Tracked::Probe { .. } | Tracked::Busy { .. }
        ) && !refused
            && readiness != Readiness::Failed;
        list_set(
            &mut self.pickable,
            &mut self.peers,
            i,
            pick_pos,
            available && readiness == Readiness::Ready,
            pick_entry(i),
        );
        list_set(
            &mut self.not_ready,
            &mut self.peers,
            i,
            not_ready_pos,
            available && readiness == Readiness::NotReady,
            |_| i,
        );
        list_set(&mut self.policy, &mut self.peers, i, policy_pos, in_policy, |_| i);
        let slot = &mut self.peers[i];
        if let Some(p) = slot.pick_pos {
            // Already in rotation: its entry follows the slot.
            let entry = &mut self.pickable[p];
            entry.weight = slot.weight;
            entry.degraded = tracked.is_degraded();
        }
        let due = tracked.due();
        if due != slot.probe_at {
            slot.probe_at = due;
            if let Some(at) = due {
                slot.probe_generation += 1;
                if matches!(tracked, Tracked::Open { .. }) {
                    self.open_probes.push(at, slot.probe_generation, slot.cell.clone());
                }
                let cell = slot.cell.clone();
                self.probes.push(at, slot.probe_generation, cell);
            }
        } else if let Some(at) = due
            && !was_open
            && matches!(tracked, Tracked::Open { .. })
        {
            // Opened with the very instant its earlier state was due at (a
            // busy peer's recheck, say): its probe-queue entry stays live,
            // but the open-probe queue has none yet (found by the
            // `every_view_and_count_stays_true` property).
            self.open_probes.push(at, slot.probe_generation, slot.cell.clone());
        }
        let slot = &self.peers[i];
        let pickable = slot.pick_pos.is_some();
        if report && pickable != was_pickable {
            self.deferred
                .push(Deferred::availability(slot.id.clone(), after, tracked, now));
        }
        let degraded = tracked.is_degraded();
        // Kept in rotation instead of ejected, or recovered from that (a
        // degraded peer that leaves rotation is reported above).
        if report && pickable && was_pickable && degraded != was_degraded {
            self.deferred.push(Deferred::Degraded {
                peer: slot.id.clone(),
                degraded,
            });
        }
        self.clean_queue();
    }

    /// Keeps the probe queue's head live, and its size within a bound.
    fn clean_queue(&mut self) {
        let peers = &self.peers;
        let live = |e: &Entry| {
            let i = e.cell.index();
            peers.get(i).is_some_and(|s| {
                Arc::ptr_eq(&s.cell, &e.cell) && s.probe_at == Some(e.at) && s.probe_generation == e.generation
            })
        };
        let live_open = |e: &Entry| {
            live(e)
                && peers
                    .get(e.cell.index())
                    .is_some_and(|s| matches!(s.tracked, Tracked::Open { .. }))
        };
        self.probes.clean(live);
        self.open_probes.clean(live_open);
        if self.probes.len() > 2 * peers.len() + 64 {
            self.probes.compact(live);
        }
        if self.open_probes.len() > 2 * peers.len() + 64 {
            self.open_probes.compact(live_open);
        }
    }

    fn weight_add(&mut self, weight: u32) {
        *self.weights.entry(weight).or_insert(0) += 1;
        self.max_weight = self.weights.last_key_value().map_or(1, |(w, _)| *w);
    }

    fn weight_remove(&mut self, weight: u32) {
        if let Some(n) = self.weights.get_mut(&weight) {
            *n -= 1;
            if *n == 0 {
                self.weights.remove(&weight);
            }
        }
        self.max_weight = self.weights.last_key_value().map_or(1, |(w, _)| *w);
    }

    /// Checks every view and count against the slots (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut counts = Counts::default();
        for (i, s) in self.peers.iter().enumerate() {
            counts.add(Category::of(s.tracked, s.readiness));
            if self.index.get(&s.key) != Some(&i) || s.cell.index() != i {
                return Err(format!("peer {i} is indexed wrong"));
            }
            let pickable = s.tracked.takes_calls() && s.readiness == Readiness::Ready;
            if s.pick_pos.is_some() != pickable || s.pick_pos.is_some_and(|p| self.pickable[p].index != i) {
                return Err(format!("peer {i} pickable {pickable} but {:?}", s.pick_pos));
            }
            if let Some(p) = s.pick_pos {
                let e = &self.pickable[p];
                if e.weight != s.weight || e.degraded != s.tracked.is_degraded() || !Arc::ptr_eq(&e.stats, &s.stats) {
                    return Err(format!("peer {i}'s pick entry disagrees with its slot"));
                }
            }
            if s.not_ready_pos.is_some_and(|p| self.not_ready[p] != i)
                || s.policy_pos.is_some_and(|p| self.policy[p] != i)
            {
                return Err(format!("peer {i} has a stale list position"));
            }
            if s.probe_at != s.tracked.due() {
                return Err(format!(
                    "peer {i} queued at {:?}, due {:?}",
                    s.probe_at,
                    s.tracked.due()
                ));
            }
        }
        if counts != self.counts {
            return Err(format!("counts {:?}, kept {:?}", counts, self.counts));
        }
        if self.pickable.len() != counts.get(Category::Available) + counts.get(Category::Degraded)
            || self.not_ready.len() != counts.get(Category::NotReady)
        {
            return Err("list lengths disagree with counts".into());
        }
        let live: usize = self.peers.iter().filter(|s| s.probe_at.is_some()).count();
        let mut heap_live = 0;
        let mut earliest: Option<Instant> = None;
        for e in self.probes_iter() {
            let i = e.cell.index();
            if self.peers.get(i).is_some_and(|s| {
                Arc::ptr_eq(&s.cell, &e.cell) && s.probe_at == Some(e.at) && s.probe_generation == e.generation
            }) {
                heap_live += 1;
                earliest = Some(earliest.map_or(e.at, |t: Instant| t.min(e.at)));
            }
        }
        if heap_live != live {
            return Err(format!("{live} peers queued, {heap_live} live entries"));
        }
        if self.next_due().map(|(at, _)| at) != earliest {
            return Err("the probe queue's head is not the earliest live entry".into());
        }
        let earliest_open = self
            .peers
            .iter()
            .filter_map(|s| match s.tracked {
                Tracked::Open { until } => Some(until),
                _ => None,
            })
            .min();
        if self.next_open_due() != earliest_open {
            return Err(format!(
                "next open probe {:?}, earliest open peer {:?}",
                self.next_open_due(),
                earliest_open
            ));
        }
        Ok(())
    }

    #[cfg(test)]
    fn probes_iter(&self) -> impl Iterator<Item = &Entry> {
        self.probes.entries()
    }
}
