//! The fleet's ejection budget (Envoy's `max_ejection_percent`): how many of
//! the balancer's peers their breakers may take out of rotation at once.
//!
//! A breaker asks before a trip opens it, through its
//! [`FleetMembership`](palisade_core::peer::FleetMembership), whose sink is
//! the peer's [`PeerCell`](super::cell::PeerCell); the cell takes a grant
//! from this budget (and holds it until the breaker closes, is reset, or the
//! peer leaves the set). The breaker asks under its own lock, on whatever
//! thread saw the failure, possibly inside the balancer's own call: so the
//! budget is two atomics, never a lock.
//!
//! With `n` peers in the set and a share `s`, at most `floor(s * n)` peers
//! may be ejected, but always at least one (when `n >= 2`) and never all of
//! them: at least one peer stays in rotation. A lone peer is never ejected.
//! Without a cap, every grant is given (and counted, for the gauge): every
//! peer may be ejected, and the all-open policy decides what a call does.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many peers may be out of rotation at once, and how many are.
#[derive(Debug)]
pub(crate) struct EjectionBudget {
    /// The share of the set that may be ejected; `None`: no cap.
    share: Option<f64>,
    /// The set's size, updated under the set's write lock on every change.
    peers: AtomicUsize,
    /// Grants held now.
    ejected: AtomicUsize,
}

impl EjectionBudget {
    pub(crate) fn new(share: Option<f64>) -> Self {
        Self {
            share,
            peers: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
        }
    }

    /// The most peers that may be ejected with `n` peers in the set.
    pub(crate) fn limit_for(share: Option<f64>, n: usize) -> usize {
        match share {
            // No cap: every grant is given (and counted, for the gauge).
            None => usize::MAX,
            Some(_) if n < 2 => 0,
            // `share` lies in (0, 1]: the product is finite and below `n + 1`.
            Some(share) => ((share * n as f64).floor() as usize).clamp(1, n - 1),
        }
    }

    /// The most peers that may be ejected now.
    pub(crate) fn limit(&self) -> usize {
        Self::limit_for(self.share, self.peers.load(Ordering::Acquire))
    }

    /// How many grants are held.
    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    /// Whether a cap applies.
    pub(crate) fn is_capped(&self) -> bool {
        self.share.is_some()
    }

    /// The set now holds `n` peers. A set that shrank below the grants held
    /// takes none back: they are given back as those breakers close.
    pub(crate) fn set_peers(&self, n: usize) {
        self.peers.store(n, Ordering::Release);
    }

    /// Takes a grant if the budget has room.
    pub(crate) fn try_take(&self) -> bool {
        let limit = self.limit();
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < limit).then_some(held + 1)
            })
            .is_ok()
    }

    /// Gives a grant back (called once per grant taken).
    pub(crate) fn give_back(&self) {
        // Saturating: never wraps, whatever the order of racing calls.
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| held.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_keeps_one_peer_and_ejects_at_least_one() {
        let ten = Some(0.1);
        let limits: Vec<usize> = (0..=21).map(|n| EjectionBudget::limit_for(ten, n)).collect();
        assert_eq!(
            limits,
            [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2],
            "10%: one of 2..=19 peers, two of 20"
        );
        assert_eq!(EjectionBudget::limit_for(Some(1.0), 3), 2, "never all of them");
        assert_eq!(EjectionBudget::limit_for(Some(0.5), 10), 5);
        assert_eq!(
            EjectionBudget::limit_for(None, 0),
            usize::MAX,
            "no cap: every peer, whatever the count says"
        );
    }

    #[test]
    fn grants_are_bounded_by_the_limit_and_come_back() {
        let budget = EjectionBudget::new(Some(0.1));
        budget.set_peers(3);
        assert!(budget.try_take());
        assert!(!budget.try_take(), "one of three");
        budget.give_back();
        assert!(budget.try_take());
        budget.set_peers(1);
        budget.give_back();
        assert!(!budget.try_take(), "a lone peer is never ejected");
        budget.give_back();
        assert_eq!(budget.ejected(), 0, "giving back never wraps");
    }
}
