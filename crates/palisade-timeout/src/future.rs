//! [`ResponseFuture`]: the response future of [`Timeout`](crate::Timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::classify::Classify;
use palisade_core::error::{BoxError, DeadlineExceeded, PolledAfterCompletion, TimedOut, TimeoutKind};
use palisade_core::event::{Event, EventKind, LayerName, Listeners};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::body::{NoBodyLimits, TrackBody};

/// Which limit the timer of a call stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// No timer: neither a timeout nor a deadline applies.
    None,
    /// The timeout of this kind and length.
    Timeout(TimeoutKind, Duration),
    /// The deadline, which left this much time when the call was sent.
    Deadline(Duration),
}

impl Limit {
    /// The time the call was given, if limited.
    #[inline]
    pub(crate) fn duration(self) -> Option<Duration> {
        match self {
            Limit::None => None,
            Limit::Timeout(_, limit) | Limit::Deadline(limit) => Some(limit),
        }
    }
}

/// An inner error this close to the limit is the limit firing: tokio's timers
/// have a resolution of one millisecond.
pub(crate) const SIMULTANEOUS: Duration = Duration::from_millis(1);

/// What the call wrote on its way down, which decides whether an inner error
/// at the limit is this layer's limit firing (see [`ResponseFuture`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wrote {
    /// This call inserted a `grpc-timeout` header with its limit (a tonic
    /// `Channel` enforces it and fails at the same moment as our timer).
    pub(crate) grpc_timeout: bool,
    /// This call wrote its own limit as the deadline in the request's
    /// `CallOptions` (a timeout layer below fails with `DeadlineExceeded`
    /// at the same moment as our timer).
    pub(crate) deadline: bool,
}

/// Where the future stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The inner call is running (or, with no inner future, refused before send).
    Running,
    /// The output was returned.
    Done,
}

pin_project! {
    /// The response future of [`Timeout`](crate::Timeout): the inner call,
    /// raced against a timer that exists only when a limit applies. The
    /// timer is armed (for the instant computed when the call was made) the
    /// first time the inner future is pending, so a call that completes at
    /// once never touches the timer wheel.
    ///
    /// When the timer fires first, the inner future is dropped at once (over
    /// HTTP/2 that resets the stream, so the server's handler is cancelled)
    /// and the call fails with [`TimedOut`] or, when the deadline was the
    /// tighter limit, [`DeadlineExceeded`].
    ///
    /// Inner errors pass through untouched, with two narrow exceptions, both
    /// only once the timer was armed (the inner call was pending at least
    /// once) and the limit is due (within the timer's one millisecond
    /// resolution), because the error then *is* this layer's limit enforced
    /// one level down:
    ///
    /// - this call wrote `grpc-timeout` and the inner service failed (a tonic
    ///   `Channel` enforces that header and fails with its own `Cancelled`
    ///   status at the same moment);
    /// - this call wrote its timeout as the deadline in the request's
    ///   `CallOptions` and the inner service failed with [`DeadlineExceeded`]
    ///   (a timeout layer below, bounded by that deadline).
    ///
    /// - this call wrote `grpc-timeout` and the peer answered a trailers-only
    ///   `DEADLINE_EXCEEDED` (a server that honours the header, as grpc-go
    ///   and grpcio do): the peer enforced this very limit, so the caller's
    ///   deadline is not held against it, and an attempt's timeout counts
    ///   as if this layer's timer had fired.
    ///
    /// Any of these is reported as this layer's [`TimedOut`] / [`DeadlineExceeded`]
    /// so that retry and breaker policies see which limit fired. Any other
    /// error (http or plain services, errors before the timer was armed,
    /// errors well before the limit) is returned as it came.
    ///
    /// A response is handed back as the inner service returned it, or, with
    /// body limits (`L` is [`BodyLimited`](crate::BodyLimited)), with its
    /// body wrapped by the protocol. Polled again after it returned its output,
    /// the future fails with [`PolledAfterCompletion`] (it never stays
    /// pending forever).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, P, L = NoBodyLimits> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        at: Option<Instant>,
        limit: Limit,
        wrote: Wrote,
        state: State,
        protocol: P,
        body: L,
        listeners: Listeners,
    }
}

impl<F, P, L> ResponseFuture<F, P, L> {
    #[inline]
    pub(crate) fn new(
        inner: F,
        at: Option<Instant>,
        limit: Limit,
        wrote: Wrote,
        protocol: P,
        body: L,
        listeners: Listeners,
    ) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            at,
            limit,
            wrote,
            state: State::Running,
            protocol,
            body,
            listeners,
        }
    }

    /// A call refused before it was sent: its deadline had passed.
    pub(crate) fn rejected(protocol: P, body: L) -> Self {
        Self {
            inner: None,
            sleep: None,
            at: None,
            limit: Limit::None,
            wrote: Wrote::default(),
            state: State::Running,
            protocol,
            body,
            listeners: Listeners::new(),
        }
    }
}

impl<F, P, L, Res, E> Future for ResponseFuture<F, P, L>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    P: Classify<Res, E>,
    L: TrackBody<P, Res, E>,
{
    type Output = Result<L::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if *this.state == State::Done {
            return Poll::Ready(Err(polled_after_completion()));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            *this.state = State::Done;
            return Poll::Ready(Err(DeadlineExceeded::before_send().into()));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            this.inner.set(None);
            *this.state = State::Done;
            let output = match result {
                // The peer enforced the `grpc-timeout` this call wrote and
                // answered `DEADLINE_EXCEEDED` as the limit fell due: that is
                // this layer's limit firing one hop away (see the type's docs).
                Ok(response)
                    if this.wrote.grpc_timeout
                        && this.sleep.is_some()
                        && this.at.is_some_and(|at| at <= Instant::now() + SIMULTANEOUS)
                        && this.protocol.is_deadline_response(&response) =>
                {
                    drop(response);
                    Err(expired(*this.limit, this.listeners, Duration::ZERO))
                }
                // As it came, or with its body bounded (decided by the type `L`).
                Ok(response) => Ok(this.body.track_body(this.protocol, response)),
                Err(error) => {
                    let error = error.into();
                    // The layer below enforced this very limit (see the type's docs).
                    let now = Instant::now();
                    let ours = this.sleep.is_some()
                        && this.at.is_some_and(|at| at <= now + SIMULTANEOUS)
                        && (this.wrote.grpc_timeout || (this.wrote.deadline && error.is::<DeadlineExceeded>()));
                    match *this.at {
                        // Late or not, as if this layer's own timer had fired.
                        Some(at) if ours => {
                            Err(expired(*this.limit, this.listeners, now.saturating_duration_since(at)))
                        }
                        _ => Err(error),
                    }
                }
            };
            this.sleep.set(None);
            return Poll::Ready(output);
        }
        let Some(at) = *this.at else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        let Some(sleep) = this.sleep.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Cancel the inner call now, not whenever the caller drops this future.
        this.inner.set(None);
        this.sleep.set(None);
        *this.state = State::Done;
        // A timer that fires far past its deadline measures the client's own
        // stall, not the peer (see `STALL_TOLERANCE` and the crate docs).
        let late = Instant::now().saturating_duration_since(at);
        Poll::Ready(Err(expired(*this.limit, this.listeners, late)))
    }
}

#[cold]
fn polled_after_completion() -> BoxError {
    PolledAfterCompletion::new(LayerName::Timeout).into()
}

#[cold]
fn expired(limit: Limit, listeners: &Listeners, late: Duration) -> BoxError {
    match limit {
        Limit::Timeout(kind, timeout) => {
            let error = TimedOut::fired_late(kind, timeout, late);
            if error.is_client_stall() {
                tracing::warn!(
                    target: "palisade",
                    layer = "timeout",
                    event = "client_stall",
                    kind = kind.as_str(),
                    limit_ms = timeout.as_millis() as u64,
                    late_ms = late.as_millis() as u64,
                    "timeout fired late: the client stalled; not counted against the peer"
                );
            }
            listeners.emit(&Event::new(
                LayerName::Timeout,
                EventKind::TimedOut {
                    kind: kind.as_str(),
                    limit: timeout,
                },
            ));
            #[cfg(feature = "metrics")]
            metrics::counter!("palisade_timeout_timed_out_total", "kind" => kind.as_str()).increment(1);
            error.into()
        }
        Limit::Deadline(budget) => {
            listeners.emit(&Event::new(
                LayerName::Timeout,
                EventKind::TimedOut {
                    kind: "deadline",
                    limit: budget,
                },
            ));
            #[cfg(feature = "metrics")]
            metrics::counter!("palisade_timeout_deadline_exceeded_total", "sent" => "true").increment(1);
            DeadlineExceeded::in_flight(budget).into()
        }
        // A timer is only created with a limit.
        Limit::None => DeadlineExceeded::before_send().into(),
    }
}

impl<F, P: fmt::Debug, L> fmt::Debug for ResponseFuture<F, P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("limit", &self.limit)
            .field("protocol", &self.protocol)
            .field("at", &self.at)
            .field("armed", &self.sleep.is_some())
            .field("wrote", &self.wrote)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use palisade_core::protocol::Plain;
    use std::pin::pin;

    fn assert_polled_after_completion(result: Option<Result<(), BoxError>>) {
        let error = result.expect("ready, never pending forever").unwrap_err();
        let typed = error.downcast_ref::<PolledAfterCompletion>().expect("the typed error");
        assert_eq!(typed.layer(), LayerName::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn polled_after_completion_fails_with_the_typed_error_on_every_path() {
        // Completed by the inner call.
        let inner = std::future::ready(Ok::<(), BoxError>(()));
        let mut future = pin!(ResponseFuture::new(
            inner,
            None,
            Limit::None,
            Wrote::default(),
            Plain,
            NoBodyLimits,
            Listeners::new()
        ));
        assert!((&mut future).await.is_ok());
        assert_polled_after_completion(future.as_mut().now_or_never());

        // Completed by the timer.
        let at = Instant::now() + Duration::from_millis(5);
        let limit = Limit::Timeout(TimeoutKind::Attempt, Duration::from_millis(5));
        let inner = std::future::pending::<Result<(), BoxError>>();
        let mut future = pin!(ResponseFuture::new(
            inner,
            Some(at),
            limit,
            Wrote::default(),
            Plain,
            NoBodyLimits,
            Listeners::new()
        ));
        assert!((&mut future).await.unwrap_err().is::<TimedOut>());
        assert_polled_after_completion(future.as_mut().now_or_never());

        // Refused before send.
        let mut future = pin!(ResponseFuture::<std::future::Ready<Result<(), BoxError>>, _>::rejected(
            Plain,
            NoBodyLimits
        ));
        assert!((&mut future).await.unwrap_err().is::<DeadlineExceeded>());
        assert_polled_after_completion(future.as_mut().now_or_never());
    }
}
