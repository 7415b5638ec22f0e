//! Driving the discover stream without a lock on every `poll_ready`.
//!
//! The discover is polled with the balancer's own waker, which only raises a
//! flag (and wakes the tasks waiting in `poll_ready`): a `poll_ready` whose
//! flag is down costs one atomic load, and threads calling through clones do
//! not meet on the discover's lock unless it has news.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use parking_lot::Mutex;

/// Tasks waiting in `poll_ready` (back-pressure), woken by any news: a change
/// of the discover, or a report of a peer.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    any: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Waiters {
    pub(crate) fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        // SeqCst: the caller then checks for news (see `Inbox::push`).
        self.any.store(true, Ordering::SeqCst);
    }

    /// Wakes every waiting task (outside the lock).
    pub(crate) fn wake_all(&self) {
        if !self.any.swap(false, Ordering::SeqCst) {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The discover's waker: "the discover has news".
#[derive(Debug)]
pub(crate) struct DiscoverWake {
    changed: AtomicBool,
    pub(crate) waiters: Arc<Waiters>,
}

impl DiscoverWake {
    pub(crate) fn new(waiters: Arc<Waiters>) -> Arc<Self> {
        // Raised: the first `poll_ready` polls the discover.
        Arc::new(Self {
            changed: AtomicBool::new(true),
            waiters,
        })
    }

    #[inline]
    pub(crate) fn has_news(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// Lowers the flag; whether it was raised.
    pub(crate) fn take_news(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Raises the flag by hand (a discover error: poll again next time).
    pub(crate) fn raise(&self) {
        self.changed.store(true, Ordering::Release);
    }
}

impl Wake for DiscoverWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise();
        self.waiters.wake_all();
    }
}

/// The discover, owned by the balancer and polled by one thread at a time.
pub(crate) struct Driver<D> {
    pub(crate) discover: Option<Pin<Box<D>>>,
}

/// What the health report says of the discover.
#[derive(Clone, Debug, Default)]
pub(crate) struct DiscoverStatus {
    pub(crate) error: Option<String>,
    pub(crate) ended: bool,
}
