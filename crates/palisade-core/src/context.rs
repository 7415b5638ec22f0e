//! The deadline of the request being handled, carried in a tokio task-local.
//!
//! A server-side layer (`palisade_timeout::DeadlineServerLayer`) runs each
//! request's handler inside a scope that holds the request's deadline; every
//! Palisade layer on an outgoing call made from there reads it
//! ([`effective_deadline`]): the timeout layer bounds the call by it, retry
//! starts no attempt or backoff past it, the bulkhead queues no call past it.
//! A call's own deadline ([`CallOptions::deadline`](crate::options::CallOptions::deadline))
//! and the inherited one both apply: the earlier wins.
//!
//! It lives here, in the shared vocabulary, so that every layer sees it
//! without depending on the timeout crate (which re-exports
//! [`current_deadline`] and [`with_deadline`] unchanged).
//!
//! The scope follows the **future** that the server polls (the handler, and
//! for a streaming response the response body), not the thread or the task
//! tree: a task started with `tokio::spawn` from the handler does not inherit
//! it. Carry it by hand with [`current_deadline`] and [`with_deadline`]:
//!
//! ```
//! use palisade_core::options::Deadline;
//! use palisade_core::context::{current_deadline, with_deadline};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let deadline = Deadline::after(Duration::from_secs(1));
//! with_deadline(deadline, async {
//!     assert_eq!(current_deadline(), Some(deadline));
//!     // A spawned task starts without it...
//!     let parent = current_deadline();
//!     tokio::spawn(async move {
//!         assert_eq!(current_deadline(), None);
//!         // ...until the handler hands it over.
//!         with_deadline(parent.unwrap(), async {
//!             assert_eq!(current_deadline(), Some(deadline));
//!         })
//!         .await;
//!     })
//!     .await
//!     .unwrap();
//! })
//! .await;
//! assert_eq!(current_deadline(), None);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crate::options::Deadline;
use pin_project_lite::pin_project;

tokio::task_local! {
    static CURRENT: Option<Deadline>;
}

/// The deadline of the request whose handler is running, if a server-side
/// deadline layer or [`with_deadline`] set one around the current future.
#[inline]
pub fn current_deadline() -> Option<Deadline> {
    // Most processes never install a scope: then every layer's question costs
    // one relaxed load, not a thread-local access.
    if !SCOPES_USED.load(Ordering::Relaxed) {
        return None;
    }
    inherited()
}

/// The task-local's value, out of line: the common caller (no scope ever
/// installed) never gets here.
#[cold]
#[inline(never)]
fn inherited() -> Option<Deadline> {
    CURRENT.try_with(|deadline| *deadline).ok().flatten()
}

/// Whether a deadline scope was ever installed in this process. A thread that
/// is inside a scope installed it itself (the scope is set by the thread that
/// polls), so its own earlier store makes a relaxed load see `true` there.
static SCOPES_USED: AtomicBool = AtomicBool::new(false);

/// Runs `future` with `deadline` as its current deadline, or rather the
/// earlier of it and the deadline current **where the future is polled**: a
/// scope never extends its parent's, even when the future was built outside
/// the parent's scope and awaited inside it.
pub fn with_deadline<F: Future>(deadline: Deadline, future: F) -> WithDeadline<F> {
    scope(Some(deadline), future)
}

/// The deadline a call must respect: the earlier of its own (`own`, from its
/// call options) and the inherited [`current_deadline`].
#[inline]
pub fn effective_deadline(own: Option<Deadline>) -> Option<Deadline> {
    match (own, current_deadline()) {
        (Some(own), Some(inherited)) => Some(own.min(inherited)),
        (own, inherited) => own.or(inherited),
    }
}

/// Runs `f` with the earlier of `own` and the current deadline current.
/// Without a deadline of its own it installs no scope: whatever is current
/// stays current. (For layers that must call an inner service inside the
/// scope, as the server-side deadline layer does.)
#[inline]
pub fn in_scope<R>(own: Option<Deadline>, f: impl FnOnce() -> R) -> R {
    match own {
        None => f(),
        Some(own) => {
            if !SCOPES_USED.load(Ordering::Relaxed) {
                SCOPES_USED.store(true, Ordering::Relaxed);
            }
            let effective = match current_deadline() {
                Some(current) => current.min(own),
                None => own,
            };
            CURRENT.sync_scope(Some(effective), f)
        }
    }
}

/// Wraps `future` so that each of its polls runs [`in_scope`] of `deadline`
/// (no scope at all for `None`).
pub fn scope<F: Future>(deadline: Option<Deadline>, future: F) -> WithDeadline<F> {
    WithDeadline {
        inner: future,
        deadline,
    }
}

pin_project! {
    /// A future that runs with a current deadline. Made by [`with_deadline`].
    ///
    /// Each poll makes current the earlier of its own deadline and the one
    /// current around that poll, so nesting takes the minimum whatever the
    /// order in which the futures were built.
    #[must_use = "futures do nothing unless polled"]
    pub struct WithDeadline<F> {
        #[pin]
        inner: F,
        deadline: Option<Deadline>,
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        in_scope(*this.deadline, || inner.poll(cx))
    }
}

impl<F> std::fmt::Debug for WithDeadline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithDeadline")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
