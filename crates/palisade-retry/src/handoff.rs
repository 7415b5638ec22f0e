//! A value handed from one holder to the next: the attempts of one call take
//! turns reading its request body.
//!
//! A [`HandOff`] is a slot that holds a value while nobody has it. One holder
//! at a time [takes](HandOff::poll_take) the value; a taker that finds the
//! slot empty registers its waker and waits. When the holder
//! [puts it back](HandOff::put_back), every waiting taker is woken (outside
//! the lock), and the first to poll again takes it; the others register again.
//!
//! It is a one-permit semaphore that carries its data, sized for the retry
//! layer's needs: no queue order (waiters are rare, at most the attempts of
//! one call), no allocation until a second taker waits, one short
//! `parking_lot` critical section per take or put, never held across a
//! poll of anything else.

use std::fmt;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// A slot handing one value from holder to holder; see the [module docs](self).
pub(crate) struct HandOff<T> {
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    /// The value, while no holder has it.
    value: Option<T>,
    /// The takers that found the slot empty.
    waiting: Vec<Waker>,
}

impl<T> HandOff<T> {
    /// An empty slot: the value starts out with its first holder, who puts
    /// it back with [`put_back`](Self::put_back).
    pub(crate) fn taken() -> Self {
        Self {
            slot: Mutex::new(Slot {
                value: None,
                waiting: Vec::new(),
            }),
        }
    }

    /// Takes the value, or, if a holder has it, registers the task to be
    /// woken when it is put back. A task that polls several times while it
    /// waits is registered once.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.lock();
        match slot.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                // Several takers may wait (an old attempt's body still owned
                // by its connection): keep every waker, not only the latest,
                // and do not wake one another in turn.
                if !slot.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    slot.waiting.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Puts the value back and wakes every waiting taker (after the lock is
    /// released).
    pub(crate) fn put_back(&self, value: T) {
        let waiting = {
            let mut slot = self.slot.lock();
            slot.value = Some(value);
            std::mem::take(&mut slot.waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }
}

impl<T> fmt::Debug for HandOff<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot.lock();
        f.debug_struct("HandOff")
            .field("free", &slot.value.is_some())
            .field("waiting", &slot.waiting.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::poll_fn;

    #[tokio::test]
    async fn a_value_put_back_is_taken_at_once() {
        let handoff = HandOff::taken();
        handoff.put_back(7);
        assert_eq!(poll_fn(|cx| handoff.poll_take(cx)).await, 7);
        handoff.put_back(8);
        assert_eq!(poll_fn(|cx| handoff.poll_take(cx)).await, 8);
    }

    #[test]
    fn a_taker_waits_until_the_holder_puts_it_back() {
        let handoff = HandOff::taken();
        let mut taker = tokio_test::task::spawn(poll_fn(|cx| handoff.poll_take(cx)));
        assert!(taker.poll().is_pending(), "the first holder has it");
        assert!(taker.poll().is_pending());
        assert!(!taker.is_woken());
        assert!(
            format!("{handoff:?}").contains("waiting: 1"),
            "registered once: {handoff:?}"
        );
        handoff.put_back("body");
        assert!(taker.is_woken());
        assert_eq!(taker.poll(), Poll::Ready("body"));
    }

    #[test]
    fn every_waiting_taker_is_woken_and_one_takes_it() {
        let handoff = HandOff::taken();
        let mut a = tokio_test::task::spawn(poll_fn(|cx| handoff.poll_take(cx)));
        let mut b = tokio_test::task::spawn(poll_fn(|cx| handoff.poll_take(cx)));
        assert!(a.poll().is_pending());
        assert!(b.poll().is_pending());
        assert!(!a.is_woken() && !b.is_woken(), "waiting takers do not wake each other");
        handoff.put_back(1);
        assert!(a.is_woken() && b.is_woken());
        assert_eq!(a.poll(), Poll::Ready(1));
        assert!(b.poll().is_pending(), "a has it now");
        assert!(!b.is_woken());
        handoff.put_back(2);
        assert!(b.is_woken(), "released by a, b runs");
        assert_eq!(b.poll(), Poll::Ready(2));
    }

    #[test]
    fn a_waker_is_woken_outside_the_lock() {
        // A waker that takes the value from inside `wake` would deadlock if
        // `put_back` still held the lock.
        use std::sync::Arc;
        use std::task::Wake;

        struct TakeOnWake(Arc<HandOff<u8>>, Mutex<Option<u8>>);
        impl Wake for TakeOnWake {
            fn wake(self: Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                let waker = Waker::noop();
                let mut cx = Context::from_waker(waker);
                if let Poll::Ready(v) = self.0.poll_take(&mut cx) {
                    *self.1.lock() = Some(v);
                }
            }
        }

        let handoff = Arc::new(HandOff::taken());
        let taker = Arc::new(TakeOnWake(handoff.clone(), Mutex::new(None)));
        let waker = Waker::from(taker.clone());
        assert!(handoff.poll_take(&mut Context::from_waker(&waker)).is_pending());
        handoff.put_back(5);
        assert_eq!(*taker.1.lock(), Some(5));
    }
}
