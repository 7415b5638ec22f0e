//! [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::event::{Event, EventKind, LayerName, Listeners};
use palisade_core::retry::RetryDecision;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::CallPolicy;
use crate::policy::{Predicate, RetryOn, RetryProtocol};
use crate::pushback::Pushback;

pin_project! {
    /// The response future of [`Retry`](crate::Retry): the current attempt,
    /// the backoff sleep, or waiting for the service to be ready again.
    ///
    /// What only a retry needs (the backoff sleep, the next attempt, the
    /// result that stands should it not be sent) is allocated at the call's
    /// first retry: a call that needs none has a small future and never
    /// allocates.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, P, R, Req>
    where
        P: RetryProtocol<Req>,
        S: Service<P::Attempt>,
    {
        #[pin]
        attempt: Attempt<S::Future>,
        service: Option<S>,
        kept: Option<P::Kept>,
        attempts: u32,
        max_attempts: u32,
        deadline: Option<Instant>,
        // Last, so that their out-of-line drops run after every other field's.
        retry: RetryBox<Retrying<P::Attempt, S::Response>>,
        policy: CallPolicy<P, R>,
    }
}

pin_project! {
    #[project = AttemptProj]
    enum Attempt<F> {
        // The first attempt is told apart from the later ones so that the
        // success path knows its attempt count at compile time.
        First { #[pin] future: F },
        Retry { #[pin] future: F },
        Between,
    }
}

pin_project! {
    /// The state between attempts, boxed at the first retry and reused by the
    /// later ones.
    struct Retrying<A, Res> {
        // Armed for the backoff or the call's deadline, as `wait` says.
        #[pin]
        sleep: Option<Sleep>,
        wait: Wait,
        next: Option<A>,
        last: Option<Result<Res, BoxError>>,
        previous_delay: Option<Duration>,
    }
}

/// The boxed retry state, dropped out of line: a call that never retried
/// then drops its future inline, and the compiler can see through it.
struct RetryBox<T>(Option<Pin<Box<T>>>);

impl<T> Drop for RetryBox<T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(retry) = self.0.take() {
            drop_retry(retry);
        }
    }
}

#[inline(never)]
fn drop_retry<T>(retry: Pin<Box<T>>) {
    drop(retry);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The sleep is the backoff before the next attempt.
    Backoff,
    /// The sleep is the call's deadline, while the service is not ready.
    Deadline,
    /// No sleep is armed.
    Unarmed,
}

impl<S, P, R, Req> ResponseFuture<S, P, R, Req>
where
    P: RetryProtocol<Req>,
    S: Service<P::Attempt>,
{
    #[inline]
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        kept: Option<P::Kept>,
        policy: CallPolicy<P, R>,
        retries: u32,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            attempt: Attempt::First { future },
            retry: RetryBox(None),
            service,
            kept,
            policy,
            attempts: 1,
            max_attempts: retries.saturating_add(1),
            deadline,
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

/// Traces `event`, and hands it to the listeners when the layer has any.
fn emit(listeners: Option<&Listeners>, event: &Event<'_>) {
    match listeners {
        Some(listeners) => listeners.emit(event),
        None => event.trace(),
    }
}

fn emit_budget_exhausted(listeners: Option<&Listeners>) {
    emit(listeners, &Event::new(LayerName::Retry, EventKind::BudgetExhausted));
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

    // Small and inlined: a first attempt that needs no retry is decided
    // here; retries (planning, waiting, later attempts) are out of line. None
    // of the layer's own calls on this path can unwind while the future is
    // alive, so the compiler can keep the whole future in registers.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let AttemptProj::First { future } = this.attempt.as_mut().project() {
            let result = ready!(future.poll(cx)).map_err(Into::into);
            if let Some(output) = this.on_result(result, 1) {
                return Poll::Ready(output);
            }
        }
        this.retrying(cx)
    }
}

impl<S, P, R, Req> ResponseFutureProj<'_, S, P, R, Req>
where
    P: RetryProtocol<Req> + RetryOn<P::View, S::Response>,
    R: Predicate<P, P::View, S::Response>,
    S: Service<P::Attempt>,
    S::Error: Into<BoxError>,
{
    /// An attempt ended: the call's output, or `None` when a retry was
    /// planned (the attempt is then `Between`, waiting as `Wait` says).
    #[inline]
    fn on_result(
        &mut self,
        result: Result<S::Response, BoxError>,
        attempts: u32,
    ) -> Option<Result<S::Response, BoxError>> {
        let policy = &*self.policy;
        let protocol = &policy.protocol;
        let Some(kept) = self.kept.as_ref() else {
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        };
        let decision = policy.predicate.decide(protocol, protocol.view(kept), &result);
        if decision == RetryDecision::DoNotRetry {
            if let Some(throttle) = policy.state.throttle()
                && protocol.is_success(&result)
            {
                // Only a real success refills: not an HTTP 500 or a
                // trailers-only gRPC error that is not retried.
                throttle.on_success();
            }
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        }
        self.plan_retry(result, decision)
    }

    /// A retryable result: checks the attempt count, pushback, deadline,
    /// replay buffer, throttle and budget, then arms the backoff.
    #[inline(never)]
    fn plan_retry(
        &mut self,
        result: Result<S::Response, BoxError>,
        decision: RetryDecision,
    ) -> Option<Result<S::Response, BoxError>> {
        let policy = &*self.policy;
        let protocol = &policy.protocol;
        let attempts = *self.attempts;
        let Some(kept) = self.kept.as_mut() else {
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        };
        if let Some(throttle) = policy.state.throttle() {
            throttle.on_failure();
        }
        if attempts >= *self.max_attempts {
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        }
        let decision = match (decision, protocol.pushback(&result)) {
            (RetryDecision::Retry, Some(Pushback::After(delay))) => RetryDecision::RetryAfter(delay),
            (RetryDecision::Retry, Some(Pushback::Stop)) => RetryDecision::DoNotRetry,
            (decision, _) => decision,
        };
        let delay = match decision {
            RetryDecision::DoNotRetry => return Some(finish::<P::View, _, _>(protocol, result, attempts)),
            RetryDecision::RetryAfter(delay) if delay > policy.max_pushback => {
                return Some(finish::<P::View, _, _>(protocol, result, attempts));
            }
            RetryDecision::RetryAfter(delay) => delay,
            RetryDecision::Retry => {
                let previous = self.retry.0.as_ref().and_then(|r| r.previous_delay);
                policy.backoff.delay(attempts - 1, previous)
            }
        };
        let now = Instant::now();
        if let Some(deadline) = *self.deadline
            && now.checked_add(delay).is_none_or(|at| at >= deadline)
        {
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        }
        // The next attempt carries the peers the earlier ones used.
        let peer = protocol.peer(&result);
        if let Some(peer) = &peer {
            protocol.record_peer(kept, peer.clone());
        }
        if !protocol.can_retry(kept) {
            not_replayable(attempts);
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        }
        // The budget and the throttle before building the attempt.
        if policy.state.throttle().is_some_and(|t| !t.allows_retry())
            || policy.state.budget().is_some_and(|b| !b.withdraw())
        {
            emit_budget_exhausted(policy.state.listeners());
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        }
        let Some(next) = protocol.next_attempt(kept) else {
            not_replayable(attempts);
            return Some(finish::<P::View, _, _>(protocol, result, attempts));
        };
        emit(
            policy.state.listeners(),
            &Event::new(
                LayerName::Retry,
                EventKind::Retry {
                    attempt: attempts,
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
        let wait = if delay.is_zero() { Wait::Unarmed } else { Wait::Backoff };
        match self.retry.0.as_mut() {
            Some(retry) => {
                let mut retry = retry.as_mut().project();
                if wait == Wait::Backoff {
                    arm(retry.sleep.as_mut(), after(now, delay));
                }
                *retry.wait = wait;
                *retry.next = Some(next);
                *retry.last = Some(result);
                *retry.previous_delay = Some(delay);
            }
            None => {
                self.retry.0 = Some(Box::pin(Retrying {
                    sleep: (wait == Wait::Backoff).then(|| tokio::time::sleep_until(after(now, delay))),
                    wait,
                    next: Some(next),
                    last: Some(result),
                    previous_delay: Some(delay),
                }));
            }
        }
        self.attempt.set(Attempt::Between);
        None
    }

    /// After the first attempt asked for a retry: the backoff, the later
    /// attempts and their results.
    #[inline(never)]
    fn retrying(&mut self, cx: &mut Context<'_>) -> Poll<Result<S::Response, BoxError>> {
        loop {
            if let AttemptProj::Retry { future } = self.attempt.as_mut().project() {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                let attempts = *self.attempts;
                if let Some(output) = self.on_result(result, attempts) {
                    return Poll::Ready(output);
                }
            }
            match self.between_attempts(cx) {
                Poll::Ready(Some(output)) => return Poll::Ready(output),
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Between attempts: the backoff sleep, then waiting for the service
    /// (bounded by the deadline), then the next attempt. `Ready(None)` once
    /// the next attempt is in flight.
    #[inline]
    fn between_attempts(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<S::Response, BoxError>>> {
        let Some(retry) = self.retry.0.as_mut() else {
            return Poll::Ready(Some(Err("retry state lost".into())));
        };
        let mut retry = retry.as_mut().project();
        loop {
            match *retry.wait {
                Wait::Backoff => {
                    if let Some(sleep) = retry.sleep.as_mut().as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    match *self.deadline {
                        // Reuse the sleep to wake at the deadline should the
                        // service not be ready in time.
                        Some(deadline) => {
                            arm(retry.sleep.as_mut(), deadline);
                            *retry.wait = Wait::Deadline;
                            continue;
                        }
                        None => *retry.wait = Wait::Unarmed,
                    }
                }
                Wait::Deadline => {
                    if retry.sleep.as_mut().as_pin_mut().is_some_and(|s| s.poll(cx).is_ready()) {
                        // The deadline passed while the service was not
                        // ready: the last attempt's result stands.
                        return Poll::Ready(Some(finish_last(
                            &self.policy.protocol,
                            retry.last.take(),
                            *self.attempts,
                        )));
                    }
                }
                Wait::Unarmed => {}
            }
            let deadline_passed = self.deadline.is_some_and(|d| Instant::now() >= d);
            let protocol = &self.policy.protocol;
            // The replay buffer may have been lost since the retry was
            // decided (the previous attempt's body outgrew the cap or
            // failed): then the last result stands.
            let can_retry = self.kept.as_ref().is_some_and(|k| protocol.can_retry(k));
            if deadline_passed || !can_retry || retry.next.is_none() {
                if !can_retry {
                    not_replayable(*self.attempts);
                }
                return Poll::Ready(Some(finish_last(
                    &self.policy.protocol,
                    retry.last.take(),
                    *self.attempts,
                )));
            }
            let Some(service) = self.service.as_mut() else {
                return Poll::Ready(Some(finish_last(
                    &self.policy.protocol,
                    retry.last.take(),
                    *self.attempts,
                )));
            };
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Pending => {
                    if let (Wait::Unarmed, Some(deadline)) = (*retry.wait, *self.deadline) {
                        // Nothing else would wake this call at its deadline.
                        arm(retry.sleep.as_mut(), deadline);
                        *retry.wait = Wait::Deadline;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
            if let Some(next) = retry.next.take() {
                *retry.last = None;
                if *retry.wait == Wait::Deadline {
                    // Leave no timer registered while the attempt runs.
                    retry.sleep.set(None);
                }
                *retry.wait = Wait::Unarmed;
                *self.attempts += 1;
                let future = service.call(next);
                self.attempt.set(Attempt::Retry { future });
                return Poll::Ready(None);
            }
        }
    }
}

/// The last attempt's result, untouched, as the call's.
fn finish_last<V, Res, P>(protocol: &P, last: Option<Result<Res, BoxError>>, attempts: u32) -> Result<Res, BoxError>
where
    P: RetryOn<V, Res>,
{
    finish::<V, _, _>(
        protocol,
        last.unwrap_or_else(|| Err("retry state lost".into())),
        attempts,
    )
}

/// `now + delay`, or a time that never comes when that overflows (a huge
/// configured backoff must not panic).
fn after(now: Instant, delay: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(delay).or_else(|| now.checked_add(NEVER)).unwrap_or(now)
}

/// Arms `sleep` (made on first use) to fire at `at`.
fn arm(mut sleep: Pin<&mut Option<Sleep>>, at: Instant) {
    match sleep.as_mut().as_pin_mut() {
        Some(sleep) => sleep.reset(at),
        None => sleep.set(Some(tokio::time::sleep_until(at))),
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
        trace_attempts(attempts, result.is_ok());
    }
    result
}

#[cold]
fn trace_attempts(attempts: u32, ok: bool) {
    tracing::debug!(
        target: "palisade",
        layer = "retry",
        event = "attempts",
        attempts,
        outcome = if ok { "response" } else { "error" },
        "call finished after retries"
    );
}
