//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_body::{BodyLimits, TrackResponse, track};
use palisade_core::error::{BoxError, CircuitOpen};
use pin_project_lite::pin_project;

use crate::shared::CallGuard;

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](crate::KeyedCircuitBreaker): the inner call
    /// with its [`CallGuard`], or a [`CircuitOpen`] refusal ready at once.
    ///
    /// When the inner call completes, the guard follows the response to its
    /// real end through [`palisade_body::track()`]: at once for non-http
    /// responses and errors, at the end of the body for http responses.
    /// Dropping the future before then records nothing and frees a probe slot.
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
                let guard = std::mem::replace(guard, CallGuard::SPENT);
                Poll::Ready(track(&*protocol, result, guard, BodyLimits::NONE).map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(match error.take() {
                Some(error) => Err(error.into()),
                None => Err(polled_after_completion()),
            }),
        }
    }
}

#[cold]
fn polled_after_completion() -> BoxError {
    "circuit breaker response future polled after completion".into()
}
