//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_body::{BodyLimits, Settle, TrackResponse, track};
use palisade_core::classify::{Outcome, ProbeVerdict, Verdict};
use palisade_core::error::{BoxError, CircuitOpen, PolledAfterCompletion};
use palisade_core::event::LayerName;
use pin_project_lite::pin_project;

use crate::shared::CallGuard;

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker): the inner call
    /// with its [`CallGuard`], or a [`CircuitOpen`] refusal ready at once.
    ///
    /// When the inner call completes, the guard follows the response to its
    /// real end through [`palisade_body::track()`]: at once for non-http
    /// responses and errors, at the end of the body for http responses
    /// (what a body dropped before its end means is the protocol's
    /// [`AbandonPolicy`](palisade_core::classify::AbandonPolicy)). A half-open
    /// probe too, except that one whose head was healthy and whose body still
    /// streams at `probe_timeout` counts as a success then
    /// ([`ProbeVerdict::AtEnd`], the default); with
    /// [`AtHead`](ProbeVerdict::AtHead) it is judged at its head. Dropping the
    /// future before the response counts as the policy's
    /// [`call_dropped`](palisade_core::classify::AbandonPolicy::call_dropped)
    /// (by default nothing; the guard's `Drop` does it, so the future has no
    /// drop logic of its own) and frees a probe slot. Polled again after it
    /// completed, it fails with [`PolledAfterCompletion`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, P> {
        #[pin]
        kind: Kind<F, P>,
    }

}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, P> {
        Called {
            #[pin]
            future: F,
            guard: CallGuard,
            protocol: P,
        },
        Rejected {
            error: Option<CircuitOpen>,
        },
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(crate) fn called(future: F, guard: CallGuard, protocol: P) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard,
                protocol,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, P, Res, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    P: TrackResponse<Res, E, CallGuard>,
{
    type Output = Result<P::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                guard,
                protocol,
            } => {
                if guard.is_spent() {
                    return Poll::Ready(Err(polled_after_completion()));
                }
                let result = ready!(future.poll(cx));
                let mut guard = std::mem::replace(guard, CallGuard::SPENT);
                guard.response_arrived();
                if guard.is_probe() {
                    return Poll::Ready(track_probe(&*protocol, result, guard));
                }
                Poll::Ready(track(&*protocol, result, guard, BodyLimits::NONE).map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(match error.take() {
                Some(error) => Err(error.into()),
                None => Err(polled_after_completion()),
            }),
        }
    }
}

/// Settles a half-open probe. With [`ProbeVerdict::AtEnd`] (the default) a
/// probe is judged at the end of its stream like any call (a failure known
/// from the head at once: it cannot turn into a success), except that a
/// probe whose head was healthy (a success known from the head, or a verdict
/// that waits for the trailers) and whose body still streams when the
/// breaker's `probe_timeout` passes counts as a success then: the guard is
/// marked so. With [`ProbeVerdict::AtHead`] a head that is not a failure is
/// the probe's success at once, and the body goes on without the guard.
/// Errors are settled at once either way.
#[cold]
#[inline(never)]
fn track_probe<P, Res, E>(protocol: &P, result: Result<Res, E>, mut guard: CallGuard) -> Result<P::Response, BoxError>
where
    E: Into<BoxError>,
    P: TrackResponse<Res, E, CallGuard>,
{
    let at_head = matches!(protocol.abandon_policy().probe_verdict(), ProbeVerdict::AtHead);
    match result {
        Ok(response) => {
            let verdict = protocol.classify_response(&response);
            let healthy = matches!(verdict, Verdict::Now(Outcome::Success) | Verdict::AtEndOfStream(_));
            if at_head {
                let outcome = match &verdict {
                    Verdict::Now(outcome) => *outcome,
                    Verdict::AtEndOfStream(_) => Outcome::Success,
                };
                tracing::debug!(
                    target: "palisade",
                    layer = "circuit_breaker",
                    event = "probe_judged_at_head",
                    outcome = outcome.as_str(),
                    "a probe's response head decided it"
                );
                guard.settle(outcome);
                return Ok(protocol.track_response(response, verdict, CallGuard::SPENT, BodyLimits::NONE));
            }
            if let Verdict::Now(Outcome::Failure) = verdict {
                // A failure known from the head cannot turn into a success:
                // the breaker reopens now, not when the body is done.
                guard.settle(Outcome::Failure);
                return Ok(protocol.track_response(response, verdict, CallGuard::SPENT, BodyLimits::NONE));
            }
            if healthy {
                guard.mark_streaming();
            }
            Ok(protocol.track_response(response, verdict, guard, BodyLimits::NONE))
        }
        result => track(protocol, result, guard, BodyLimits::NONE).map_err(Into::into),
    }
}

#[cold]
fn polled_after_completion() -> BoxError {
    PolledAfterCompletion::new(LayerName::CircuitBreaker).into()
}
