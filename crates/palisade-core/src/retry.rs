//! Retryability: the predicate a retry layer asks, and the mark an inner
//! service can put on its error to say "retry this" or "never retry this".
//!
//! ```
//! use palisade_core::error::BoxError;
//! use palisade_core::retry::{Retryable, error_retryability, Retryability};
//!
//! #[derive(Debug)]
//! struct Overloaded;
//! impl std::fmt::Display for Overloaded {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("overloaded") }
//! }
//! impl std::error::Error for Overloaded {}
//!
//! // The inner service marks its error; the retry layer's default predicate obeys.
//! let err: BoxError = Retryable::yes(Overloaded).into();
//! assert_eq!(error_retryability(err.as_ref()), Retryability::Retry);
//! assert_eq!(err.to_string(), "overloaded");
//! // The original error is still there for the caller.
//! let marked = err.downcast_ref::<Retryable>().unwrap();
//! assert!(marked.inner().is::<Overloaded>());
//! ```

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::error::{BoxError, CircuitOpen, DeadlineExceeded, NoAvailablePeers, TimedOut};

/// What the retry layer should do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Do not retry; return this result.
    DoNotRetry,
    /// Retry after the backoff's delay.
    Retry,
    /// Retry after exactly this delay (server pushback).
    RetryAfter(Duration),
}

/// Decides whether a finished attempt should be retried.
///
/// `Req` is the request as the retry layer sees it, so that a predicate can
/// look at the method or the route (a 503 is retried only for idempotent
/// methods).
pub trait RetryPredicate<Req, Res, E> {
    /// The decision on one attempt's result.
    fn decide(&self, request: &Req, result: &Result<Res, E>) -> RetryDecision;
}

impl<F, Req, Res, E> RetryPredicate<Req, Res, E> for F
where
    F: Fn(&Req, &Result<Res, E>) -> RetryDecision,
{
    fn decide(&self, request: &Req, result: &Result<Res, E>) -> RetryDecision {
        self(request, result)
    }
}

/// An error marked retryable or not by the service that returned it.
///
/// Its `Display` is the inner error's, and its [`source`](Error::source) is
/// the inner error *itself*, so that everything that walks a source chain
/// sees what it marks: a fallback or
/// [`find_error`](crate::error::find_error) finds a marked `CircuitOpen`, the
/// classifiers see a marked `DeadlineExceeded`, tonic finds the marked
/// error's gRPC status. (A reporter that prints every error of the chain
/// therefore prints the message twice; print the error alone, or
/// [`inner`](Self::inner).)
pub struct Retryable {
    inner: BoxError,
    retryable: bool,
}

impl Retryable {
    /// Marks `error` retryable.
    pub fn yes(error: impl Into<BoxError>) -> Self {
        Self {
            inner: error.into(),
            retryable: true,
        }
    }

    /// Marks `error` as never to be retried.
    pub fn no(error: impl Into<BoxError>) -> Self {
        Self {
            inner: error.into(),
            retryable: false,
        }
    }

    /// Whether the error may be retried.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The marked error.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        self.inner.as_ref()
    }

    /// The marked error, unwrapped.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Debug for Retryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retryable")
            .field("retryable", &self.retryable)
            .field("inner", &self.inner)
            .finish()
    }
}

impl fmt::Display for Retryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Error for Retryable {
    /// The marked error itself (not its source): see the type's docs.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.inner.as_ref())
    }
}

/// What the error alone says about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retryability {
    /// Safe and useful to retry: the request did not reach a working peer.
    Retry,
    /// Must not be retried (a passed deadline, an explicit mark).
    Never,
    /// The error says nothing either way: leave it to the rest of the policy.
    Unknown,
}

/// Walks `error` and its sources and says whether a retry may help, by default:
///
/// - a [`Retryable`] mark decides, whatever it wraps;
/// - [`DeadlineExceeded`] is never retried;
/// - [`CircuitOpen`], [`NoAvailablePeers`] and an attempt's [`TimedOut`] are retried;
/// - connection-level `std::io::Error`s (refused, reset, aborted, broken pipe,
///   not connected, unexpected end) are retried: hyper and tonic transport
///   errors carry them as their source;
/// - with feature `tonic`, a `tonic::Status` of `UNAVAILABLE` is retried, and
///   so is a `hyper::Error` that says its request was canceled: hyper cancels
///   a request it had not written when its connection closed (a server
///   restarting, a GOAWAY), so the server never saw it; hyper's own pooled
///   client retries these the same way. A caller that gives up drops the
///   future: that is never an error a retry sees.
pub fn error_retryability(error: &(dyn Error + 'static)) -> Retryability {
    let mut next: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(err) = next {
        if let Some(marked) = err.downcast_ref::<Retryable>() {
            return if marked.retryable {
                Retryability::Retry
            } else {
                Retryability::Never
            };
        }
        if err.is::<DeadlineExceeded>() {
            return Retryability::Never;
        }
        if err.is::<CircuitOpen>() || err.is::<NoAvailablePeers>() {
            return Retryability::Retry;
        }
        if let Some(timed_out) = err.downcast_ref::<TimedOut>() {
            return if timed_out.is_retryable() {
                Retryability::Retry
            } else {
                Retryability::Never
            };
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && is_connection_error(io.kind())
        {
            return Retryability::Retry;
        }
        #[cfg(feature = "tonic")]
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Retryability::Retry;
        }
        #[cfg(feature = "tonic")]
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::Unavailable => Retryability::Retry,
                tonic::Code::DeadlineExceeded => Retryability::Never,
                _ => Retryability::Unknown,
            };
        }
        next = err.source();
    }
    Retryability::Unknown
}

fn is_connection_error(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;

    #[derive(Debug)]
    struct Wrap(BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("transport error")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    fn check(e: impl Into<BoxError>) -> Retryability {
        let e: BoxError = e.into();
        error_retryability(e.as_ref())
    }

    #[test]
    fn default_retryability_of_the_known_kinds() {
        assert_eq!(check(CircuitOpen::new(None, Duration::ZERO)), Retryability::Retry);
        assert_eq!(check(NoAvailablePeers::new(1, 1, 0, 0)), Retryability::Retry);
        assert_eq!(
            check(TimedOut::new(TimeoutKind::Attempt, Duration::ZERO)),
            Retryability::Retry
        );
        assert_eq!(
            check(TimedOut::new(TimeoutKind::Total, Duration::ZERO)),
            Retryability::Never
        );
        assert_eq!(check(DeadlineExceeded::before_send()), Retryability::Never);
        assert_eq!(
            check(io::Error::from(io::ErrorKind::ConnectionRefused)),
            Retryability::Retry
        );
        assert_eq!(
            check(io::Error::from(io::ErrorKind::PermissionDenied)),
            Retryability::Unknown
        );
        // Found through the source chain, as hyper wraps io errors.
        let refused: BoxError = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert_eq!(check(Wrap(refused)), Retryability::Retry);
    }

    #[test]
    fn the_mark_wins_over_the_kind() {
        assert_eq!(
            check(Retryable::no(CircuitOpen::new(None, Duration::ZERO))),
            Retryability::Never
        );
        assert_eq!(
            check(Retryable::yes(DeadlineExceeded::before_send())),
            Retryability::Retry
        );
        let marked: BoxError = Retryable::no("business rule").into();
        assert_eq!(check(Wrap(marked)), Retryability::Never);
    }

    #[test]
    fn a_marked_error_is_the_marks_source_so_chain_walkers_find_it() {
        let open = CircuitOpen::new(Some("a:1".into()), Duration::from_secs(2));
        let marked: BoxError = Retryable::no(open.clone()).into();
        // The mark decides retryability...
        assert_eq!(error_retryability(marked.as_ref()), Retryability::Never);
        // ...and the marked error is the first source, not hidden behind it.
        let source = marked.source().expect("the marked error");
        assert_eq!(source.downcast_ref::<CircuitOpen>(), Some(&open));
        assert_eq!(crate::error::find_error::<CircuitOpen>(marked.as_ref()), Some(&open));
        // Through a wrapper too, as a transport or a fallback wraps errors.
        let wrapped: BoxError = Wrap(Retryable::yes(open.clone()).into()).into();
        assert_eq!(error_retryability(wrapped.as_ref()), Retryability::Retry);
        assert_eq!(crate::error::find_error::<CircuitOpen>(wrapped.as_ref()), Some(&open));
        assert!(crate::error::is_deadline_exceeded(&Retryable::yes(
            DeadlineExceeded::before_send()
        )));
        assert_eq!(marked.to_string(), open.to_string(), "Display stays the marked error's");
    }

    #[test]
    fn closures_are_predicates() {
        let p = |_: &(), r: &Result<(), ()>| {
            if r.is_err() {
                RetryDecision::Retry
            } else {
                RetryDecision::DoNotRetry
            }
        };
        assert_eq!(p.decide(&(), &Err(())), RetryDecision::Retry);
        assert_eq!(p.decide(&(), &Ok(())), RetryDecision::DoNotRetry);
    }
}
