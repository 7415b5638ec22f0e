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
    /// Neither: a business error, a cancelled call, a body dropped unread.
    /// It moves no counter.
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
/// (`palisade-body`). A body dropped before its end calls neither: a dropped
/// body is [`Outcome::Ignored`].
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
