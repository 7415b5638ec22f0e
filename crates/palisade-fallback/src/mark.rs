//! How a response says it came from a fallback.
//!
//! - An `http::Response<B>` (hyper, tonic's `Channel`) carries a
//!   [`FromFallback`] in its extensions; tonic moves response extensions into
//!   `tonic::Response::extensions()`, so a tonic caller sees it too. This is
//!   the default ([`ByTrait`]), through the [`MarkFallback`] trait, which you
//!   can implement for your own response types.
//! - Any other response: choose [`served`](crate::FallbackBuilder::served)
//!   and the layer answers [`Served<Res>`], which says whether the value came
//!   from the fallback; or [`unmarked`](crate::FallbackBuilder::unmarked) to
//!   leave responses as they are (listeners and metrics still see every
//!   fallback).

use palisade_core::protocol::GrpcCode;

use crate::error::FailedResponse;

/// Why a fallback answered, as recorded on the response, in events and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// A circuit breaker refused the call ([`CircuitOpen`](crate::error::CircuitOpen)).
    CircuitOpen,
    /// The balancer found no peer ([`NoAvailablePeers`](crate::error::NoAvailablePeers)).
    NoAvailablePeers,
    /// A bulkhead refused the call ([`BulkheadFull`](crate::error::BulkheadFull)).
    BulkheadFull,
    /// A timeout fired ([`TimedOut`](crate::error::TimedOut)).
    TimedOut,
    /// The call's deadline passed ([`DeadlineExceeded`](crate::error::DeadlineExceeded)).
    DeadlineExceeded,
    /// Any other error (a transport error, an error of the inner service).
    Error,
    /// A response classified as a failure ([`FailedResponse`]).
    FailedResponse,
}

impl FallbackReason {
    /// A short name, used as the `reason` tracing field and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::CircuitOpen => "circuit open",
            FallbackReason::NoAvailablePeers => "no available peers",
            FallbackReason::BulkheadFull => "bulkhead full",
            FallbackReason::TimedOut => "timed out",
            FallbackReason::DeadlineExceeded => "deadline exceeded",
            FallbackReason::Error => "error",
            FallbackReason::FailedResponse => "failed response",
        }
    }

    /// The reason for `error`: the first Palisade kind found in it or its
    /// chain of sources, else [`FallbackReason::Error`].
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        use crate::error::{BulkheadFull, CircuitOpen, DeadlineExceeded, NoAvailablePeers, TimedOut};
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<FailedResponse>() {
                return FallbackReason::FailedResponse;
            } else if e.is::<CircuitOpen>() {
                return FallbackReason::CircuitOpen;
            } else if e.is::<NoAvailablePeers>() {
                return FallbackReason::NoAvailablePeers;
            } else if e.is::<BulkheadFull>() {
                return FallbackReason::BulkheadFull;
            } else if e.is::<TimedOut>() {
                return FallbackReason::TimedOut;
            } else if e.is::<DeadlineExceeded>() {
                return FallbackReason::DeadlineExceeded;
            }
            current = e.source();
        }
        FallbackReason::Error
    }
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mark on a response that a fallback produced: in the extensions of an
/// `http::Response`, or in [`Served::from_fallback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FromFallback {
    /// Why the fallback answered.
    pub reason: FallbackReason,
    /// Whether the call's own [`CallFallback`](crate::CallFallback) answered
    /// (rather than the layer's source).
    pub per_call: bool,
}

/// A response type that can carry the [`FromFallback`] mark.
///
/// Implemented for `http::Response<B>` (a response extension). Implement it for
/// your own response type to keep the layer's default marking:
///
/// ```
/// use palisade_fallback::{FromFallback, MarkFallback};
///
/// struct Quote { price: u64, stale: bool }
///
/// impl MarkFallback for Quote {
///     fn mark_fallback(&mut self, _: FromFallback) {
///         self.stale = true;
///     }
/// }
/// ```
pub trait MarkFallback {
    /// Records on `self` that it came from a fallback.
    fn mark_fallback(&mut self, from: FromFallback);

    /// Describes this response when a response rule replaced it (the error the
    /// fallback is given). Nothing by default.
    fn describe_failure(&self) -> FailedResponse {
        FailedResponse::new(None, None)
    }
}

impl<B> MarkFallback for http::Response<B> {
    fn mark_fallback(&mut self, from: FromFallback) {
        self.extensions_mut().insert(from);
    }

    fn describe_failure(&self) -> FailedResponse {
        FailedResponse::new(Some(self.status()), GrpcCode::from_headers(self.headers()))
    }
}

/// How the layer turns the inner service's response type `Res` into its own
/// response, marking fallback answers. See the [module docs](self).
pub trait Mark<Res> {
    /// The layer's response type.
    type Response;

    /// A response of the inner service, passed through.
    fn pass(&self, response: Res) -> Self::Response;

    /// A response produced by a fallback.
    fn fallback(&self, response: Res, from: FromFallback) -> Self::Response;

    /// Describes a response that a response rule rejected.
    fn describe_failure(&self, response: &Res) -> FailedResponse {
        let _ = response;
        FailedResponse::new(None, None)
    }
}

/// Marks through [`MarkFallback`] (a response extension for http). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByTrait;

impl<Res: MarkFallback> Mark<Res> for ByTrait {
    type Response = Res;

    #[inline]
    fn pass(&self, response: Res) -> Res {
        response
    }

    fn fallback(&self, mut response: Res, from: FromFallback) -> Res {
        response.mark_fallback(from);
        response
    }

    fn describe_failure(&self, response: &Res) -> FailedResponse {
        response.describe_failure()
    }
}

/// Leaves responses unmarked: only listeners and metrics tell a fallback answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unmarked;

impl<Res> Mark<Res> for Unmarked {
    type Response = Res;

    #[inline]
    fn pass(&self, response: Res) -> Res {
        response
    }

    fn fallback(&self, response: Res, _: FromFallback) -> Res {
        response
    }
}

/// Wraps every response in [`Served`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrap;

impl<Res> Mark<Res> for Wrap {
    type Response = Served<Res>;

    #[inline]
    fn pass(&self, response: Res) -> Served<Res> {
        Served {
            value: response,
            from_fallback: None,
        }
    }

    fn fallback(&self, response: Res, from: FromFallback) -> Served<Res> {
        Served {
            value: response,
            from_fallback: Some(from),
        }
    }
}

/// A response and whether a fallback produced it (the layer's response type
/// after [`served`](crate::FallbackBuilder::served)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served<T> {
    /// The response.
    pub value: T,
    /// `Some` when a fallback produced it.
    pub from_fallback: Option<FromFallback>,
}

impl<T> Served<T> {
    /// Whether a fallback produced the value.
    pub fn is_fallback(&self) -> bool {
        self.from_fallback.is_some()
    }

    /// The value, forgetting where it came from.
    pub fn into_inner(self) -> T {
        self.value
    }
}
