//! The permit pool: a FIFO semaphore with a bounded queue and a limit that
//! can change while permits are held.
//!
//! # Why not `tokio::sync::Semaphore`
//!
//! tokio's semaphore is fair, but it has no bound on its queue, and lowering
//! its capacity (`forget_permits`) only takes permits that are free at that
//! moment: the rest of the reduction would have to be tracked on the side and
//! taken back from returning permits, racing with waiters it has already
//! chosen. The bulkhead needs exactly three numbers kept consistent — permits
//! held, the limit, the queue length — so it keeps them itself:
//!
//! - **Fast path** (nobody queued): one compare-and-swap on the in-flight
//!   counter, bounded by the limit. No lock, no allocation.
//! - **Slow path**: a short `parking_lot` critical section over the queue. Each
//!   waiter has a slot in a slab (reused, so steady-state queuing allocates
//!   nothing) and its index sits in a `VecDeque` in arrival order. Permits
//!   are handed to the front of the queue only: FIFO.
//! - **Release**: decrement, then, only if someone is queued, lock and hand
//!   free permits to the front waiters. Wakers are woken after the lock is
//!   released.
//! - A waiter that goes away (future dropped, `max_wait` elapsed) leaves the
//!   queue at once. If a permit was handed to it in the meantime, the permit
//!   is passed on to the next waiter, never leaked.
//! - Lowering the limit revokes nothing: held permits stay held, and new
//!   permits are granted only once the count is below the new limit. Raising
//!   it hands the new room to waiters at once.
//!
//! Removing a cancelled waiter from the middle of the queue is `O(queue
//! length)`; the queue is bounded by `max_queue`, so this is bounded too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// Where a waiter stands, keyed by a slab index and a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
enum SlotState {
    Free,
    Waiting,
    Granted,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    generation: u32,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Queue {
    slots: Vec<Slot>,
    free: Vec<u32>,
    order: VecDeque<u32>,
}

impl Queue {
    fn insert(&mut self) -> WaitKey {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    state: SlotState::Free,
                    generation: 0,
                    waker: None,
                });
                // The queue is bounded by `max_queue`, far below u32::MAX.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.state = SlotState::Waiting;
        slot.generation = slot.generation.wrapping_add(1);
        self.order.push_back(index);
        WaitKey {
            index,
            generation: slot.generation,
        }
    }

    fn slot(&mut self, key: WaitKey) -> Option<&mut Slot> {
        self.slots
            .get_mut(key.index as usize)
            .filter(|slot| slot.generation == key.generation && !matches!(slot.state, SlotState::Free))
    }

    fn free(&mut self, key: WaitKey) {
        if let Some(slot) = self.slot(key) {
            slot.state = SlotState::Free;
            slot.waker = None;
            self.free.push(key.index);
        }
    }
}

/// Wakers collected under the lock and woken after it.
struct Wakers {
    buf: [Option<Waker>; 8],
    len: usize,
}

impl Wakers {
    fn new() -> Self {
        Self {
            buf: Default::default(),
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    fn push(&mut self, waker: Option<Waker>) {
        if let Some(w) = waker {
            self.buf[self.len] = Some(w);
            self.len += 1;
        }
    }

    fn wake_all(&mut self) {
        for w in &mut self.buf[..self.len] {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        self.len = 0;
    }
}

/// What [`Pool::acquire`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// A permit is held.
    Granted,
    /// The caller is queued; poll with [`Pool::poll_waiter`].
    Queued(WaitKey),
    /// Every slot is busy and the queue is full.
    Full,
}

/// What a waiter that gives up had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// It left the queue without a permit.
    Left,
    /// A permit had been handed to it: the caller now holds it.
    HadPermit,
}

/// A FIFO permit pool with a bounded queue and a live limit.
#[derive(Debug)]
pub(crate) struct Pool {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    queued: AtomicUsize,
    max_queue: usize,
    queue: Mutex<Queue>,
}

impl Pool {
    pub(crate) fn new(limit: usize, max_queue: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            queued: AtomicUsize::new(0),
            max_queue,
            queue: Mutex::new(Queue::default()),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(SeqCst)
    }

    pub(crate) fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Takes a permit if one is free under the limit.
    #[inline]
    fn try_take(&self) -> bool {
        let limit = self.limit.load(SeqCst);
        let mut current = self.in_flight.load(SeqCst);
        loop {
            if current >= limit {
                return false;
            }
            match self
                .in_flight
                .compare_exchange_weak(current, current + 1, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// The fast path: a permit without a lock, when nobody is queued (so that
    /// a newcomer never overtakes a waiter).
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        self.queued.load(SeqCst) == 0 && self.try_take()
    }

    /// A permit now, a place in the queue, or `Full`.
    #[cold]
    pub(crate) fn acquire(&self) -> Acquire {
        if self.try_acquire() {
            return Acquire::Granted;
        }
        let mut wakers = Wakers::new();
        let result = {
            let mut queue = self.queue.lock();
            self.drain(&mut queue, &mut wakers);
            if queue.order.is_empty() && self.try_take() {
                Acquire::Granted
            } else if queue.order.len() >= self.max_queue {
                Acquire::Full
            } else {
                let key = queue.insert();
                self.queued.fetch_add(1, SeqCst);
                // A permit released between our failed attempt and the
                // enqueue saw an empty queue and woke nobody: look again.
                self.drain(&mut queue, &mut wakers);
                match queue.slot(key).map(|s| matches!(s.state, SlotState::Granted)) {
                    Some(true) => {
                        queue.free(key);
                        Acquire::Granted
                    }
                    _ => Acquire::Queued(key),
                }
            }
        };
        wakers.wake_all();
        result
    }

    /// `Ready` once the waiter `key` holds a permit (its slot is then freed).
    pub(crate) fn poll_waiter(&self, key: WaitKey, cx: &mut Context<'_>) -> Poll<()> {
        let mut queue = self.queue.lock();
        match queue.slot(key) {
            Some(slot) => match slot.state {
                SlotState::Granted => {
                    queue.free(key);
                    Poll::Ready(())
                }
                _ => {
                    match &mut slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        w => *w = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            },
            // Not a live key: a caller bug; never hang, never hand out a permit.
            None => Poll::Pending,
        }
    }

    /// The waiter `key` gives up. If a permit had reached it, the caller now
    /// holds that permit ([`Cancelled::HadPermit`]) and must release it.
    pub(crate) fn cancel(&self, key: WaitKey) -> Cancelled {
        let mut queue = self.queue.lock();
        let granted = match queue.slot(key) {
            Some(slot) => matches!(slot.state, SlotState::Granted),
            None => return Cancelled::Left,
        };
        if !granted && let Some(pos) = queue.order.iter().position(|&i| i == key.index) {
            queue.order.remove(pos);
            self.queued.fetch_sub(1, SeqCst);
        }
        queue.free(key);
        if granted { Cancelled::HadPermit } else { Cancelled::Left }
    }

    /// Returns one permit and hands free room to the front of the queue.
    #[inline]
    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    /// Changes the limit; returns the old one. Held permits are not revoked.
    pub(crate) fn set_limit(&self, limit: usize) -> usize {
        let old = self.limit.swap(limit, SeqCst);
        if limit > old && self.queued.load(SeqCst) > 0 {
            self.wake_waiters();
        }
        old
    }

    #[cold]
    #[inline(never)]
    fn wake_waiters(&self) {
        let mut wakers = Wakers::new();
        loop {
            let more = {
                let mut queue = self.queue.lock();
                self.drain(&mut queue, &mut wakers)
            };
            wakers.wake_all();
            if !more {
                break;
            }
        }
    }

    /// Hands permits to the front waiters while there is room. Returns `true`
    /// when it stopped only because `wakers` is full.
    fn drain(&self, queue: &mut Queue, wakers: &mut Wakers) -> bool {
        while let Some(&index) = queue.order.front() {
            if wakers.is_full() {
                return true;
            }
            if !self.try_take() {
                return false;
            }
            queue.order.pop_front();
            self.queued.fetch_sub(1, SeqCst);
            let slot = &mut queue.slots[index as usize];
            slot.state = SlotState::Granted;
            wakers.push(slot.waker.take());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    #[test]
    fn fifo_handoff_bounded_queue_and_cancellation() {
        let pool = Pool::new(1, 2);
        assert_eq!(pool.acquire(), Acquire::Granted);
        let Acquire::Queued(a) = pool.acquire() else { panic!() };
        let Acquire::Queued(b) = pool.acquire() else { panic!() };
        assert_eq!(pool.acquire(), Acquire::Full);
        let (fa, wa) = waker();
        let (fb, wb) = waker();
        assert!(pool.poll_waiter(a, &mut Context::from_waker(&wa)).is_pending());
        assert!(pool.poll_waiter(b, &mut Context::from_waker(&wb)).is_pending());
        pool.release();
        assert!(
            fa.0.load(SeqCst) && !fb.0.load(SeqCst),
            "the first waiter is served first"
        );
        // `a` was granted but gives up: the permit passes to `b`.
        assert_eq!(pool.cancel(a), Cancelled::HadPermit);
        pool.release();
        assert!(fb.0.load(SeqCst));
        assert!(pool.poll_waiter(b, &mut Context::from_waker(&wb)).is_ready());
        assert_eq!(pool.in_flight(), 1);
        assert_eq!(pool.queued(), 0);
        pool.release();
        assert_eq!(pool.in_flight(), 0);
    }

    #[test]
    fn lowering_the_limit_revokes_nothing_and_raising_wakes() {
        let pool = Pool::new(2, 4);
        assert!(pool.try_acquire());
        assert!(pool.try_acquire());
        assert_eq!(pool.set_limit(1), 2);
        assert_eq!(pool.in_flight(), 2);
        pool.release();
        let Acquire::Queued(w) = pool.acquire() else {
            panic!("1 held of 1")
        };
        let (f, wk) = waker();
        assert!(pool.poll_waiter(w, &mut Context::from_waker(&wk)).is_pending());
        pool.set_limit(3);
        assert!(f.0.load(SeqCst));
        assert!(pool.poll_waiter(w, &mut Context::from_waker(&wk)).is_ready());
        assert_eq!(pool.in_flight(), 2);
    }

    #[test]
    fn zero_queue_rejects_when_busy() {
        let pool = Pool::new(1, 0);
        assert!(pool.try_acquire());
        assert_eq!(pool.acquire(), Acquire::Full);
        assert_eq!(pool.queued(), 0);
    }
}
