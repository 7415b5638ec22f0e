//! [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::retry::RetryDecision;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::Shared;
use crate::policy::{Predicate, RetryOn, RetryProtocol};
use crate::pushback::Pushback;

pin_project! {
    /// The response future of [`Retry`](crate::Retry): the current attempt,
    /// the backoff sleep, or waiting for the service to be ready again.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, P, R, Req>
    where
        P: RetryProtocol<Req>,
        S: Service<P::Attempt>,
    {
        #[pin]
        state: State<S::Future>,
        service: Option<S>,
        kept: Option<P::Kept>,
        next: Option<P::Attempt>,
        last: Option<Result<S::Response, BoxError>>,
        shared: Arc<Shared<P, R>>,
        attempts: u32,
        max_attempts: u32,
        deadline: Option<Instant>,
        backoff: Option<Backoff>,
        previous_delay: Option<Duration>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // The backoff sleep; or, when `until_deadline`, the call's deadline
        // while the service is not ready for the next attempt.
        Waiting { #[pin] sleep: Sleep, until_deadline: bool },
        Ready,
    }
}

impl<S, P, R, Req> ResponseFuture<S, P, R, Req>
where
    P: RetryProtocol<Req>,
    S: Service<P::Attempt>,
{
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        kept: Option<P::Kept>,
        shared: Arc<Shared<P, R>>,
        retries: u32,
        deadline: Option<Instant>,
        backoff: Option<Backoff>,
    ) -> Self {
        Self {
            state: State::Calling { future },
            service,
            kept,
            next: None,
            last: None,
            shared,
            attempts: 1,
            max_attempts: retries.saturating_add(1),
            deadline,
            backoff,
            previous_delay: None,
        }
    }
}

impl<S, P, R, Req> fmt::Debug for ResponseFuture<S, P, R, Req>
where
    P: RetryProtocol<Req>,
    S: Service<P::Attempt>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

fn emit_budget_exhausted(listeners: &palisade_core::event::Listeners) {
    listeners.emit(&Event::new(LayerName::Retry, EventKind::BudgetExhausted));
    #[cfg(feature = "metrics")]
    metrics::counter!("palisade_retry_budget_exhausted_total").increment(1);
}

impl<S, P, R, Req> Future for ResponseFuture<S, P, R, Req>
where
    P: RetryProtocol<Req> + RetryOn<P::View, S::Response>,
    R: Predicate<P, P::View, S::Response>,
    S: Service<P::Attempt>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let protocol = &shared.protocol;
                    let Some(kept) = this.kept.as_mut() else {
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    };
                    let settings = &shared.settings;
                    let decision = shared.predicate.decide(protocol, protocol.view(kept), &result);
                    let retryable = decision != RetryDecision::DoNotRetry;
                    if let Some(throttle) = &settings.throttle {
                        if retryable {
                            throttle.on_failure();
                        } else if protocol.is_success(&result) {
                            // Only a real success refills: not an HTTP 500 or a
                            // trailers-only gRPC error that is not retried.
                            throttle.on_success();
                        }
                    }
                    if !retryable || *this.attempts >= *this.max_attempts {
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    }
                    let decision = match (decision, protocol.pushback(&result)) {
                        (RetryDecision::Retry, Some(Pushback::After(delay))) => RetryDecision::RetryAfter(delay),
                        (RetryDecision::Retry, Some(Pushback::Stop)) => RetryDecision::DoNotRetry,
                        (decision, _) => decision,
                    };
                    let delay = match decision {
                        RetryDecision::DoNotRetry => {
                            return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                        }
                        RetryDecision::RetryAfter(delay) if delay > settings.max_pushback => {
                            return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                        }
                        RetryDecision::RetryAfter(delay) => delay,
                        RetryDecision::Retry => {
                            let backoff = this.backoff.as_ref().unwrap_or(&settings.backoff);
                            backoff.delay(*this.attempts - 1, *this.previous_delay)
                        }
                    };
                    let now = Instant::now();
                    if let Some(deadline) = *this.deadline
                        && now.checked_add(delay).is_none_or(|at| at >= deadline)
                    {
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    }
                    // The next attempt carries the peers the earlier ones used.
                    let peer = protocol.peer(&result);
                    if let Some(peer) = &peer {
                        protocol.record_peer(kept, peer.clone());
                    }
                    if !protocol.can_retry(kept) {
                        not_replayable(*this.attempts);
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    }
                    // The budget and the throttle before building the attempt.
                    if settings.throttle.as_ref().is_some_and(|t| !t.allows_retry())
                        || settings.budget.as_ref().is_some_and(|b| !b.withdraw())
                    {
                        emit_budget_exhausted(&settings.listeners);
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    }
                    let Some(next) = protocol.next_attempt(kept) else {
                        not_replayable(*this.attempts);
                        return Poll::Ready(finish::<P::View, _, _>(protocol, result, *this.attempts));
                    };
                    settings.listeners.emit(
                        &Event::new(
                            LayerName::Retry,
                            EventKind::Retry {
                                attempt: *this.attempts,
                                delay,
                                reason: if result.is_ok() {
                                    "retryable response"
                                } else {
                                    "retryable error"
                                },
                            },
                        )
                        .peer(peer.as_ref()),
                    );
                    #[cfg(feature = "metrics")]
                    metrics::counter!("palisade_retry_retries_total").increment(1);
                    *this.next = Some(next);
                    *this.last = Some(result);
                    *this.previous_delay = Some(delay);
                    if delay.is_zero() {
                        this.state.set(State::Ready);
                    } else {
                        this.state.set(State::Waiting {
                            sleep: tokio::time::sleep(delay),
                            until_deadline: false,
                        });
                    }
                    continue;
                }
                StateProj::Waiting {
                    mut sleep,
                    until_deadline,
                } => {
                    if *until_deadline {
                        if sleep.poll(cx).is_ready() {
                            // The deadline passed while the service was not
                            // ready: the last attempt's result stands.
                            return Poll::Ready(this.finish_last());
                        }
                    } else {
                        ready!(sleep.as_mut().poll(cx));
                        match *this.deadline {
                            // Reuse the sleep to wake at the deadline should
                            // the service not be ready in time.
                            Some(deadline) => {
                                sleep.as_mut().reset(deadline);
                                *until_deadline = true;
                                if sleep.poll(cx).is_ready() {
                                    return Poll::Ready(this.finish_last());
                                }
                            }
                            None => this.state.set(State::Ready),
                        }
                    }
                }
                StateProj::Ready => {}
            }
            // Between attempts: wait for the service, then send the next one.
            let deadline_passed = this.deadline.is_some_and(|d| Instant::now() >= d);
            let shared = &**this.shared;
            // The replay buffer may have been lost since the retry was
            // decided (the previous attempt's body outgrew the cap or
            // failed): then the last result stands.
            let can_retry = this.kept.as_ref().is_some_and(|k| shared.protocol.can_retry(k));
            if deadline_passed || !can_retry || this.next.is_none() {
                if !can_retry {
                    not_replayable(*this.attempts);
                }
                return Poll::Ready(this.finish_last());
            }
            let Some(service) = this.service.as_mut() else {
                return Poll::Ready(this.finish_last());
            };
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {
                    let armed = matches!(this.state.as_ref().get_ref(), State::Waiting { .. });
                    if let (false, Some(deadline)) = (armed, *this.deadline) {
                        // Nothing else would wake this call at its deadline.
                        this.state.set(State::Waiting {
                            sleep: tokio::time::sleep_until(deadline),
                            until_deadline: true,
                        });
                        continue;
                    }
                    return Poll::Pending;
                }
            }
            if let Some(next) = this.next.take() {
                *this.last = None;
                *this.attempts += 1;
                let future = service.call(next);
                this.state.set(State::Calling { future });
            }
        }
    }
}

impl<S, P, R, Req> ResponseFutureProj<'_, S, P, R, Req>
where
    P: RetryProtocol<Req> + RetryOn<P::View, S::Response>,
    S: Service<P::Attempt>,
{
    /// The last attempt's result, untouched, as the call's.
    fn finish_last(&mut self) -> Result<S::Response, BoxError> {
        let last = self.last.take().unwrap_or_else(|| Err("retry state lost".into()));
        finish::<P::View, _, _>(&self.shared.protocol, last, *self.attempts)
    }
}

fn not_replayable(attempt: u32) {
    tracing::debug!(
        target: "palisade",
        layer = "retry",
        event = "not_replayable",
        attempt,
        reason = "request body not replayable",
        "not retrying"
    );
}

/// Marks the final response and reports the number of attempts.
#[inline]
fn finish<V, Res, P>(protocol: &P, mut result: Result<Res, BoxError>, attempts: u32) -> Result<Res, BoxError>
where
    P: RetryOn<V, Res>,
{
    if let Ok(response) = &mut result {
        protocol.finish(response, attempts);
    }
    if attempts > 1 {
        tracing::debug!(
            target: "palisade",
            layer = "retry",
            event = "attempts",
            attempts,
            outcome = if result.is_ok() { "response" } else { "error" },
            "call finished after retries"
        );
    }
    result
}
