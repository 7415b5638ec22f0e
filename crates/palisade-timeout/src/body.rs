//! Whether a timeout layer bounds response bodies: a typestate of its
//! builder, layer, service and future, so that a timeout without body limits
//! hands the inner response back as it is (as tower's `Timeout` does), with
//! no wrapper and no per-call branch.

use palisade_body::{BodyLimits, TrackResponse};
use palisade_core::classify::{Outcome, Verdict};

/// No body limits (the default): the response is the inner service's,
/// untouched. [`TimeoutBuilder::body_timeout`](crate::TimeoutBuilder::body_timeout)
/// and [`body_idle_timeout`](crate::TimeoutBuilder::body_idle_timeout) move
/// the builder to [`BodyLimited`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoBodyLimits;

/// Body limits are set: an http response's body is wrapped (by the
/// protocol, through [`palisade_body`]) and ended with
/// [`TimedOut`](crate::TimedOut) when it takes too long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyLimited(BodyLimits);

impl BodyLimited {
    pub(crate) fn new(limits: BodyLimits) -> Self {
        Self(limits)
    }

    /// The limits.
    pub fn limits(&self) -> BodyLimits {
        self.0
    }
}

/// The body-limit state of a timeout: [`NoBodyLimits`] or [`BodyLimited`].
pub trait BodyMode: Copy + Send + Sync + 'static {
    /// The limits ([`BodyLimits::NONE`] for [`NoBodyLimits`]).
    fn limits(&self) -> BodyLimits;
}

impl BodyMode for NoBodyLimits {
    #[inline]
    fn limits(&self) -> BodyLimits {
        BodyLimits::NONE
    }
}

impl BodyMode for BodyLimited {
    #[inline]
    fn limits(&self) -> BodyLimits {
        self.0
    }
}

/// What a timeout in body-limit state `Self` hands back for a response
/// `Res` of a service failing with `E`, spoken with protocol `P`.
///
/// A trait over the protocol and response rather than a generic associated
/// type: [`NoBodyLimits`] then asks nothing of `P` (no
/// [`TrackResponse`] bound), so any response passes through, a tracked body
/// from below included.
pub trait TrackBody<P, Res, E>: BodyMode {
    /// The response handed back: `Res` itself, or `P`'s wrapped response.
    type Response;

    /// Follows `response` to the end of its body, if this state bounds it.
    fn track_body(&self, protocol: &P, response: Res) -> Self::Response;
}

impl<P, Res, E> TrackBody<P, Res, E> for NoBodyLimits {
    type Response = Res;

    #[inline]
    fn track_body(&self, _: &P, response: Res) -> Res {
        response
    }
}

impl<P, Res, E> TrackBody<P, Res, E> for BodyLimited
where
    P: TrackResponse<Res, E, ()>,
{
    type Response = P::Response;

    #[inline]
    fn track_body(&self, protocol: &P, response: Res) -> P::Response {
        // The guard is `()`: nothing here needs the response's outcome
        // (only its end, for the limits), so it is not classified.
        protocol.track_response(response, Verdict::Now(Outcome::Ignored), (), self.0)
    }
}
