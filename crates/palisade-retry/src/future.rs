//! [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::unseeded_rng;
use palisade_core::error::{DeadlineExceeded, PolledAfterCompletion};
use palisade_core::event::{Event, EventKind, LayerName, Listeners};
use palisade_core::retry::RetryDecision;
use palisade_core::time::after;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::CallPolicy;
use crate::policy::{Predicate, RetryOn, RetryProtocol, circuit_open};
use crate::pushback::Pushback;
use crate::replay::{AttemptBody, KeepReplayBody};

/// tokio's timers fire on whole milliseconds and round a deadline up, so a
/// sleep meant to end at `at` may end up to this much later. A backoff that
/// would end within it of the call's deadline is not started: the call would
/// only wake at its deadline to give up.
const TIMER_ROUNDING: Duration = Duration::from_nanos(999_999);

pin_project! {
    /// The response future of [`Retry`](crate::Retry): the current attempt,
    /// the backoff sleep, or waiting for the service to be ready again.
    ///
    /// What only a retry needs (the backoff sleep, the next attempt, the
    /// head of the response that stands should the next attempt not be
    /// sent, the jitter's generator) is allocated at the call's first retry:
    /// a call that needs none has a small future and never allocates.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, P, R, Req, A = KeepReplayBody>
    where
        P: RetryProtocol<Req>,
        P: RetryOn<<P as RetryProtocol<Req>>::View, <S as Service<<A as AttemptBody<<P as RetryProtocol<Req>>::Attempt>>::Output>>::Response>,
        A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output>,
    {
        #[pin]
        attempt: Attempt<S::Future>,
        service: Option<S>,
        kept: Option<P::Kept>,
        attempts: u32,
        max_attempts: u32,
        deadline: Option<Instant>,
        // Last, so that their out-of-line drops run after every other field's.
        retry: RetryBox<Retrying<P::Attempt, <P as RetryOn<P::View, S::Response>>::Held>>,
        policy: CallPolicy<P, R>,
        attempt_body: PhantomData<fn() -> A>,
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
        // The call's deadline had passed before the first attempt.
        Expired,
        // The output was returned.
        Done,
    }
}

pin_project! {
    /// The state between attempts, boxed at the first retry and reused by the
    /// later ones.
    struct Retrying<A, H> {
        // Armed for the backoff or the call's deadline, as `wait` says.
        #[pin]
        sleep: Option<Sleep>,
        wait: Wait,
        next: Option<A>,
        // What is kept of the last attempt's result (a response's head only:
        // its body was dropped when the retry was decided).
        last: Option<Result<H, BoxError>>,
        previous_delay: Option<Duration>,
        // The call's jitter: seeded from the layer's seed, or from the
        // thread's generator.
        rng: fastrand::Rng,
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

/// The call's result.
type Output<P, V, Res> = Result<<P as RetryOn<V, Res>>::Output, BoxError>;
/// What is kept of an attempt's result while the next one is prepared.
type Held<P, V, Res> = Result<<P as RetryOn<V, Res>>::Held, BoxError>;
/// Between attempts: the call's result, or `None` once the next attempt is in flight.
type Step<P, V, Res> = Poll<Option<Output<P, V, Res>>>;

impl<S, P, R, Req, A> ResponseFuture<S, P, R, Req, A>
where
    P: RetryProtocol<Req>
        + RetryOn<
            <P as RetryProtocol<Req>>::View,
            <S as Service<<A as AttemptBody<<P as RetryProtocol<Req>>::Attempt>>::Output>>::Response,
        >,
    A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output>,
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
            attempt_body: PhantomData,
        }
    }

    /// A call whose deadline had passed before its first attempt: it fails
    /// with [`DeadlineExceeded::before_send`] without calling the service.
    #[inline]
    pub(crate) fn expired(policy: CallPolicy<P, R>, deadline: Instant) -> Self {
        Self {
            attempt: Attempt::Expired,
            retry: RetryBox(None),
            service: None,
            kept: None,
            policy,
            attempts: 0,
            max_attempts: 0,
            deadline: Some(deadline),
            attempt_body: PhantomData,
        }
    }
}

impl<S, P, R, Req, A> fmt::Debug for ResponseFuture<S, P, R, Req, A>
where
    P: RetryProtocol<Req>
        + RetryOn<
            <P as RetryProtocol<Req>>::View,
            <S as Service<<A as AttemptBody<<P as RetryProtocol<Req>>::Attempt>>::Output>>::Response,
        >,
    A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output>,
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
pub(crate) fn emit(listeners: Option<&Listeners>, event: &Event<'_>) {
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

impl<S, P, R, Req, A> Future for ResponseFuture<S, P, R, Req, A>
where
    P: RetryProtocol<Req>
        + RetryOn<
            <P as RetryProtocol<Req>>::View,
            <S as Service<<A as AttemptBody<<P as RetryProtocol<Req>>::Attempt>>::Output>>::Response,
        >,
    R: Predicate<P, P::View, S::Response>,
    A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output>,
    S::Error: Into<BoxError>,
{
    type Output = Output<P, P::View, S::Response>;

    // Small and inlined: a first attempt that needs no retry is decided
    // here; retries (planning, waiting, later attempts) are out of line. None
    // of the layer's own calls on this path can unwind while the future is
    // alive, so the compiler can keep the whole future in registers.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.attempt.as_mut().project() {
            AttemptProj::First { future } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(output) = this.on_result(result, 1) {
                    this.attempt.set(Attempt::Done);
                    return Poll::Ready(output);
                }
            }
            // Answered here, inline, not in `retrying`: the first poll of every
            // call then makes no out-of-line call that could unwind, and the
            // compiler can keep the future out of memory (measured: an
            // out-of-line answer here cost the no-retry path 5-10 ns).
            AttemptProj::Expired => {
                this.attempt.set(Attempt::Done);
                return Poll::Ready(Err(DeadlineExceeded::before_send().into()));
            }
            _ => {}
        }
        this.retrying(cx)
    }
}

impl<S, P, R, Req, A> ResponseFutureProj<'_, S, P, R, Req, A>
where
    P: RetryProtocol<Req>
        + RetryOn<
            <P as RetryProtocol<Req>>::View,
            <S as Service<<A as AttemptBody<<P as RetryProtocol<Req>>::Attempt>>::Output>>::Response,
        >,
    R: Predicate<P, P::View, S::Response>,
    A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output>,
    S::Error: Into<BoxError>,
{
    /// An attempt ended: the call's output, or `None` when a retry was
    /// planned (the attempt is then `Between`, waiting as `Wait` says).
    #[inline]
    fn on_result(
        &mut self,
        result: Result<S::Response, BoxError>,
        attempts: u32,
    ) -> Option<Output<P, P::View, S::Response>> {
        let policy = &*self.policy;
        let protocol = &policy.protocol;
        let Some(kept) = self.kept.as_ref() else {
            return Some(finish::<P::View, S::Response, P>(
                protocol,
                result.map(|r| protocol.output(r)),
                attempts,
            ));
        };
        let decision = policy.predicate.decide(protocol, protocol.view(kept), &result);
        if decision == RetryDecision::DoNotRetry {
            if let Some(throttle) = policy.state.throttle()
                && !throttle.is_full()
                && protocol.is_success(&result)
            {
                // Only a real success refills: not an HTTP 500 or a
                // trailers-only gRPC error that is not retried. A full
                // bucket (the steady state) is not worth reading the
                // response for.
                throttle.on_success();
            }
            // Committed: the request body need not be kept for a replay.
            protocol.commit(kept);
            return Some(finish::<P::View, S::Response, P>(
                protocol,
                result.map(|r| protocol.output(r)),
                attempts,
            ));
        }
        self.plan_retry(result, decision)
    }

    /// The last attempt's result stands (a response's kept head, with an
    /// empty body): no further attempt will be made.
    fn stand(&self, last: Option<Held<P, P::View, S::Response>>) -> Output<P, P::View, S::Response> {
        let protocol = &self.policy.protocol;
        if let Some(kept) = self.kept.as_ref() {
            protocol.commit(kept);
        }
        let last = last.unwrap_or_else(|| Err(PolledAfterCompletion::new(LayerName::Retry).into()));
        finish::<P::View, S::Response, P>(protocol, last.map(|held| protocol.release(held)), *self.attempts)
    }

    /// The result stands: no further attempt will be made.
    fn conclude(&self, result: Result<S::Response, BoxError>) -> Output<P, P::View, S::Response> {
        let protocol = &self.policy.protocol;
        if let Some(kept) = self.kept.as_ref() {
            protocol.commit(kept);
        }
        finish::<P::View, S::Response, P>(protocol, result.map(|r| protocol.output(r)), *self.attempts)
    }

    /// A retryable result: checks the attempt count, pushback (a server's,
    /// or an open breaker's `retry_in`), deadline, replay buffer, throttle
    /// and budget, then keeps only the head of a response (its body, with
    /// every guard in it, is dropped now) and arms the backoff.
    #[inline(never)]
    fn plan_retry(
        &mut self,
        result: Result<S::Response, BoxError>,
        decision: RetryDecision,
    ) -> Option<Output<P, P::View, S::Response>> {
        let policy = &*self.policy;
        let protocol = &policy.protocol;
        let attempts = *self.attempts;
        if self.kept.is_none() {
            return Some(self.conclude(result));
        }
        if let Some(throttle) = policy.state.throttle() {
            throttle.on_failure();
        }
        if attempts >= *self.max_attempts {
            return Some(self.conclude(result));
        }
        let decision = match (decision, protocol.pushback(&result)) {
            (RetryDecision::Retry, Some(Pushback::After(delay))) => RetryDecision::RetryAfter(delay),
            (RetryDecision::Retry, Some(Pushback::Stop)) => RetryDecision::DoNotRetry,
            (decision, _) => decision,
        };
        let mut reason = if result.is_ok() {
            "retryable response"
        } else {
            "retryable error"
        };
        // An open breaker says when it takes calls again. With nothing below
        // that switched peers for this attempt, retrying sooner would only be
        // refused again: its `retry_in` is a floor under the backoff, and
        // like a server's pushback it must fit the cap and the time left.
        let open_for = match (decision, &result) {
            (RetryDecision::Retry, Err(error)) => match circuit_open(error) {
                Some(open) if !self.kept.as_ref().is_some_and(|k| protocol.switched_peer(k)) => {
                    reason = "circuit open";
                    Some(open.retry_in())
                }
                _ => None,
            },
            _ => None,
        };
        let mut fresh_rng = None;
        let delay = match decision {
            RetryDecision::DoNotRetry => return Some(self.conclude(result)),
            RetryDecision::RetryAfter(delay) if delay > policy.max_pushback => {
                return Some(self.conclude(result));
            }
            RetryDecision::RetryAfter(delay) => delay,
            RetryDecision::Retry if open_for.is_some_and(|open| open > policy.max_pushback) => {
                return Some(self.conclude(result));
            }
            RetryDecision::Retry => {
                let (previous, rng) = match self.retry.0.as_mut() {
                    Some(retry) => {
                        let retry = retry.as_mut().project();
                        (*retry.previous_delay, retry.rng)
                    }
                    None => (None, fresh_rng.insert(call_rng(policy))),
                };
                let backoff = policy.backoff.delay_with(attempts - 1, previous, rng);
                open_for.map_or(backoff, |open| backoff.max(open))
            }
        };
        let now = Instant::now();
        if let Some(deadline) = *self.deadline {
            // A sleep wakes on the timer's next millisecond: never start one
            // that would wake at (or past) the deadline only to give up.
            let slack = if delay.is_zero() {
                Duration::ZERO
            } else {
                TIMER_ROUNDING
            };
            if now
                .checked_add(delay)
                .and_then(|at| at.checked_add(slack))
                .is_none_or(|wake| wake >= deadline)
            {
                return Some(self.conclude(result));
            }
        }
        // The next attempt carries the peers the earlier ones used.
        let peer = protocol.peer(&result);
        let Some(kept) = self.kept.as_mut() else {
            return Some(self.conclude(result));
        };
        if let Some(peer) = &peer {
            protocol.record_peer(kept, peer.clone());
        }
        if !protocol.can_retry(kept) {
            not_replayable(attempts);
            return Some(self.conclude(result));
        }
        // The budget and the throttle before building the attempt.
        if policy.state.throttle().is_some_and(|t| !t.allows_retry())
            || policy.state.budget().is_some_and(|b| !b.withdraw())
        {
            emit_budget_exhausted(policy.state.listeners());
            return Some(self.conclude(result));
        }
        let Some(next) = protocol.next_attempt(kept) else {
            not_replayable(attempts);
            return Some(self.conclude(result));
        };
        emit(
            policy.state.listeners(),
            &Event::new(
                LayerName::Retry,
                EventKind::Retry {
                    attempt: attempts,
                    delay,
                    reason,
                },
            )
            .peer(peer.as_ref()),
        );
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_retry_retries_total").increment(1);
        // Keep only what the call needs should the next attempt not be sent:
        // a response's body, and what the layers below tied to it (a permit,
        // an in-flight count, a breaker's verdict), goes now, not after the
        // backoff.
        let last = result.map(|response| protocol.hold(response));
        let wait = if delay.is_zero() { Wait::Unarmed } else { Wait::Backoff };
        match self.retry.0.as_mut() {
            Some(retry) => {
                let mut retry = retry.as_mut().project();
                if wait == Wait::Backoff {
                    arm(retry.sleep.as_mut(), after(now, delay));
                }
                *retry.wait = wait;
                *retry.next = Some(next);
                *retry.last = Some(last);
                *retry.previous_delay = Some(delay);
            }
            None => {
                self.retry.0 = Some(Box::pin(Retrying {
                    sleep: (wait == Wait::Backoff).then(|| tokio::time::sleep_until(after(now, delay))),
                    wait,
                    next: Some(next),
                    last: Some(last),
                    previous_delay: Some(delay),
                    rng: fresh_rng.unwrap_or_else(|| call_rng(policy)),
                }));
            }
        }
        self.attempt.set(Attempt::Between);
        None
    }

    /// After the first attempt asked for a retry: the backoff, the later
    /// attempts and their results; also a call refused before its first
    /// attempt, and a future polled after completion.
    #[inline(never)]
    fn retrying(&mut self, cx: &mut Context<'_>) -> Poll<Output<P, P::View, S::Response>> {
        loop {
            match self.attempt.as_mut().project() {
                AttemptProj::Retry { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let attempts = *self.attempts;
                    if let Some(output) = self.on_result(result, attempts) {
                        self.attempt.set(Attempt::Done);
                        return Poll::Ready(output);
                    }
                }
                AttemptProj::Done | AttemptProj::Expired | AttemptProj::First { .. } => {
                    return Poll::Ready(Err(PolledAfterCompletion::new(LayerName::Retry).into()));
                }
                AttemptProj::Between => {}
            }
            match self.between_attempts(cx) {
                Poll::Ready(Some(output)) => {
                    self.attempt.set(Attempt::Done);
                    return Poll::Ready(output);
                }
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Between attempts: the backoff sleep, then waiting for the service
    /// (bounded by the deadline), then the next attempt. `Ready(None)` once
    /// the next attempt is in flight.
    #[inline]
    fn between_attempts(&mut self, cx: &mut Context<'_>) -> Step<P, P::View, S::Response> {
        let protocol = &self.policy.protocol;
        let Some(retry) = self.retry.0.as_mut() else {
            return Poll::Ready(Some(Err(PolledAfterCompletion::new(LayerName::Retry).into())));
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
                        let last = retry.last.take();
                        return Poll::Ready(Some(self.stand(last)));
                    }
                }
                Wait::Unarmed => {}
            }
            let deadline_passed = self.deadline.is_some_and(|d| Instant::now() >= d);
            // The replay buffer may have been lost since the retry was
            // decided (the previous attempt's body outgrew the cap or
            // failed): then the last result stands.
            let can_retry = self.kept.as_ref().is_some_and(|k| protocol.can_retry(k));
            if deadline_passed || !can_retry || retry.next.is_none() {
                if !can_retry {
                    not_replayable(*self.attempts);
                }
                let last = retry.last.take();
                return Poll::Ready(Some(self.stand(last)));
            }
            let Some(service) = self.service.as_mut() else {
                let last = retry.last.take();
                return Poll::Ready(Some(self.stand(last)));
            };
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    if let Some(kept) = self.kept.as_ref() {
                        protocol.commit(kept);
                    }
                    return Poll::Ready(Some(Err(error.into())));
                }
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
            if let (Some(mut next), Some(kept)) = (retry.next.take(), self.kept.as_mut()) {
                *retry.last = None;
                if *retry.wait == Wait::Deadline {
                    // Leave no timer registered while the attempt runs.
                    retry.sleep.set(None);
                }
                *retry.wait = Wait::Unarmed;
                *self.attempts += 1;
                if *self.attempts >= *self.max_attempts {
                    // The last attempt: no replay of its body will follow.
                    protocol.commit(kept);
                }
                protocol.note_sent(kept);
                if let Some(deadline) = *self.deadline {
                    protocol.before_send(&mut next, deadline);
                }
                let future = service.call(A::attempt(next));
                self.attempt.set(Attempt::Retry { future });
                return Poll::Ready(None);
            }
        }
    }
}

/// The generator of one call's jitter: from the layer's seed when it has
/// one (tests replaying a run), else from the thread's generator.
fn call_rng<P, R>(policy: &CallPolicy<P, R>) -> fastrand::Rng {
    match policy.state.jitter() {
        Some(seed) => seed.rng(),
        None => unseeded_rng(),
    }
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
fn finish<V, Res, P>(
    protocol: &P,
    mut result: Result<<P as RetryOn<V, Res>>::Output, BoxError>,
    attempts: u32,
) -> Result<<P as RetryOn<V, Res>>::Output, BoxError>
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
