//! Finding a Palisade error behind any error, and what it means to a gRPC or
//! an http caller.
//!
//! A Palisade error rarely reaches its caller bare: tower layers box it, a
//! fallback wraps it in its combined error, a [`Retryable`](crate::retry::Retryable)
//! mark wraps it, and tonic turns it into a `tonic::Status` whose `source()`
//! is the original error. [`find_error`] and [`PalisadeError::find`] walk the
//! source chain through all of these.

use std::error::Error;
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::{BulkheadFull, CircuitOpen, DeadlineExceeded, NoAvailablePeers, PolledAfterCompletion, TimedOut};
use crate::protocol::GrpcCode;

/// How many errors a chain walk looks at before it gives up, so that a
/// pathological `source()` that never ends cannot hang a caller.
const MAX_CHAIN: usize = 64;

/// The errors of `error`'s source chain, `error` first.
fn chain<'e>(error: &'e (dyn Error + 'static)) -> impl Iterator<Item = &'e (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e: &&'e (dyn Error + 'static)| (*e).source()).take(MAX_CHAIN)
}

/// The first `T` in `error`'s source chain (`error` itself included).
///
/// Finds a Palisade error behind a `tonic::Status` (tonic keeps the error it
/// was made from as its `source()`), a `BoxError`, a fallback's combined
/// error or a [`Retryable`](crate::retry::Retryable) mark:
///
/// ```
/// use palisade_core::error::{BoxError, CircuitOpen, find_error};
/// use palisade_core::retry::Retryable;
/// use std::time::Duration;
///
/// let err: BoxError = Retryable::no(CircuitOpen::new(None, Duration::from_secs(2))).into();
/// let open = find_error::<CircuitOpen>(err.as_ref()).unwrap();
/// assert_eq!(open.retry_in(), Duration::from_secs(2));
/// ```
pub fn find_error<'e, T: Error + 'static>(error: &'e (dyn Error + 'static)) -> Option<&'e T> {
    chain(error).find_map(|e| e.downcast_ref::<T>())
}

/// Whether `error` is, or wraps, [`DeadlineExceeded`]: the call ran out of
/// its *caller's* time.
///
/// That is nobody's fault but the caller's, so the built-in classifiers count
/// it as neither a success nor a failure (see
/// [`default_error_outcome`](crate::protocol::default_error_outcome)). An
/// attempt's [`TimedOut`] is not a deadline: that limit belongs to the peer.
pub fn is_deadline_exceeded(error: &(dyn Error + 'static)) -> bool {
    find_error::<DeadlineExceeded>(error).is_some()
}

/// A Palisade error found behind any error: a `match`able view of the first
/// failure kind in a source chain.
///
/// ```
/// use palisade_core::error::{BoxError, BulkheadFull, BulkheadRejection, PalisadeError};
/// use palisade_core::protocol::GrpcCode;
///
/// let err: BoxError = BulkheadFull::new(3, 10, BulkheadRejection::QueueFull).into();
/// let found = PalisadeError::find(err.as_ref()).unwrap();
/// assert!(matches!(found, PalisadeError::BulkheadFull(_)));
/// assert_eq!(found.grpc_code(), GrpcCode::RESOURCE_EXHAUSTED);
/// assert_eq!(found.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
/// ```
///
/// # What each kind means to a caller
///
/// | kind | gRPC code | http status | `Retry-After` |
/// |---|---|---|---|
/// | [`CircuitOpen`] | `UNAVAILABLE` | 503 Service Unavailable | until the next probe |
/// | [`NoAvailablePeers`] | `UNAVAILABLE` | 503 Service Unavailable | until the next probe, if a peer is open |
/// | [`BulkheadFull`] | `RESOURCE_EXHAUSTED` | 429 Too Many Requests | none |
/// | [`TimedOut`] | `DEADLINE_EXCEEDED` | 504 Gateway Timeout | none |
/// | [`DeadlineExceeded`] | `DEADLINE_EXCEEDED` | 504 Gateway Timeout | none |
/// | [`PolledAfterCompletion`] | `INTERNAL` | 500 Internal Server Error | none |
///
/// A full bulkhead is 429 rather than 503: it is the gRPC convention
/// (`RESOURCE_EXHAUSTED` is 429 in Google's and grpc-gateway's mappings),
/// and it keeps "this client is sending more than it allowed itself" apart
/// from "the peers are down", which callers and load balancers treat
/// differently. `Retry-After` is in whole seconds, rounded up, and at least
/// 1: a `CircuitOpen` whose probe is due but whose probe slots are taken
/// frees a slot within about one call.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum PalisadeError<'e> {
    /// A breaker refused the call.
    CircuitOpen(&'e CircuitOpen),
    /// A bulkhead refused the call.
    BulkheadFull(&'e BulkheadFull),
    /// A timeout fired.
    TimedOut(&'e TimedOut),
    /// The call's deadline passed.
    DeadlineExceeded(&'e DeadlineExceeded),
    /// The balancer found no peer.
    NoAvailablePeers(&'e NoAvailablePeers),
    /// A response future was polled after completion (a caller bug).
    PolledAfterCompletion(&'e PolledAfterCompletion),
}

impl<'e> PalisadeError<'e> {
    /// The first Palisade error in `error`'s source chain, `error` itself included.
    pub fn find(error: &'e (dyn Error + 'static)) -> Option<Self> {
        chain(error).find_map(Self::of)
    }

    fn of(error: &'e (dyn Error + 'static)) -> Option<Self> {
        if let Some(e) = error.downcast_ref() {
            return Some(PalisadeError::CircuitOpen(e));
        }
        if let Some(e) = error.downcast_ref() {
            return Some(PalisadeError::BulkheadFull(e));
        }
        if let Some(e) = error.downcast_ref() {
            return Some(PalisadeError::TimedOut(e));
        }
        if let Some(e) = error.downcast_ref() {
            return Some(PalisadeError::DeadlineExceeded(e));
        }
        if let Some(e) = error.downcast_ref() {
            return Some(PalisadeError::NoAvailablePeers(e));
        }
        error.downcast_ref().map(PalisadeError::PolledAfterCompletion)
    }

    /// The error itself.
    pub fn as_error(&self) -> &'e (dyn Error + 'static) {
        match *self {
            PalisadeError::CircuitOpen(e) => e,
            PalisadeError::BulkheadFull(e) => e,
            PalisadeError::TimedOut(e) => e,
            PalisadeError::DeadlineExceeded(e) => e,
            PalisadeError::NoAvailablePeers(e) => e,
            PalisadeError::PolledAfterCompletion(e) => e,
        }
    }

    /// The gRPC code a caller should see (see the table above).
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            PalisadeError::CircuitOpen(_) | PalisadeError::NoAvailablePeers(_) => GrpcCode::UNAVAILABLE,
            PalisadeError::BulkheadFull(_) => GrpcCode::RESOURCE_EXHAUSTED,
            PalisadeError::TimedOut(_) | PalisadeError::DeadlineExceeded(_) => GrpcCode::DEADLINE_EXCEEDED,
            PalisadeError::PolledAfterCompletion(_) => GrpcCode::INTERNAL,
        }
    }

    /// The http status a server should answer with (see the table above).
    pub fn http_status(&self) -> StatusCode {
        match self {
            PalisadeError::CircuitOpen(_) | PalisadeError::NoAvailablePeers(_) => StatusCode::SERVICE_UNAVAILABLE,
            PalisadeError::BulkheadFull(_) => StatusCode::TOO_MANY_REQUESTS,
            PalisadeError::TimedOut(_) | PalisadeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            PalisadeError::PolledAfterCompletion(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long a caller should wait before trying again, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PalisadeError::CircuitOpen(open) => Some(open.retry_in()),
            PalisadeError::NoAvailablePeers(none) => none.next_probe_in(),
            _ => None,
        }
    }

    /// [`retry_after`](Self::retry_after) as a `Retry-After` header value:
    /// whole seconds, rounded up, at least 1.
    pub fn retry_after_header(&self) -> Option<HeaderValue> {
        let wait = self.retry_after()?;
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(HeaderValue::from(seconds.max(1)))
    }
}

/// The http status for the Palisade error behind `error`, if there is one
/// (see [`PalisadeError`]'s table): for a server that answers its own callers
/// when a call it made on their behalf failed.
///
/// ```
/// use palisade_core::error::{BoxError, CircuitOpen, PalisadeError, http_status};
/// use std::time::Duration;
///
/// let err: BoxError = CircuitOpen::new(None, Duration::from_millis(2500)).into();
/// assert_eq!(http_status(err.as_ref()), Some(http::StatusCode::SERVICE_UNAVAILABLE));
///
/// // The whole answer: status and Retry-After.
/// let found = PalisadeError::find(err.as_ref()).unwrap();
/// let mut response = http::Response::builder().status(found.http_status());
/// if let Some(wait) = found.retry_after_header() {
///     response = response.header(http::header::RETRY_AFTER, wait);
/// }
/// let response = response.body(()).unwrap();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "3");
/// ```
pub fn http_status(error: &(dyn Error + 'static)) -> Option<StatusCode> {
    PalisadeError::find(error).map(|e| e.http_status())
}
