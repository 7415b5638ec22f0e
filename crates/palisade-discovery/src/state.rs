//! The balancer's peer set: a slab of per-peer slots with an index by key, so
//! that a pick and an update both cost O(1) (O(log n) for a weight change).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::error::NoAvailablePeers;
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::peer::{AttemptRecord, Availability, CheckAvailability, PeerId, Unavailable};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower_service::Service;

use crate::config::Settings;
use crate::health::{HealthReport, PeerHealth, Readiness};
use crate::load::{Ewma, LoadMetric};
use crate::peer::PeerWeight;

/// Counters of one peer, shared with the in-flight guards of its calls.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) successes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Set when the load metric is peak-EWMA.
    pub(crate) ewma: Option<Ewma>,
}

impl PeerStats {
    fn new(metric: LoadMetric) -> Self {
        Self {
            ewma: match metric {
                LoadMetric::PendingRequests => None,
                LoadMetric::PeakEwma { default_rtt, decay } => Some(Ewma::new(default_rtt, decay)),
            },
            ..Self::default()
        }
    }
}

struct Slot<K, S> {
    key: K,
    id: PeerId,
    service: S,
    stats: Arc<PeerStats>,
    weight: u32,
    readiness: Readiness,
    /// The peer's position in `Shared::available` while its last availability
    /// answer was "available" (`None` after an "unavailable").
    avail_pos: Option<usize>,
    /// A serial number unique over the balancer's life, the key of the probe queue.
    serial: u64,
    /// When the peer's probe is due, while it has an entry in the probe queue.
    probe_at: Option<Instant>,
}

/// How many uniform draws over all peers a pick makes first.
const UNIFORM_DRAWS: usize = 4;
/// How many draws among the peers last seen available follow, before a scan.
const DRAWS: usize = 8;
/// How many due entries of the probe queue one pick looks at at most (the
/// rest wait for the next picks), so that a pick stays cheap after many
/// peers' cooldowns ended at once.
const PROBE_POPS: usize = 16;
/// How soon a peer whose probe is in flight is asked again, to see whether
/// the probe closed its breaker or opened it again.
const PROBE_RECHECK: Duration = Duration::from_secs(1);
/// How many not-ready peers one `poll_ready` re-polls at most.
const NOT_READY_POLLS: usize = 8;

pub(crate) struct Shared<D: Discover> {
    discover: Option<Pin<Box<D>>>,
    peers: Vec<Slot<D::Key, D::Service>>,
    index: HashMap<D::Key, usize>,
    /// Keys of peers whose client was not ready when last polled.
    not_ready: VecDeque<D::Key>,
    /// Weight -> number of peers with it, for weighted sampling.
    weights: BTreeMap<u32, usize>,
    /// Peers whose last availability answer was "available" (all new peers):
    /// the fallback sample when random draws over all peers miss, and the
    /// panic threshold's count.
    available: Vec<usize>,
    rng: fastrand::Rng,
    discover_error: Option<String>,
    /// Open peers by the instant their probe is due (earliest first), so that
    /// a peer whose cooldown passed is asked first whatever the draws say.
    /// Entries of removed peers or of peers asked since are skipped lazily
    /// (`Slot::probe_at` is the live one); at most one live entry per peer.
    probe_queue: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Serial -> index in `peers`, for the probe queue.
    by_serial: HashMap<u64, usize>,
    next_serial: u64,
    /// Events waiting for the lock to be released.
    deferred: Vec<Deferred>,
}

/// An event noted under the balancer's lock and emitted after it is released,
/// so that a listener may call back into the balancer (say,
/// [`health`](crate::PeerDiscovery::health)) without deadlocking.
pub(crate) enum Deferred {
    Added(PeerId),
    Removed(PeerId),
    Availability(PeerId, bool),
    Rejected,
}

impl Deferred {
    fn emit(&self, settings: &Settings) {
        let event = match self {
            Deferred::Added(id) => Event::new(LayerName::Discovery, EventKind::PeerAdded).peer(Some(id)),
            Deferred::Removed(id) => Event::new(LayerName::Discovery, EventKind::PeerRemoved).peer(Some(id)),
            Deferred::Availability(id, available) => {
                let (from, to) = if *available {
                    ("unavailable", "available")
                } else {
                    ("available", "unavailable")
                };
                Event::new(
                    LayerName::Discovery,
                    EventKind::StateChange {
                        from,
                        to,
                        reason: "peer availability",
                        cooldown: None,
                    },
                )
                .peer(Some(id))
            }
            Deferred::Rejected => Event::new(
                LayerName::Discovery,
                EventKind::Rejected {
                    reason: "no available peers",
                },
            ),
        };
        settings.listeners.emit(&event);
    }
}

/// Emits events taken from the state once its lock is released.
pub(crate) fn emit_deferred(events: Vec<Deferred>, settings: &Settings) {
    for event in &events {
        event.emit(settings);
    }
}

/// What a candidate turned out to be.
enum Candidate {
    Probe,
    Available,
    Excluded,
    Skip,
}

impl<D: Discover> Shared<D> {
    pub(crate) fn new(discover: D) -> Self {
        Self {
            discover: Some(Box::pin(discover)),
            peers: Vec::new(),
            index: HashMap::new(),
            not_ready: VecDeque::new(),
            weights: BTreeMap::new(),
            available: Vec::new(),
            rng: fastrand::Rng::new(),
            discover_error: None,
            probe_queue: BinaryHeap::new(),
            by_serial: HashMap::new(),
            next_serial: 0,
            deferred: Vec::new(),
        }
    }
}

impl<D> Shared<D>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: CheckAvailability + PeerWeight,
    D::Error: Into<BoxError>,
{
    /// Applies every change the discover has ready. Never fails: a discover
    /// error is logged and kept for the health report, the last known set keeps
    /// serving, and a discover that ended leaves the set as it is.
    pub(crate) fn drain_discover(&mut self, cx: &mut Context<'_>, settings: &Settings) {
        while let Some(discover) = self.discover.as_mut() {
            match discover.as_mut().poll_discover(cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    tracing::debug!(target: "palisade", layer = "discovery", "discover stream ended; keeping the last known peers");
                    self.discover = None;
                }
                Poll::Ready(Some(Ok(Change::Insert(key, service)))) => self.insert(key, service, settings),
                Poll::Ready(Some(Ok(Change::Remove(key)))) => self.remove(&key),
                Poll::Ready(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    tracing::warn!(target: "palisade", layer = "discovery", %error, "discover failed; keeping the last known peers");
                    self.discover_error = Some(error.to_string());
                    // A `Discover` is a `TryStream`: an error item does not end
                    // it. Stop draining for now (a stream that fails at once
                    // again must not spin here) and poll it again on the next
                    // `poll_ready`; the set stays as it is meanwhile.
                    return;
                }
            }
        }
    }

    pub(crate) fn insert(&mut self, key: D::Key, service: D::Service, settings: &Settings) {
        let weight = service.weight().max(1);
        if let Some(&i) = self.index.get(&key) {
            // Replace the client in place; calls in flight keep the old one's future.
            let old_weight = self.peers[i].weight;
            self.weight_remove(old_weight);
            self.weight_add(weight);
            let slot = &mut self.peers[i];
            slot.service = service;
            slot.weight = weight;
            if slot.readiness != Readiness::Ready {
                slot.readiness = Readiness::Ready;
                self.not_ready.retain(|k| k != &key);
            }
            let id = slot.id.clone();
            // A fresh client starts as available.
            self.avail_add(i);
            tracing::debug!(target: "palisade", layer = "discovery", peer = %id, "peer replaced");
            return;
        }
        let id = PeerId::new(key.to_string());
        self.deferred.push(Deferred::Added(id.clone()));
        self.weight_add(weight);
        self.index.insert(key.clone(), self.peers.len());
        let serial = self.next_serial;
        self.next_serial += 1;
        self.by_serial.insert(serial, self.peers.len());
        self.peers.push(Slot {
            key,
            id,
            service,
            stats: Arc::new(PeerStats::new(settings.load)),
            weight,
            readiness: Readiness::Ready,
            avail_pos: None,
            serial,
            probe_at: None,
        });
        self.avail_add(self.peers.len() - 1);
        #[cfg(feature = "metrics")]
        metrics::gauge!("palisade_discovery_peers").set(self.peers.len() as f64);
    }

    pub(crate) fn remove(&mut self, key: &D::Key) {
        let Some(i) = self.index.remove(key) else {
            return;
        };
        self.avail_remove(i);
        let slot = self.peers.swap_remove(i);
        self.by_serial.remove(&slot.serial);
        if let Some(moved) = self.peers.get(i) {
            self.index.insert(moved.key.clone(), i);
            self.by_serial.insert(moved.serial, i);
            if let Some(p) = moved.avail_pos {
                self.available[p] = i;
            }
        }
        self.weight_remove(slot.weight);
        if slot.readiness != Readiness::Ready {
            self.not_ready.retain(|k| k != key);
        }
        self.deferred.push(Deferred::Removed(slot.id.clone()));
        #[cfg(feature = "metrics")]
        metrics::gauge!("palisade_discovery_peers").set(self.peers.len() as f64);
        // `slot` (service, stats) is dropped here; calls in flight hold their
        // own future and in-flight guard.
    }

    fn avail_add(&mut self, i: usize) {
        if self.peers[i].avail_pos.is_none() {
            self.peers[i].avail_pos = Some(self.available.len());
            self.available.push(i);
        }
    }

    fn avail_remove(&mut self, i: usize) {
        if let Some(p) = self.peers[i].avail_pos.take() {
            self.available.swap_remove(p);
            if let Some(&moved) = self.available.get(p) {
                self.peers[moved].avail_pos = Some(p);
            }
        }
    }

    fn weight_add(&mut self, weight: u32) {
        *self.weights.entry(weight).or_insert(0) += 1;
    }

    fn weight_remove(&mut self, weight: u32) {
        if let Some(n) = self.weights.get_mut(&weight) {
            *n -= 1;
            if *n == 0 {
                self.weights.remove(&weight);
            }
        }
    }

    /// The events noted since the last call, to emit once the lock is
    /// released. Allocates nothing when there are none.
    pub(crate) fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Remembers what a peer's availability said, for the panic threshold,
    /// and emits a state change when it flipped.
    fn note_availability(&mut self, i: usize, available: bool) {
        if self.peers[i].avail_pos.is_some() != available {
            if available {
                self.avail_add(i);
            } else {
                self.avail_remove(i);
            }
            let id = self.peers[i].id.clone();
            self.deferred.push(Deferred::Availability(id, available));
        }
    }

    fn classify(&mut self, i: usize, record: Option<&AttemptRecord>) -> Candidate {
        let slot = &self.peers[i];
        if slot.readiness != Readiness::Ready {
            return Candidate::Skip;
        }
        // The record first: asking a breaker may move it (open to half-open).
        if record.is_some_and(|r| !r.is_empty() && r.contains(&slot.id)) {
            return Candidate::Excluded;
        }
        let availability = slot.service.availability();
        let available = availability.is_available();
        self.note_availability(i, available);
        self.track_probe(i, availability);
        if !available {
            return Candidate::Skip;
        }
        if availability == Availability::Probe {
            Candidate::Probe
        } else {
            Candidate::Available
        }
    }

    /// Whether peer `a` is less loaded than peer `b`, per unit of weight.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.peers[a], &self.peers[b]);
        let la = a.stats.in_flight.load(Ordering::Relaxed) as u64;
        let lb = b.stats.in_flight.load(Ordering::Relaxed) as u64;
        if let (Some(ea), Some(eb)) = (&a.stats.ewma, &b.stats.ewma) {
            let now = Instant::now();
            let ca = ea.get(now) * (la + 1) as f64 / f64::from(a.weight);
            let cb = eb.get(now) * (lb + 1) as f64 / f64::from(b.weight);
            return ca < cb;
        }
        la * u64::from(b.weight) < lb * u64::from(a.weight)
    }

    /// A random index, drawn in proportion to weight (rejection sampling
    /// against the largest weight; one draw when all weights are equal).
    fn draw(&mut self) -> usize {
        let n = self.peers.len();
        let max = self.weights.last_key_value().map_or(1, |(w, _)| *w);
        let mut i = self.rng.usize(..n);
        for _ in 0..4 {
            let w = self.peers[i].weight;
            if w >= max || self.rng.u32(..max) < w {
                break;
            }
            i = self.rng.usize(..n);
        }
        i
    }

    fn in_panic(&self, settings: &Settings) -> bool {
        match settings.panic_threshold {
            Some(threshold) => {
                let n = self.peers.len() as f64;
                (self.available.len() as f64 / n) < threshold
            }
            None => false,
        }
    }

    /// Picks a peer for a call: the less loaded of two random available
    /// peers not in `record`; an excluded peer only when no other is
    /// available; a peer due for its probe first.
    pub(crate) fn choose(
        &mut self,
        record: Option<&AttemptRecord>,
        settings: &Settings,
    ) -> Result<usize, NoAvailablePeers> {
        if self.peers.is_empty() {
            return Err(self.none_available(settings, 0, 0, 0, 0, None));
        }
        if let Some(i) = self.due_probe(record) {
            return Ok(i);
        }
        if self.in_panic(settings) {
            return self.choose_panic(settings);
        }
        self.choose_normal(record, settings)
    }

    /// Keeps the probe queue following a peer through its breaker's cycle:
    /// open -> queued for when its cooldown ends; probing (its probe picked
    /// now, or another caller's in flight) -> checked again after
    /// [`PROBE_RECHECK`], so that a probe that fails and re-opens the breaker
    /// is followed by the next one. A closed (available) peer leaves the
    /// queue when its entry comes up.
    fn track_probe(&mut self, i: usize, availability: Availability) {
        match availability {
            Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in,
            } => self.schedule_probe(i, retry_in),
            Availability::Unavailable {
                reason: Unavailable::ProbesBusy,
                retry_in,
            } => self.schedule_probe(i, retry_in.max(PROBE_RECHECK)),
            Availability::Probe => self.schedule_probe(i, PROBE_RECHECK),
            _ => {}
        }
    }

    /// Queues a probe for peer `i`, open for `retry_in` more, unless it has
    /// one queued already. O(log n).
    fn schedule_probe(&mut self, i: usize, retry_in: Duration) {
        let slot = &mut self.peers[i];
        if slot.probe_at.is_none() {
            let at = Instant::now() + retry_in;
            slot.probe_at = Some(at);
            self.probe_queue.push(Reverse((at, slot.serial)));
        }
    }

    /// The peer at the head of the probe queue if its probe is due and it
    /// takes it now. O(1) when nothing is due (a peek); stale entries are
    /// dropped as they reach the head.
    fn due_probe(&mut self, record: Option<&AttemptRecord>) -> Option<usize> {
        let now = match self.probe_queue.peek() {
            None => return None,
            Some(Reverse((at, _))) => {
                let now = Instant::now();
                if *at > now {
                    return None;
                }
                now
            }
        };
        for _ in 0..PROBE_POPS {
            let &Reverse((at, serial)) = self.probe_queue.peek()?;
            if at > now {
                return None;
            }
            let live = self
                .by_serial
                .get(&serial)
                .copied()
                .filter(|&i| self.peers[i].probe_at == Some(at));
            let Some(i) = live else {
                self.probe_queue.pop();
                continue;
            };
            let slot = &self.peers[i];
            if slot.readiness == Readiness::Ready && record.is_some_and(|r| !r.is_empty() && r.contains(&slot.id)) {
                // Not for this call (a retry after its own attempt): the entry
                // stays for the next call.
                return None;
            }
            self.probe_queue.pop();
            self.peers[i].probe_at = None;
            // Asking may re-queue it (still open: a new cooldown). A peer
            // that is plainly available again no longer needs a probe: the
            // draws will find it.
            match self.classify(i, record) {
                Candidate::Probe => return Some(i),
                Candidate::Available | Candidate::Excluded | Candidate::Skip => {}
            }
        }
        None
    }

    /// Power of two choices among the available peers not in `record`.
    fn choose_normal(
        &mut self,
        record: Option<&AttemptRecord>,
        settings: &Settings,
    ) -> Result<usize, NoAvailablePeers> {
        let n = self.peers.len();
        let mut first: Option<usize> = None;
        for _ in 0..UNIFORM_DRAWS {
            let mut i = self.draw();
            if first == Some(i) {
                if n == 1 {
                    break;
                }
                // Another peer, uniformly among the rest.
                i = (i + 1 + self.rng.usize(..n - 1)) % n;
            }
            match self.classify(i, record) {
                Candidate::Probe => return Ok(i),
                Candidate::Available => match first {
                    None => first = Some(i),
                    Some(f) => return Ok(if self.less_loaded(i, f) { i } else { f }),
                },
                Candidate::Excluded | Candidate::Skip => {}
            }
        }
        if let Some(f) = first {
            return Ok(f);
        }
        // Most draws met unavailable peers: sample the peers last seen
        // available (stale entries leave the set as they are asked).
        for _ in 0..DRAWS {
            if self.available.is_empty() {
                break;
            }
            let i = self.available[self.rng.usize(..self.available.len())];
            if first == Some(i) {
                continue;
            }
            match self.classify(i, record) {
                Candidate::Probe => return Ok(i),
                Candidate::Available => match first {
                    None => first = Some(i),
                    Some(f) => return Ok(if self.less_loaded(i, f) { i } else { f }),
                },
                Candidate::Excluded | Candidate::Skip => {}
            }
        }
        if let Some(f) = first {
            return Ok(f);
        }
        self.scan(record, settings)
    }

    /// Below the panic threshold: the attempt record no longer excludes
    /// peers, so that the few available peers all share the load, retries
    /// included. An open peer is never picked: its breaker would refuse the
    /// call at once (see the crate docs, "Panic threshold").
    fn choose_panic(&mut self, settings: &Settings) -> Result<usize, NoAvailablePeers> {
        self.choose_normal(None, settings)
    }

    /// The slow path, when random draws found no available peer: looks at
    /// every peer once.
    fn scan(&mut self, record: Option<&AttemptRecord>, settings: &Settings) -> Result<usize, NoAvailablePeers> {
        let n = self.peers.len();
        // Two-slot reservoirs: available and not excluded, available but excluded.
        let mut fresh: [Option<usize>; 2] = [None, None];
        let mut fresh_seen = 0usize;
        let mut used: [Option<usize>; 2] = [None, None];
        let mut used_seen = 0usize;
        let (mut open, mut probing, mut excluded) = (0, 0, 0);
        let mut next_probe: Option<Duration> = None;
        for i in 0..n {
            let slot = &self.peers[i];
            if slot.readiness != Readiness::Ready {
                excluded += 1;
                continue;
            }
            let availability = slot.service.availability();
            self.note_availability(i, availability.is_available());
            self.track_probe(i, availability);
            let is_used = record.is_some_and(|r| !r.is_empty() && r.contains(&self.peers[i].id));
            match availability {
                Availability::Unavailable { reason, retry_in } => {
                    match reason {
                        Unavailable::Open => {
                            open += 1;
                            next_probe = Some(next_probe.map_or(retry_in, |p| p.min(retry_in)));
                        }
                        Unavailable::ProbesBusy => probing += 1,
                        _ => excluded += 1,
                    }
                    continue;
                }
                Availability::Probe if !is_used => return Ok(i),
                _ => {}
            }
            let (slots, seen) = if is_used {
                (&mut used, &mut used_seen)
            } else {
                (&mut fresh, &mut fresh_seen)
            };
            *seen += 1;
            if *seen <= 2 {
                slots[*seen - 1] = Some(i);
            } else {
                let j = self.rng.usize(..*seen);
                if j < 2 {
                    slots[j] = Some(i);
                }
            }
        }
        for pair in [fresh, used] {
            match pair {
                [Some(a), Some(b)] => return Ok(if self.less_loaded(b, a) { b } else { a }),
                [Some(a), None] | [None, Some(a)] => return Ok(a),
                [None, None] => {}
            }
        }
        Err(self.none_available(settings, n, open, probing, excluded, next_probe))
    }

    fn none_available(
        &mut self,
        settings: &Settings,
        known: usize,
        open: usize,
        probing: usize,
        excluded: usize,
        next_probe: Option<Duration>,
    ) -> NoAvailablePeers {
        let mut error = NoAvailablePeers::new(known, open, probing, excluded);
        if let Some(service) = &settings.service {
            error = error.with_service(service.as_ref());
        }
        if let Some(next) = next_probe {
            error = error.with_next_probe_in(next);
        }
        self.deferred.push(Deferred::Rejected);
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_discovery_no_available_peers_total").increment(1);
        error
    }

    pub(crate) fn peer_id(&self, i: usize) -> &PeerId {
        &self.peers[i].id
    }

    pub(crate) fn stats(&self, i: usize) -> &Arc<PeerStats> {
        &self.peers[i].stats
    }

    pub(crate) fn health(&self, settings: &Settings) -> HealthReport {
        HealthReport {
            service: settings.service.as_deref().map(str::to_owned),
            registry: settings.registry.as_ref().map(|r| r.state()),
            discover_error: self.discover_error.clone(),
            discover_ended: self.discover.is_none(),
            peers: self
                .peers
                .iter()
                .map(|slot| PeerHealth {
                    peer: slot.id.clone(),
                    availability: slot.service.availability(),
                    readiness: slot.readiness,
                    weight: slot.weight,
                    in_flight: slot.stats.in_flight.load(Ordering::Relaxed),
                    successes: slot.stats.successes.load(Ordering::Relaxed),
                    failures: slot.stats.failures.load(Ordering::Relaxed),
                    last_error: slot.stats.last_error.lock().clone(),
                })
                .collect(),
        }
    }
}

impl<D> Shared<D>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: CheckAvailability + PeerWeight,
    D::Error: Into<BoxError>,
{
    /// Polls the chosen peer's client for readiness without a task to wake (the
    /// balancer does not wait on one peer): `true` if it can take the call now.
    /// A peer that is not ready is skipped and re-polled by later `poll_ready`s;
    /// a peer whose client failed is kept (known, reported) but not picked
    /// until the discover replaces it.
    pub(crate) fn try_ready<Req>(&mut self, i: usize) -> bool
    where
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let slot = &mut self.peers[i];
        match slot.service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Pending => {
                slot.readiness = Readiness::NotReady;
                self.not_ready.push_back(slot.key.clone());
                // Out of the available set (the fallback sample and the panic
                // threshold's count) until it is ready again.
                self.avail_remove(i);
                false
            }
            Poll::Ready(Err(error)) => {
                let error: BoxError = error.into();
                tracing::warn!(target: "palisade", layer = "discovery", peer = %slot.id, %error, "peer client failed; not picked until replaced");
                *slot.stats.last_error.lock() = Some(error.to_string());
                slot.readiness = Readiness::Failed;
                self.avail_remove(i);
                false
            }
        }
    }

    /// Re-polls a few not-ready peers with the caller's context, so that they
    /// come back when ready without waking every task on every change.
    pub(crate) fn poll_not_ready<Req>(&mut self, cx: &mut Context<'_>)
    where
        D::Service: Service<Req>,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
    {
        for _ in 0..self.not_ready.len().min(NOT_READY_POLLS) {
            let Some(key) = self.not_ready.pop_front() else {
                return;
            };
            let Some(&i) = self.index.get(&key) else {
                continue;
            };
            let slot = &mut self.peers[i];
            if slot.readiness != Readiness::NotReady {
                continue;
            }
            match slot.service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    slot.readiness = Readiness::Ready;
                    // Back in the sample; its availability is checked when drawn.
                    self.avail_add(i);
                }
                Poll::Pending => self.not_ready.push_back(key),
                Poll::Ready(Err(error)) => {
                    let error: BoxError = error.into();
                    tracing::warn!(target: "palisade", layer = "discovery", peer = %slot.id, %error, "peer client failed; not picked until replaced");
                    *slot.stats.last_error.lock() = Some(error.to_string());
                    slot.readiness = Readiness::Failed;
                }
            }
        }
    }

    pub(crate) fn call<Req>(&mut self, i: usize, req: Req) -> <D::Service as Service<Req>>::Future
    where
        D::Service: Service<Req>,
    {
        self.peers[i].service.call(req)
    }
}
