//! Power of two choices among the pickable peers, in O(1): two weighted
//! draws from the exact set of pickable peers (per-thread random numbers, no
//! shared generator), the one that is not degraded first, else the less
//! loaded first. The everyday pick (equal weights, no attempt record)
//! takes both positions from one 64-bit draw, and the comparison reads the
//! pickable list's dense entries and the two peers' counters, never the
//! slots: the choice touches only the winner's (the caller offers the call
//! to the other candidate if the winner cannot take it).
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

use super::set::{PeerSet, Pick};

/// A uniform position below `n` from 32 random bits (multiply and shift: no
/// division, a bias of at most `n / 2^32`, nothing for a load balancer; past
/// 2^32 positions only 2^32 of them can come up, a fleet no balancer has).
fn below(bits: u32, n: usize) -> usize {
    ((u128::from(bits) * n as u128) >> 32) as usize
}

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
        let w = pickable[p].weight;
        if w >= max || fastrand::u32(..max) < w {
            break;
        }
        p = fastrand::usize(..n);
    }
    p
}

/// The first position from `p` on whose peer is not at position `other`
/// and not in `record`.
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
        .map(|k| (p + k) % n)
        .find(|&q| Some(q) != other && !record.is_some_and(|r| r.contains(&set.peer(pickable[q].index).id)))
}

/// Two candidates (the second when there are two pickable peers), the less
/// loaded first, as slot indices. `record` is `None` when it excludes
/// nothing (a first attempt, or panic mode). Panics never: the caller
/// checked that the pickable list is not empty.
pub(crate) fn two<K: Hash + Eq + Clone, S>(
    set: &PeerSet<K, S>,
    record: Option<&AttemptRecord>,
) -> (usize, Option<usize>) {
    let pickable = set.pickable();
    let n = pickable.len();
    let (a, b) = if record.is_none() && set.uniform_weights() {
        // The everyday pick: two distinct positions from one random draw.
        if n == 1 {
            return (pickable[0].index, None);
        }
        let bits = fastrand::u64(..);
        let a = below(bits as u32, n);
        let b = below((bits >> 32) as u32, n - 1);
        (a, Some(b + usize::from(b >= a)))
    } else {
        let (a, record) = match fresh_from(set, draw(set), record, None) {
            Some(a) => (a, record),
            // Every pickable peer was used by an earlier attempt: better one
            // of them than failing the call.
            None => (draw(set), None),
        };
        if n == 1 {
            return (pickable[a].index, None);
        }
        let mut q = draw(set);
        if q == a {
            // Another position, uniformly among the rest.
            q = (q + 1 + fastrand::usize(..n - 1)) % n;
        }
        (a, fresh_from(set, q, record, Some(a)))
    };
    let first = &pickable[a];
    match b.map(|b| &pickable[b]) {
        Some(second) if less_loaded(second, first, set.has_degraded()) => (second.index, Some(first.index)),
        second => (first.index, second.map(|s| s.index)),
    }
}

/// Whether peer `a` should win over peer `b`: a peer that is not degraded
/// beats a degraded one whatever their loads (a degraded peer that fails
/// fast must not attract calls because it looks unloaded); otherwise the
/// less loaded per unit of weight wins. Reads the dense entries and the
/// peers' counters, never their slots.
fn less_loaded(a: &Pick, b: &Pick, has_degraded: bool) -> bool {
    if has_degraded && a.degraded != b.degraded {
        return b.degraded;
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
