//! Tracking a response to its real end: the bridge between a classifier from
//! `palisade-core` and a layer that keeps score (breaker, bulkhead, balancer).
//!
//! A layer hands [`track`] the result of its inner call, its classifier and a
//! [`Settle`] guard (the layer's permit, probe slot or in-flight counter). The
//! guard is settled with the call's [`Outcome`] as soon as the outcome is
//! known, and released by its `Drop` if it never is:
//!
//! - a non-http response ([`Plain`]): at once;
//! - an http response ([`Http`], [`Grpc`]): when its body ends. At end of
//!   stream the verdict is the head's (or, for gRPC, the trailers'); a body
//!   error is a failure (or what the end-of-stream classifier says); a body
//!   dropped before its end is what the classifier's
//!   [`AbandonPolicy`] says ([`AbandonPolicy::on_body_dropped`]): by default
//!   a success known from the head is a success (a client that checks the
//!   status and drops the body got its answer), a failure known from the
//!   head stays a failure (a 503 dropped unread is still a 503), and a
//!   verdict that waited for the trailers is ignored;
//! - an error: at once, with the classifier's verdict on the error.
//!
//! An ignored outcome of a dropped body is not settled: the guard is dropped
//! unsettled, and its `Drop` treats that as [`Outcome::Ignored`].

use palisade_core::classify::{
    AbandonPolicy, Classify, ClassifyEos, ClassifyFn, ErrorsWith, NeverAtEos, Outcome, ResponsesWith, Verdict,
};
use palisade_core::protocol::{Grpc, GrpcEos, Http, Plain};

use crate::body::CompletionBody;
use crate::end::{BodyEnd, OnEnd};
use crate::limits::BodyLimits;

/// A layer's guard for one call, settled once with the call's outcome.
///
/// Dropping it unsettled means the call's outcome will never be known (the
/// caller dropped the future or the body, or the task panicked): its `Drop`
/// must release whatever it holds and count the call as
/// [`Outcome::Ignored`].
pub trait Settle: Send + 'static {
    /// The call ended with `outcome`.
    fn settle(self, outcome: Outcome);

    /// The call ended with `outcome`, judged when its body ended; `end` says
    /// how (the trailers at end of stream, or the body's error), for a guard
    /// that describes failures (the balancer's health report shows a gRPC
    /// status that came in the trailers). By default, [`settle`](Self::settle).
    fn settle_at_end(self, outcome: Outcome, end: BodyEnd<'_>)
    where
        Self: Sized,
    {
        let _ = end;
        self.settle(outcome);
    }

    /// Whether [`settle`](Self::settle) uses its outcome. A guard that only
    /// releases something when the call ends (a bulkhead permit without an
    /// adaptive limit, the timeout's `()`) says `false`, and [`track`] then
    /// does not classify the response or the error at all: it settles it as
    /// [`Outcome::Ignored`] when it ends. `true` by default.
    #[inline]
    fn wants_outcome(&self) -> bool {
        true
    }
}

impl Settle for () {
    fn settle(self, _: Outcome) {}

    #[inline]
    fn wants_outcome(&self) -> bool {
        false
    }
}

impl<A: Settle, B: Settle> Settle for (A, B) {
    fn settle(self, outcome: Outcome) {
        self.0.settle(outcome);
        self.1.settle(outcome);
    }

    fn settle_at_end(self, outcome: Outcome, end: BodyEnd<'_>) {
        self.0.settle_at_end(outcome, end);
        self.1.settle_at_end(outcome, end);
    }

    #[inline]
    fn wants_outcome(&self) -> bool {
        self.0.wants_outcome() || self.1.wants_outcome()
    }
}

/// The [`OnEnd`] hook that settles a guard from a verdict when a body ends.
#[derive(Debug)]
pub struct SettleOnEnd<E, S> {
    verdict: Verdict<E>,
    settle: S,
    /// The outcome if the body is dropped before its end, decided from the
    /// abandon policy when the hook is made.
    dropped: Outcome,
}

impl<E: ClassifyEos, S: Settle> SettleOnEnd<E, S> {
    /// Settles `settle` at the end of the body, from `verdict`; a body dropped
    /// before its end counts as `policy` says
    /// ([`AbandonPolicy::on_body_dropped`]).
    pub fn new(verdict: Verdict<E>, settle: S, policy: AbandonPolicy) -> Self {
        let dropped = policy.on_body_dropped(&verdict);
        Self {
            verdict,
            settle,
            dropped,
        }
    }
}

impl<E: ClassifyEos, S: Settle> OnEnd for SettleOnEnd<E, S> {
    fn on_end(self, end: BodyEnd<'_>) {
        let outcome = match (end, self.verdict) {
            (BodyEnd::Eos(_), Verdict::Now(outcome)) => outcome,
            (BodyEnd::Eos(trailers), Verdict::AtEndOfStream(eos)) => eos.classify_eos(trailers),
            (BodyEnd::Error(_), Verdict::Now(_)) => Outcome::Failure,
            (BodyEnd::Error(error), Verdict::AtEndOfStream(eos)) => eos.classify_body_error(error),
            // Ignored: the guard's Drop releases it unsettled.
            (BodyEnd::Dropped, _) if self.dropped == Outcome::Ignored => return,
            // The policy's verdict (a failure read from the head always stays one).
            (BodyEnd::Dropped, _) => self.dropped,
        };
        self.settle.settle_at_end(outcome, end);
    }
}

/// An http body tracked to its end by a [`Settle`] guard.
pub type TrackedBody<B, E, S> = CompletionBody<B, SettleOnEnd<E, S>>;

/// A classifier that also knows how to follow its responses to their real end.
///
/// Implemented for every classifier of `palisade-core`: [`Plain`] and
/// [`classify_fn`](palisade_core::classify::classify_fn) settle at once and
/// leave the response as it is; [`Http`] and [`Grpc`] wrap the body in a
/// [`TrackedBody`]; closure refinements follow the classifier they refine.
pub trait TrackResponse<Res, E, S: Settle>: Classify<Res, E> {
    /// The response handed back to the caller.
    type Response;

    /// Follows `response`, whose verdict is `verdict`, and settles `settle`
    /// when its outcome is known. `limits` bound an http body's time (other
    /// responses ignore them).
    fn track_response(
        &self,
        response: Res,
        verdict: Verdict<Self::Eos>,
        settle: S,
        limits: BodyLimits,
    ) -> Self::Response;
}

/// Classifies `result` with `classifier` and settles `settle` when the outcome
/// is known: at once for errors and non-http responses, at the end of the body
/// for http responses.
#[inline]
pub fn track<C, Res, E, S>(
    classifier: &C,
    result: Result<Res, E>,
    settle: S,
    limits: BodyLimits,
) -> Result<C::Response, E>
where
    C: TrackResponse<Res, E, S>,
    S: Settle,
{
    if !settle.wants_outcome() {
        // Nothing to classify for: the guard is released when the call ends.
        return match result {
            Ok(response) => Ok(classifier.track_response(response, Verdict::Now(Outcome::Ignored), settle, limits)),
            Err(error) => {
                settle.settle(Outcome::Ignored);
                Err(error)
            }
        };
    }
    match result {
        Ok(response) => {
            let verdict = classifier.classify_response(&response);
            Ok(classifier.track_response(response, verdict, settle, limits))
        }
        Err(error) => {
            settle.settle(classifier.classify_error(&error));
            Err(error)
        }
    }
}

fn settle_now<S: Settle>(verdict: Verdict<NeverAtEos>, settle: S) {
    match verdict {
        Verdict::Now(outcome) => settle.settle(outcome),
        Verdict::AtEndOfStream(never) => match never {},
    }
}

impl<Res, E: 'static, S: Settle> TrackResponse<Res, E, S> for Plain {
    type Response = Res;

    #[inline]
    fn track_response(&self, response: Res, verdict: Verdict<NeverAtEos>, settle: S, _: BodyLimits) -> Res {
        settle_now(verdict, settle);
        response
    }
}

impl<F, Res, E, S: Settle> TrackResponse<Res, E, S> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    type Response = Res;

    #[inline]
    fn track_response(&self, response: Res, verdict: Verdict<NeverAtEos>, settle: S, _: BodyLimits) -> Res {
        settle_now(verdict, settle);
        response
    }
}

macro_rules! track_http_body {
    ($classifier:ty, $eos:ty) => {
        impl<B, E, S> TrackResponse<http::Response<B>, E, S> for $classifier
        where
            B: http_body::Body,
            E: 'static,
            S: Settle,
        {
            type Response = http::Response<TrackedBody<B, $eos, S>>;

            fn track_response(
                &self,
                response: http::Response<B>,
                verdict: Verdict<$eos>,
                settle: S,
                limits: BodyLimits,
            ) -> Self::Response {
                let policy = Classify::<http::Response<B>, E>::abandon_policy(self);
                response
                    .map(|body| CompletionBody::with_limits(body, SettleOnEnd::new(verdict, settle, policy), limits))
            }
        }
    };
}

track_http_body!(Http, NeverAtEos);
track_http_body!(Grpc, GrpcEos);

impl<C, F, Res, E, S> TrackResponse<Res, E, S> for ErrorsWith<C, F>
where
    C: TrackResponse<Res, E, S>,
    F: Fn(&E) -> Outcome,
    S: Settle,
{
    type Response = C::Response;

    fn track_response(&self, response: Res, verdict: Verdict<C::Eos>, settle: S, limits: BodyLimits) -> C::Response {
        self.inner().track_response(response, verdict, settle, limits)
    }
}

impl<C, F, Res, E, S> TrackResponse<Res, E, S> for ResponsesWith<C, F>
where
    C: TrackResponse<Res, E, S>,
    F: Fn(&Res) -> Option<Outcome>,
    S: Settle,
{
    type Response = C::Response;

    fn track_response(&self, response: Res, verdict: Verdict<C::Eos>, settle: S, limits: BodyLimits) -> C::Response {
        self.inner().track_response(response, verdict, settle, limits)
    }
}
