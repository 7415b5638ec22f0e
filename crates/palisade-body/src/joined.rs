//! [`Joined`]: the protocol of a layer that sits above another tracking
//! layer over http, whose hook joins the body already tracked below it.

use http::{HeaderMap, Method};
use palisade_core::classify::{AbandonPolicy, Classify, Outcome, Verdict};
use palisade_core::options::CallOptions;
use palisade_core::peer::AttemptRecord;
use palisade_core::protocol::{Inspect, IsGrpc};

use crate::body::CompletionBody;
use crate::end::OnEnd;
use crate::limits::BodyLimits;
use crate::track::{Settle, SettleOnEnd, TrackResponse};

/// Protocol `P` for a layer whose inner service already answers with a
/// [`CompletionBody`] (another tracking layer is below it): instead of
/// wrapping the body again, the layer's hook joins the body that is there
/// ([`CompletionBody::join`]).
///
/// Classifies, inspects and reports gRPC exactly as `P` does (it forwards
/// [`Classify`], [`Inspect`] and [`IsGrpc`]; `palisade-discovery` forwards
/// its `TagPeer` too), so a layer spoken with `Joined(Grpc::default())`
/// behaves as with `Grpc::default()`, with one body under the whole stack:
/// one poll path, one end-of-stream check, every guard settled once at the
/// end. Over a response whose body is not a [`CompletionBody`] it does not
/// compile: the lowest tracking layer of a stack speaks `P` itself.
///
/// The hooks hear what they would hear nested: the inner one first, then
/// this one; a body whose end was already seen (when it was wrapped, or at
/// its latest poll) reports [`Eos`](crate::BodyEnd::Eos) at once to the new
/// hook, and one that ended since is found at its next poll; trailers, an error
/// or a drop before the end reach every hook once. The one difference is a
/// time limit: the joined body's limits merge with the inner's (the earlier
/// total deadline, the shorter idle limit), and when one fires every hook
/// hears the [`TimedOut`](palisade_core::error::TimedOut) error naming it,
/// where nested bodies would report it to the outer hooks and `Dropped` to
/// the inner ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Joined<P>(pub P);

impl<P> Joined<P> {
    /// The protocol it forwards to.
    pub fn inner(&self) -> &P {
        &self.0
    }
}

impl<P: Classify<Res, E>, Res, E> Classify<Res, E> for Joined<P> {
    type Eos = P::Eos;

    #[inline]
    fn classify_response(&self, response: &Res) -> Verdict<P::Eos> {
        self.0.classify_response(response)
    }

    #[inline]
    fn classify_error(&self, error: &E) -> Outcome {
        self.0.classify_error(error)
    }

    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        self.0.abandon_policy()
    }

    #[inline]
    fn is_deadline_response(&self, response: &Res) -> bool {
        self.0.is_deadline_response(response)
    }
}

impl<P: Inspect<Req>, Req> Inspect<Req> for Joined<P> {
    #[inline]
    fn extensions<'r>(&self, request: &'r Req) -> Option<&'r http::Extensions> {
        self.0.extensions(request)
    }

    #[inline]
    fn extensions_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut http::Extensions> {
        self.0.extensions_mut(request)
    }

    #[inline]
    fn headers_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut HeaderMap> {
        self.0.headers_mut(request)
    }

    #[inline]
    fn route<'r>(&self, request: &'r Req) -> Option<&'r str> {
        self.0.route(request)
    }

    #[inline]
    fn method<'r>(&self, request: &'r Req) -> Option<&'r Method> {
        self.0.method(request)
    }

    #[inline]
    fn call_options<'r>(&self, request: &'r Req) -> Option<&'r CallOptions> {
        self.0.call_options(request)
    }

    #[inline]
    fn attempt_record<'r>(&self, request: &'r Req) -> Option<&'r AttemptRecord> {
        self.0.attempt_record(request)
    }
}

impl<P: IsGrpc> IsGrpc for Joined<P> {
    const IS_GRPC: bool = P::IS_GRPC;
}

impl<P, B, H, E, S> TrackResponse<http::Response<CompletionBody<B, H>>, E, S> for Joined<P>
where
    P: Classify<http::Response<CompletionBody<B, H>>, E>,
    B: http_body::Body,
    H: OnEnd,
    S: Settle,
{
    type Response = http::Response<CompletionBody<B, (H, SettleOnEnd<P::Eos, S>)>>;

    fn track_response(
        &self,
        response: http::Response<CompletionBody<B, H>>,
        verdict: Verdict<P::Eos>,
        settle: S,
        limits: BodyLimits,
    ) -> Self::Response {
        let policy = self.0.abandon_policy();
        response.map(|body| body.join(SettleOnEnd::new(verdict, settle, policy), limits))
    }
}
