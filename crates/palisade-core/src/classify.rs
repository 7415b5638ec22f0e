//! Outcome classification: was a finished call a success, a failure, or neither?
//!
//! A layer that keeps score (the circuit breaker, the adaptive bulkhead, the
//! balancer's load tracking) asks a [`Classify`] for a verdict on every call.
//! The verdict is either known as soon as the response arrives
//! ([`Verdict::Now`]) or only at the end of the response body
//! ([`Verdict::AtEndOfStream`]): a gRPC response carries its status in the
//! trailers, so a `200 OK` whose trailers say `grpc-status: 14` is a failure.
//! `palisade-body` runs the end-of-stream half ([`ClassifyEos`]) when the body
//! really ends.
//!
//! The built-in classifiers live in [`protocol`](crate::protocol): [`Plain`]
//! (every `Err` is a failure), [`Http`] (5xx and transport errors) and
//! [`Grpc`] (status codes from headers or trailers). Any classifier can be
//! refined with closures through [`ClassifyExt`]:
//!
//! ```
//! use palisade_core::classify::{Classify, ClassifyExt, Outcome, Verdict};
//! use palisade_core::protocol::Plain;
//!
//! #[derive(Debug)]
//! struct NotFound;
//!
//! // A business error ("not found") says nothing about the peer's health.
//! let classifier = Plain.errors_with(|_: &NotFound| Outcome::Ignored);
//! assert_eq!(Classify::<(), NotFound>::classify_error(&classifier, &NotFound), Outcome::Ignored);
//! assert!(matches!(
//!     Classify::<(), NotFound>::classify_response(&classifier, &()),
//!     Verdict::Now(Outcome::Success)
//! ));
//! ```
//!
//! # The caller's deadline
//!
//! A call that ran out of the *caller's* time is not the peer's fault: the
//! built-in classifiers count an error that is, or wraps,
//! [`DeadlineExceeded`](crate::error::DeadlineExceeded) as
//! [`Outcome::Ignored`] (see [`is_deadline_exceeded`](crate::error::is_deadline_exceeded)).
//! A [`TimedOut`](crate::error::TimedOut) of the attempt timeout is still a
//! failure: that limit belongs to the peer; unless its timer fired more than
//! [`STALL_TOLERANCE`](crate::error::STALL_TOLERANCE) late, which is the
//! client's own stall ([`TimedOut::is_client_stall`](crate::error::TimedOut::is_client_stall)),
//! also [`Outcome::Ignored`]. Override either with
//! [`ClassifyExt::errors_with`].
//!
//! # Abandoned calls
//!
//! A call can end without a verdict: its caller drops the response future, or
//! reads the head of the response and drops the body. What that means is one
//! policy, [`AbandonPolicy`], carried by the [`Http`] and [`Grpc`] protocol
//! values (other classifiers use its defaults) and read through
//! [`Classify::abandon_policy`]:
//!
//! | the call | default | why |
//! |---|---|---|
//! | head says success, body dropped before its end | [`Outcome::Success`] | a hyper client that checks `status()` and drops the body got what it asked for |
//! | verdict waits for the trailers (gRPC), dropped before them | [`Outcome::Ignored`] | the status was never seen |
//! | response future dropped before a response | [`Outcome::Ignored`] | a cancellation says nothing about the peer |
//! | a half-open probe whose response is a stream | [`ProbeVerdict::AtHead`] | a client that only streams must still close its breaker |
//! | head says failure, body dropped | [`Outcome::Failure`], always | a 503 dropped unread is still a 503 |
//!
//! [`Plain`]: crate::protocol::Plain
//! [`Http`]: crate::protocol::Http
//! [`Grpc`]: crate::protocol::Grpc

use std::error::Error;

use http::HeaderMap;

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The peer did its job.
    Success,
    /// The peer failed: counts toward tripping a breaker, shrinking a limit.
    Failure,
    /// Neither: a business error, the caller's deadline passing, a cancelled
    /// call (see [`AbandonPolicy`]). It moves no counter.
    Ignored,
}

impl Outcome {
    /// A short lowercase name, used in tracing fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The verdict on a response: known now, or known at the end of its body.
#[derive(Debug)]
pub enum Verdict<E> {
    /// The outcome is known from the response head.
    Now(Outcome),
    /// The outcome depends on how the body ends; `E` decides then.
    AtEndOfStream(E),
}

/// Decides the outcome of a response whose verdict waits for the end of its body.
///
/// Exactly one method is called, once, by whoever watches the body
/// (`palisade-body`). A body dropped before its end calls neither: what it
/// means is [`AbandonPolicy::trailers_dropped`].
pub trait ClassifyEos: Send + 'static {
    /// The body ended normally, with `trailers` if it had any.
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome;

    /// The body failed with `error` before its end. A failure by default.
    fn classify_body_error(self, error: &(dyn Error + 'static)) -> Outcome
    where
        Self: Sized,
    {
        let _ = error;
        Outcome::Failure
    }
}

/// An end-of-stream classifier that can never be constructed, for classifiers
/// whose verdict is always known from the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeverAtEos {}

impl ClassifyEos for NeverAtEos {
    fn classify_eos(self, _: Option<&HeaderMap>) -> Outcome {
        match self {}
    }
}

/// Classifies the result of a call to a service with responses `Res` and errors `E`.
pub trait Classify<Res, E> {
    /// Decides at end of stream, for responses whose verdict waits for it.
    type Eos: ClassifyEos;

    /// The verdict on a response.
    fn classify_response(&self, response: &Res) -> Verdict<Self::Eos>;

    /// The outcome of an error returned by the service.
    fn classify_error(&self, error: &E) -> Outcome;

    /// What abandoned calls mean (see [`AbandonPolicy`]). The defaults,
    /// unless the classifier carries a policy ([`Http`](crate::protocol::Http)
    /// and [`Grpc`](crate::protocol::Grpc) do; closure refinements ask the
    /// classifier they refine).
    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        AbandonPolicy::DEFAULT
    }

    /// Whether `response` is the peer saying that the call's time ran out
    /// before it answered (gRPC: a trailers-only `DEADLINE_EXCEEDED`). A
    /// layer that told the peer how long the call may take (a timeout layer
    /// that wrote `grpc-timeout`) and gets this answer when its own limit is
    /// due reports its own limit instead: the caller's deadline is not the
    /// peer's fault, and an attempt's timeout counts as if the layer's timer
    /// had fired. The default (and [`Http`](crate::protocol::Http)): never.
    #[inline]
    fn is_deadline_response(&self, response: &Res) -> bool {
        let _ = response;
        false
    }
}

/// How a half-open circuit breaker judges a probe whose response is a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProbeVerdict {
    /// At the response head: a head that is not a failure (an http 2xx, a
    /// gRPC `200` whose status waits for the trailers) is the probe's success,
    /// and the probe slot comes back at once. An error later in that body is
    /// not held against the probe.
    AtHead,
    /// At the end of the body, like any other call (a gRPC status in the
    /// trailers decides), with one exception: a probe whose head was healthy
    /// (not a failure known from the head) and whose body is still streaming
    /// when the breaker's `probe_timeout` passes counts as a **success** at
    /// that moment, so that a long healthy stream neither holds the breaker
    /// half-open nor counts as a failure. Its later end is then ignored. A
    /// probe with no response head by then is reclaimed, counting as
    /// nothing. The default.
    #[default]
    AtEnd,
}

/// What an abandoned call means: a body dropped before its end, a response
/// future dropped before a response, and a probe whose response is a stream.
///
/// One small `Copy` value, carried by the [`Http`](crate::protocol::Http) and
/// [`Grpc`](crate::protocol::Grpc) protocol values
/// ([`with_abandon_policy`](crate::protocol::Http::with_abandon_policy)) and
/// so copied into every response future; `palisade-body`'s `track` applies the
/// body rules and the layers apply the others. A failure known from the
/// response head stays a failure whatever the policy says: a 503 dropped
/// unread is still a 503.
///
/// ```
/// use palisade_core::classify::{AbandonPolicy, Outcome, ProbeVerdict};
/// use palisade_core::protocol::Http;
///
/// // A webhook client that drops every body: a 2xx is a success (the default).
/// let policy = AbandonPolicy::default();
/// assert_eq!(policy.body_dropped(), Outcome::Success);
///
/// // A client whose callers cancel only when the peer is too slow.
/// let strict = AbandonPolicy::new()
///     .with_call_dropped(Outcome::Failure)
///     .with_probe_verdict(ProbeVerdict::AtHead);
/// let http = Http::new().with_abandon_policy(strict);
/// assert_eq!(http.abandon_policy().call_dropped(), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbandonPolicy {
    body_dropped: Outcome,
    trailers_dropped: Outcome,
    call_dropped: Outcome,
    probe_verdict: ProbeVerdict,
}

impl Default for AbandonPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl AbandonPolicy {
    /// The defaults: a dropped body after a successful head is a
    /// [`Success`](Outcome::Success); a body dropped before its trailers and a
    /// dropped response future are [`Ignored`](Outcome::Ignored); a streamed
    /// probe is judged [at its end](ProbeVerdict::AtEnd), or as a success
    /// when still streaming healthily at the breaker's `probe_timeout`.
    pub const DEFAULT: AbandonPolicy = AbandonPolicy {
        body_dropped: Outcome::Success,
        trailers_dropped: Outcome::Ignored,
        call_dropped: Outcome::Ignored,
        probe_verdict: ProbeVerdict::AtEnd,
    };

    /// The defaults ([`AbandonPolicy::DEFAULT`]).
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// What a response whose head was a success means when its body is
    /// dropped before its end (default [`Outcome::Success`]).
    pub const fn with_body_dropped(mut self, outcome: Outcome) -> Self {
        self.body_dropped = outcome;
        self
    }

    /// What a response whose verdict waits for its end of stream (a gRPC
    /// status in the trailers) means when dropped before it (default
    /// [`Outcome::Ignored`]).
    pub const fn with_trailers_dropped(mut self, outcome: Outcome) -> Self {
        self.trailers_dropped = outcome;
        self
    }

    /// What a call means whose response future is dropped before a response
    /// arrived: the caller cancelled, a timeout above fired, a task panicked
    /// (default [`Outcome::Ignored`]).
    pub const fn with_call_dropped(mut self, outcome: Outcome) -> Self {
        self.call_dropped = outcome;
        self
    }

    /// How a half-open breaker judges a probe whose response is a stream
    /// (default [`ProbeVerdict::AtEnd`]).
    pub const fn with_probe_verdict(mut self, verdict: ProbeVerdict) -> Self {
        self.probe_verdict = verdict;
        self
    }

    /// See [`with_body_dropped`](Self::with_body_dropped).
    pub const fn body_dropped(&self) -> Outcome {
        self.body_dropped
    }

    /// See [`with_trailers_dropped`](Self::with_trailers_dropped).
    pub const fn trailers_dropped(&self) -> Outcome {
        self.trailers_dropped
    }

    /// See [`with_call_dropped`](Self::with_call_dropped).
    pub const fn call_dropped(&self) -> Outcome {
        self.call_dropped
    }

    /// See [`with_probe_verdict`](Self::with_probe_verdict).
    pub const fn probe_verdict(&self) -> ProbeVerdict {
        self.probe_verdict
    }

    /// The outcome of a response with `verdict` whose body was dropped before
    /// its end: a failure known from the head stays a failure, an ignored head
    /// stays ignored, a successful head is [`body_dropped`](Self::body_dropped)
    /// and a verdict that waited for the end of stream is
    /// [`trailers_dropped`](Self::trailers_dropped).
    #[inline]
    pub fn on_body_dropped<E>(&self, verdict: &Verdict<E>) -> Outcome {
        match verdict {
            Verdict::Now(Outcome::Failure) => Outcome::Failure,
            Verdict::Now(Outcome::Ignored) => Outcome::Ignored,
            Verdict::Now(Outcome::Success) => self.body_dropped,
            Verdict::AtEndOfStream(_) => self.trailers_dropped,
        }
    }
}

/// Refines any classifier with closures.
pub trait ClassifyExt: Sized {
    /// Decides errors with `f` instead: for example
    /// `|e: &BoxError| if e.is::<NotFound>() { Outcome::Ignored } else { Outcome::Failure }`.
    /// Responses are still decided by `self`.
    fn errors_with<F>(self, f: F) -> ErrorsWith<Self, F> {
        ErrorsWith { inner: self, f }
    }

    /// Decides responses with `f` first; where `f` returns `None`, `self`
    /// decides (including waiting for the end of the stream).
    fn responses_with<F>(self, f: F) -> ResponsesWith<Self, F> {
        ResponsesWith { inner: self, f }
    }
}

impl<C> ClassifyExt for C {}

/// A classifier whose errors are decided by a closure. See [`ClassifyExt::errors_with`].
#[derive(Clone, Copy, Debug)]
pub struct ErrorsWith<C, F> {
    inner: C,
    f: F,
}

impl<C, F> ErrorsWith<C, F> {
    /// The classifier that decides responses.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C, F, Res, E> Classify<Res, E> for ErrorsWith<C, F>
where
    C: Classify<Res, E>,
    F: Fn(&E) -> Outcome,
{
    type Eos = C::Eos;

    fn classify_response(&self, response: &Res) -> Verdict<Self::Eos> {
        self.inner.classify_response(response)
    }

    fn classify_error(&self, error: &E) -> Outcome {
        (self.f)(error)
    }

    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        self.inner.abandon_policy()
    }

    #[inline]
    fn is_deadline_response(&self, response: &Res) -> bool {
        self.inner.is_deadline_response(response)
    }
}

/// A classifier whose responses are first decided by a closure. See [`ClassifyExt::responses_with`].
#[derive(Clone, Copy, Debug)]
pub struct ResponsesWith<C, F> {
    inner: C,
    f: F,
}

impl<C, F> ResponsesWith<C, F> {
    /// The classifier that decides what the closure leaves open.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C, F, Res, E> Classify<Res, E> for ResponsesWith<C, F>
where
    C: Classify<Res, E>,
    F: Fn(&Res) -> Option<Outcome>,
{
    type Eos = C::Eos;

    fn classify_response(&self, response: &Res) -> Verdict<Self::Eos> {
        match (self.f)(response) {
            Some(outcome) => Verdict::Now(outcome),
            None => self.inner.classify_response(response),
        }
    }

    fn classify_error(&self, error: &E) -> Outcome {
        self.inner.classify_error(error)
    }

    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        self.inner.abandon_policy()
    }

    #[inline]
    fn is_deadline_response(&self, response: &Res) -> bool {
        self.inner.is_deadline_response(response)
    }
}

/// A classifier made of one closure over the whole result, for services whose
/// responses are not http: `classify_fn(|result: Result<&Res, &E>| ...)`.
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

/// See [`classify_fn`].
#[derive(Clone, Copy, Debug)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    type Eos = NeverAtEos;

    fn classify_response(&self, response: &Res) -> Verdict<NeverAtEos> {
        Verdict::Now((self.f)(Ok(response)))
    }

    fn classify_error(&self, error: &E) -> Outcome {
        (self.f)(Err(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Plain;

    #[test]
    fn closures_refine_a_classifier() {
        let c = Plain.responses_with(|r: &u32| (*r == 0).then_some(Outcome::Failure));
        assert!(matches!(
            Classify::<u32, ()>::classify_response(&c, &0),
            Verdict::Now(Outcome::Failure)
        ));
        assert!(matches!(
            Classify::<u32, ()>::classify_response(&c, &1),
            Verdict::Now(Outcome::Success)
        ));
        assert_eq!(Classify::<u32, ()>::classify_error(&c, &()), Outcome::Failure);

        let f = classify_fn(|r: Result<&u32, &&str>| match r {
            Ok(_) => Outcome::Success,
            Err(e) if e.starts_with("biz") => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        });
        assert_eq!(f.classify_error(&"biz: no such user"), Outcome::Ignored);
        assert_eq!(f.classify_error(&"io"), Outcome::Failure);
    }
}
