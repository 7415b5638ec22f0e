//! The response future of a bulkhead.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_body::{BodyLimits, TrackResponse, track};
use palisade_core::BoxError;
use palisade_core::classify::Outcome;
use palisade_core::context;
use palisade_core::error::{BulkheadRejection, DeadlineExceeded, PolledAfterCompletion};
use palisade_core::event::LayerName;
use palisade_core::options::CallOptions;
use palisade_core::protocol::Inspect;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::pool::Acquire;
use crate::shared::{BulkheadPermit, Limiter, RunningPermit, Waiter};

pin_project! {
    /// The future returned by [`Bulkhead`](crate::Bulkhead) and
    /// [`KeyedBulkhead`](crate::KeyedBulkhead).
    ///
    /// Admitted at once, it only drives the inner call. Queued, it owns a
    /// clone of the inner service and the request, waits for its turn (at
    /// most `max_wait`, and never past the call's deadline), then drives the
    /// service's `poll_ready` and `call`. Dropping it while queued leaves the
    /// queue at once. Dropped while the inner call runs, the call counts for
    /// an adaptive limit as the protocol's
    /// [`call_dropped`](palisade_core::classify::AbandonPolicy::call_dropped)
    /// says (by default not at all; the permit's guard does it, so the future
    /// itself has no drop logic). Polled again after it completed, it fails
    /// with [`PolledAfterCompletion`].
    pub struct ResponseFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, S::Future>,
        protocol: P,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Calling {
            #[pin]
            future: F,
            permit: RunningPermit,
        },
        // Boxed: the queued path is the slow path, and keeping its fields out
        // of line keeps the admitted-at-once future small.
        Waiting {
            queued: Pin<Box<Queued<S, Req>>>,
        },
        Rejected {
            error: Option<BoxError>,
        },
        Done,
    }
}

/// Which limit a queued call's timer stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitLimit {
    /// The bulkhead's `max_wait`.
    MaxWait(Duration),
    /// The call's deadline, which falls before `max_wait` runs out.
    Deadline,
}

pin_project! {
    #[project = QueuedProj]
    struct Queued<S, Req> {
        waiter: Option<Waiter>,
        permit: Option<BulkheadPermit>,
        service: Option<S>,
        request: Option<Req>,
        // The wait's bound (`max_wait` or the deadline, whichever is first),
        // when there is one: no timer otherwise.
        #[pin]
        sleep: Option<Sleep>,
        limit: WaitLimit,
        // The call's deadline (its own or the inherited one): it also bounds
        // the wait for the inner service's readiness once a permit is held.
        deadline: Option<Instant>,
        // When the call was queued, for the error that says how long it waited.
        since: Instant,
        // What the call counts as if its future is dropped while it runs
        // (handed to the permit when the inner call starts).
        cancelled: Outcome,
    }
}

impl<S, Req, P> fmt::Debug for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Rejected { .. } => "rejected",
            State::Waiting { queued } if queued.permit.is_none() => "queued",
            State::Waiting { .. } => "admitted, inner not ready",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

/// Where a queued call waited when its deadline passed (in the error's message).
const IN_QUEUE: &str = "in the bulkhead queue";
/// Where a call holding a permit waited when its deadline passed.
const AWAITING_READY: &str = "in the bulkhead for the inner service to be ready";

/// When a queued call stops waiting, and why: at `max_wait`, or at the call's
/// deadline if that comes first. `None` when neither applies (no timer).
fn wait_bound(max_wait: Option<Duration>, deadline: Option<Instant>) -> Option<(Instant, WaitLimit)> {
    let now = Instant::now();
    // A `max_wait` too long to add to now is the same as none (the far future).
    let max_wait = max_wait.map(|wait| (palisade_core::time::after(now, wait), WaitLimit::MaxWait(wait)));
    match (max_wait, deadline) {
        (Some((at, limit)), Some(deadline)) if at < deadline => Some((at, limit)),
        (_, Some(deadline)) => Some((deadline, WaitLimit::Deadline)),
        (max_wait, None) => max_wait,
    }
}

/// The slow path of [`admit`], out of line so that the free-slot path stays
/// small: queues or rejects the call (`Ok`), or hands the request back when a
/// slot turned out to be free after all (`Err`).
#[cold]
#[inline(never)]
fn admit_slow<S, Req, P>(
    shared: &Arc<Limiter>,
    inner: &mut S,
    request: Req,
    protocol: P,
    cancelled: Outcome,
) -> Result<ResponseFuture<S, Req, P>, (Req, P)>
where
    S: Service<Req> + Clone,
    P: Inspect<Req>,
{
    match shared.pool.acquire() {
        Acquire::Granted => Err((request, protocol)),
        Acquire::Full => {
            let error = shared.reject(BulkheadRejection::QueueFull);
            Ok(ResponseFuture {
                state: State::Rejected {
                    error: Some(error.into()),
                },
                protocol,
            })
        }
        Acquire::Queued(key) => {
            // The queue place is owned by a guard before anything that can
            // panic (a user `Clone`, a timer on a runtime without one):
            // unwinding then gives the place (or a permit granted to it) back.
            let waiter = Waiter::new(shared.clone(), key);
            // `inner` was made ready for this call; the call happens later,
            // so the ready service goes into the future and a clone stays
            // behind (unready, to be polled again by the caller).
            let clone = inner.clone();
            let service = mem::replace(inner, clone);
            // The call's own deadline, or (if earlier) the one inherited from
            // the request being handled.
            let deadline = context::effective_deadline(protocol.call_options(&request).and_then(CallOptions::deadline))
                .map(|d| d.instant());
            let (sleep, limit) = match wait_bound(shared.max_wait, deadline) {
                Some((at, limit)) => (Some(tokio::time::sleep_until(at)), limit),
                None => (None, WaitLimit::Deadline),
            };
            Ok(ResponseFuture {
                state: State::Waiting {
                    queued: Box::pin(Queued {
                        waiter: Some(waiter),
                        permit: None,
                        service: Some(service),
                        request: Some(request),
                        sleep,
                        limit,
                        deadline,
                        since: Instant::now(),
                        cancelled,
                    }),
                },
                protocol,
            })
        }
    }
}

/// Admits `request` to `shared`'s bulkhead: calls `inner` now when a slot is
/// free, queues a clone of the (ready) service otherwise, or rejects.
/// `cancelled` is what the call counts as if its future is dropped while the
/// inner call runs.
#[inline(always)]
pub(crate) fn admit<S, Req, P>(
    shared: &Arc<Limiter>,
    inner: &mut S,
    request: Req,
    protocol: P,
    cancelled: Outcome,
) -> ResponseFuture<S, Req, P>
where
    S: Service<Req> + Clone,
    P: Inspect<Req>,
{
    let (request, protocol) = if shared.pool.try_acquire() {
        (request, protocol)
    } else {
        match admit_slow(shared, inner, request, protocol, cancelled) {
            Ok(future) => return future,
            Err(granted) => granted,
        }
    };
    // The permit exists before the inner call: if `call` panics, unwinding
    // drops it and the slot comes back.
    let permit = RunningPermit::new(BulkheadPermit::new(shared.clone()), cancelled);
    let future = inner.call(request);
    ResponseFuture {
        state: State::Calling { future, permit },
        protocol,
    }
}

#[cold]
fn polled_after_completion() -> BoxError {
    PolledAfterCompletion::new(LayerName::Bulkhead).into()
}

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: TrackResponse<S::Response, S::Error, BulkheadPermit>,
{
    type Output = Result<P::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future, permit } => {
                    let result = ready!(future.poll(cx));
                    // An adaptive limit measures latency to here, the head (or
                    // the error), not to the end of a long stream.
                    let Some(permit) = permit.take_at_head() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let tracked = track(&*this.protocol, result, permit, BodyLimits::NONE);
                    this.state.set(State::Done);
                    return Poll::Ready(tracked.map_err(Into::into));
                }
                StateProj::Waiting { queued } => {
                    let QueuedProj {
                        waiter,
                        permit,
                        service,
                        request,
                        mut sleep,
                        limit,
                        deadline,
                        since,
                        cancelled,
                    } = queued.as_mut().project();
                    if permit.is_none() {
                        let Some(w) = waiter.as_mut() else {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(polled_after_completion()));
                        };
                        match w.poll(cx) {
                            Poll::Ready(p) => *permit = Some(p),
                            Poll::Pending => {
                                let Some(sleep) = sleep.as_mut().as_pin_mut() else {
                                    return Poll::Pending;
                                };
                                ready!(sleep.poll(cx));
                                let granted = w.give_up();
                                let error: BoxError = match *limit {
                                    WaitLimit::MaxWait(waited) => match granted {
                                        // The permit arrived as the wait ran out: use it.
                                        Some(p) => {
                                            *permit = Some(p);
                                            *waiter = None;
                                            continue;
                                        }
                                        None => w.shared().reject(BulkheadRejection::WaitTimedOut(waited)).into(),
                                    },
                                    // Past the deadline the call cannot be sent: a
                                    // permit that arrived just now is passed on.
                                    WaitLimit::Deadline => {
                                        drop(granted);
                                        w.shared().deadline_passed_in_queue();
                                        DeadlineExceeded::while_waiting(IN_QUEUE, since.elapsed()).into()
                                    }
                                };
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                        }
                        *waiter = None;
                        // From here only the deadline bounds the wait (for
                        // the inner service's readiness): `max_wait` is
                        // about the queue.
                        match *deadline {
                            Some(at) if *limit != WaitLimit::Deadline => {
                                if let Some(sleep) = sleep.as_mut().as_pin_mut() {
                                    sleep.reset(at);
                                } else {
                                    sleep.set(Some(tokio::time::sleep_until(at)));
                                }
                                *limit = WaitLimit::Deadline;
                            }
                            Some(_) => {}
                            None => sleep.set(None),
                        }
                    }
                    let Some(svc) = service.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    match svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => {
                            // The permit is dropped with the state: the slot comes back.
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                        Poll::Pending => {
                            // Holding a permit, the call must not wait for the
                            // inner service past its deadline.
                            let Some(sleep) = sleep.as_mut().as_pin_mut() else {
                                return Poll::Pending;
                            };
                            ready!(sleep.poll(cx));
                            if let Some(p) = permit.as_ref() {
                                p.shared().deadline_passed_awaiting_ready();
                            }
                            let error = DeadlineExceeded::while_waiting(AWAITING_READY, since.elapsed());
                            // The permit goes with the state: the slot comes back.
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                    }
                    let (Some(mut svc), Some(req), Some(p)) = (service.take(), request.take(), permit.take()) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let permit = RunningPermit::new(p, *cancelled);
                    // As above: a panic in `call` drops the permit while unwinding.
                    let future = svc.call(req);
                    this.state.set(State::Calling { future, permit });
                }
                StateProj::Rejected { error } => {
                    let error = error.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error.unwrap_or_else(polled_after_completion)));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(polled_after_completion()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_earlier_of_max_wait_and_the_deadline_bounds_the_wait() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wait_bound(None, None), None, "no limit, no timer");
        assert_eq!(
            wait_bound(Some(ms(50)), None),
            Some((now + ms(50), WaitLimit::MaxWait(ms(50))))
        );
        assert_eq!(
            wait_bound(None, Some(now + ms(20))),
            Some((now + ms(20), WaitLimit::Deadline))
        );
        assert_eq!(
            wait_bound(Some(ms(50)), Some(now + ms(20))),
            Some((now + ms(20), WaitLimit::Deadline))
        );
        assert_eq!(
            wait_bound(Some(ms(10)), Some(now + ms(20))),
            Some((now + ms(10), WaitLimit::MaxWait(ms(10))))
        );
        // A tie is the deadline's: the call could not be sent anyway.
        assert_eq!(
            wait_bound(Some(ms(20)), Some(now + ms(20))),
            Some((now + ms(20), WaitLimit::Deadline))
        );
        assert_eq!(
            wait_bound(Some(Duration::MAX), None).map(|(_, l)| l),
            Some(WaitLimit::MaxWait(Duration::MAX))
        );
    }
}
