//! The response future of a bulkhead.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_body::{BodyLimits, TrackResponse, track};
use palisade_core::BoxError;
use palisade_core::error::BulkheadRejection;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::shared::{BulkheadPermit, Shared, Waiter};
use crate::state::Acquire;

pin_project! {
    /// The future returned by [`Bulkhead`](crate::Bulkhead) and
    /// [`KeyedBulkhead`](crate::KeyedBulkhead).
    ///
    /// Admitted at once, it only drives the inner call. Queued, it owns a
    /// clone of the inner service and the request, waits for its turn (at
    /// most `max_wait`), then drives the service's `poll_ready` and `call`.
    /// Dropping it while queued leaves the queue at once.
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
            permit: Option<BulkheadPermit>,
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

pin_project! {
    #[project = QueuedProj]
    struct Queued<S, Req> {
        waiter: Option<Waiter>,
        permit: Option<BulkheadPermit>,
        service: Option<S>,
        request: Option<Req>,
        #[pin]
        sleep: Option<Sleep>,
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

/// The slow path of [`admit`], out of line so that the free-slot path stays
/// small: queues or rejects the call (`Ok`), or hands the request back when a
/// slot turned out to be free after all (`Err`).
#[cold]
#[inline(never)]
fn admit_slow<S, Req, P>(
    shared: &Arc<Shared>,
    inner: &mut S,
    request: Req,
    protocol: P,
) -> Result<ResponseFuture<S, Req, P>, (Req, P)>
where
    S: Service<Req> + Clone,
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
            let sleep = shared.max_wait.map(tokio::time::sleep);
            Ok(ResponseFuture {
                state: State::Waiting {
                    queued: Box::pin(Queued {
                        waiter: Some(waiter),
                        permit: None,
                        service: Some(service),
                        request: Some(request),
                        sleep,
                    }),
                },
                protocol,
            })
        }
    }
}

/// Admits `request` to `shared`'s bulkhead: calls `inner` now when a slot is
/// free, queues a clone of the (ready) service otherwise, or rejects.
#[inline]
pub(crate) fn admit<S, Req, P>(
    shared: &Arc<Shared>,
    inner: &mut S,
    request: Req,
    protocol: P,
) -> ResponseFuture<S, Req, P>
where
    S: Service<Req> + Clone,
{
    let (request, protocol) = if shared.pool.try_acquire() {
        (request, protocol)
    } else {
        match admit_slow(shared, inner, request, protocol) {
            Ok(future) => return future,
            Err(granted) => granted,
        }
    };
    // The permit exists before the inner call: if `call` panics, unwinding
    // drops it and the slot comes back.
    let permit = BulkheadPermit::new(shared.clone());
    let future = inner.call(request);
    ResponseFuture {
        state: State::Calling {
            future,
            permit: Some(permit),
        },
        protocol,
    }
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
                    let Some(permit) = permit.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("bulkhead response future polled after completion".into()));
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
                        sleep,
                    } = queued.as_mut().project();
                    if permit.is_none() {
                        let Some(w) = waiter.as_mut() else {
                            this.state.set(State::Done);
                            return Poll::Ready(Err("bulkhead response future polled after completion".into()));
                        };
                        match w.poll(cx) {
                            Poll::Ready(p) => *permit = Some(p),
                            Poll::Pending => {
                                let Some(sleep) = sleep.as_pin_mut() else {
                                    return Poll::Pending;
                                };
                                ready!(sleep.poll(cx));
                                match w.give_up() {
                                    // The permit arrived as the wait ran out: use it.
                                    Some(p) => *permit = Some(p),
                                    None => {
                                        let shared = w.shared();
                                        let waited = shared.max_wait.unwrap_or_default();
                                        let error = shared.reject(BulkheadRejection::WaitTimedOut(waited));
                                        this.state.set(State::Done);
                                        return Poll::Ready(Err(error.into()));
                                    }
                                }
                            }
                        }
                        *waiter = None;
                    }
                    let Some(svc) = service.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("bulkhead response future polled after completion".into()));
                    };
                    if let Err(error) = ready!(svc.poll_ready(cx)) {
                        // The permit is dropped with the state: the slot comes back.
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let (Some(mut svc), Some(req), Some(p)) = (service.take(), request.take(), permit.take()) else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err("bulkhead response future polled after completion".into()));
                    };
                    // As above: a panic in `call` drops `p` while unwinding.
                    let future = svc.call(req);
                    this.state.set(State::Calling {
                        future,
                        permit: Some(p),
                    });
                }
                StateProj::Rejected { error } => {
                    let error = error.take();
                    this.state.set(State::Done);
                    return Poll::Ready(Err(
                        error.unwrap_or_else(|| "bulkhead response future polled after completion".into())
                    ));
                }
                StateProj::Done => {
                    return Poll::Ready(Err("bulkhead response future polled after completion".into()));
                }
            }
        }
    }
}
