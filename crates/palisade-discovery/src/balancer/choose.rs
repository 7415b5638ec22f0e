//! Power of two choices among the pickable peers, in O(1): two weighted
//! draws from the exact set of pickable peers (per-thread random numbers, no
//! shared generator), the one that is not degraded first, else the less
//! loaded first.
//!
//! A retry avoids the peers of earlier attempts: from a drawn position the
//! choice walks forward past peers in the attempt record. At most
//! `record.len()` of any `record.len() + 1` consecutive entries can be in the
//! record, so the walk is bounded by the record's length (a few entries), and
//! it finds a fresh peer whenever one exists. Only when every pickable peer is
//! in the record does a used one get the call.

use std::hash::Hash;
use std::sync::atomic::Ordering;

use palisade_core::peer::AttemptRecord;
use tokio::time::Instant;

use super::set::PeerSet;

/// A weighted position in the pickable list: rejection sampling against the
/// largest weight, one draw when all weights are equal.
fn draw<K: Hash + Eq + Clone, S>(set: &PeerSet<K, S>) -> usize {
    let pickable = set.pickable();
    let n = pickable.len();
    let mut p = fastrand::usize(..n);
    if set.uniform_weights() {
        return p;
    }
    let max = set.max_weight();
    for _ in 0..4 {
        let w = set.peer(pickable[p]).weight;
        if w >= max || fastrand::u32(..max) < w {
            break;
        }
        p = fastrand::usize(..n);
    }
    p
}

/// The first peer from position `p` on that is not `other` and not in
/// `record`.
fn fresh_from<K: Hash + Eq + Clone, S>(
    set: &PeerSet<K, S>,
    p: usize,
    record: Option<&AttemptRecord>,
    other: Option<usize>,
) -> Option<usize> {
    let pickable = set.pickable();
    let n = pickable.len();
    let steps = (record.map_or(0, AttemptRecord::len) + 1 + usize::from(other.is_some())).min(n);
    (0..steps)
        .map(|k| pickable[(p + k) % n])
        .find(|&i| Some(i) != other && !record.is_some_and(|r| r.contains(&set.peer(i).id)))
}

/// Two candidates (the second when there are two pickable peers), the less
/// loaded first. `record` is `None` when it excludes nothing (a first
/// attempt, or panic mode). Panics never: the caller checked that the
/// pickable list is not empty.
pub(crate) fn two<K: Hash + Eq + Clone, S>(
    set: &PeerSet<K, S>,
    record: Option<&AttemptRecord>,
) -> (usize, Option<usize>) {
    let pickable = set.pickable();
    let n = pickable.len();
    let (a, record) = match fresh_from(set, draw(set), record, None) {
        Some(a) => (a, record),
        // Every pickable peer was used by an earlier attempt: better one of
        // them than failing the call.
        None => (pickable[draw(set)], None),
    };
    if n == 1 {
        return (a, None);
    }
    let mut q = draw(set);
    if pickable[q] == a {
        // Another position, uniformly among the rest.
        q = (q + 1 + fastrand::usize(..n - 1)) % n;
    }
    match fresh_from(set, q, record, Some(a)) {
        Some(b) if less_loaded(set, b, a) => (b, Some(a)),
        b => (a, b),
    }
}

/// Whether peer `a` should win over peer `b`: a peer that is not degraded
/// beats a degraded one whatever their loads (a degraded peer that fails
/// fast must not attract calls because it looks unloaded); otherwise the
/// less loaded per unit of weight wins.
fn less_loaded<K: Hash + Eq + Clone, S>(set: &PeerSet<K, S>, a: usize, b: usize) -> bool {
    let (a, b) = (set.peer(a), set.peer(b));
    if set.has_degraded() {
        let (da, db) = (a.tracked.is_degraded(), b.tracked.is_degraded());
        if da != db {
            return db;
        }
    }
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
