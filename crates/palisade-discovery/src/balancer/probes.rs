//! The probe queue: every peer that is not plainly available, keyed by when
//! the balancer should look at it again — an open peer when its cooldown
//! ends, a half-open peer with a free probe slot at once, a peer whose probes
//! are in flight (or that is unavailable for another reason) a little later.
//!
//! A min-heap with lazy deletion: a peer has at most one *live* entry, the
//! one whose instant and generation are its slot's; entries of removed peers
//! or of an earlier state are dropped when they reach the head, and every
//! change under the write lock ends with [`ProbeQueue::clean`], so that the
//! head is always live and a read-locked peek is exact. Push and pop are
//! O(log n); the peek on the request path is O(1).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use tokio::time::Instant;

use super::cell::PeerCell;

/// One entry: when, which peer (its cell knows the slot's index), and which
/// of the peer's entries (its slot keeps the generation of the live one, so
/// that an old entry with the same instant never comes back to life).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) at: Instant,
    pub(crate) generation: u64,
    pub(crate) cell: Arc<PeerCell>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.cell.serial).cmp(&(other.at, other.cell.serial))
    }
}

#[derive(Debug, Default)]
pub(crate) struct ProbeQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl ProbeQueue {
    pub(crate) fn push(&mut self, at: Instant, generation: u64, cell: Arc<PeerCell>) {
        self.heap.push(Reverse(Entry { at, generation, cell }));
    }

    /// The head, live once [`clean`](Self::clean) ran.
    pub(crate) fn peek(&self) -> Option<&Entry> {
        self.heap.peek().map(|Reverse(e)| e)
    }

    pub(crate) fn pop(&mut self) -> Option<Entry> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Drops dead entries from the head until it is live (`live` says which).
    pub(crate) fn clean(&mut self, live: impl Fn(&Entry) -> bool) {
        while let Some(Reverse(head)) = self.heap.peek() {
            if live(head) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Entries, live or not (for tests and the heap's own bound).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Rebuilds the heap from its live entries, when dead ones pile up
    /// (many state changes of peers far from the head). O(n), at most once
    /// per n changes: amortised O(1).
    pub(crate) fn compact(&mut self, live: impl Fn(&Entry) -> bool) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries.into_iter().filter(|Reverse(e)| live(e)).collect();
    }

    /// Every entry, live or not, in no order (tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.heap.iter().map(|Reverse(e)| e)
    }
}
