//! What is retried, and how a request becomes several attempts.
//!
//! Two traits connect the layer to a protocol (the `P` type parameter of
//! [`RetryLayer`](crate::RetryLayer)):
//!
//! - [`RetryProtocol`] turns one request into attempts: [`Plain`] clones a
//!   `Req: Clone` for each attempt (as `tower::retry` does); [`Http`] and
//!   [`Grpc`] wrap an `http::Request<B>`'s body in a [`ReplayBody`] so it can
//!   be sent again without `B: Clone`.
//! - [`RetryOn`] holds the protocol's default retry rules, reads server
//!   pushback and the peer an attempt used, and marks the final response with
//!   [`Attempts`].
//!
//! A [`Predicate`] decides after each attempt: [`DefaultPredicate`] asks the
//! protocol's rules, [`Replace`] asks only the user's
//! [`RetryPredicate`], [`Extend`] asks the
//! defaults first and the user's predicate when the defaults say no (but never
//! for an error that must not be retried).
//!
//! # The default rules
//!
//! | result | retried |
//! |---|---|
//! | an error that [`error_retryability`] calls retryable: connection errors, [`CircuitOpen`], [`NoAvailablePeers`](palisade_core::error::NoAvailablePeers), an attempt's [`TimedOut`](palisade_core::error::TimedOut), a [`Retryable::yes`](palisade_core::retry::Retryable::yes) mark | yes |
//! | [`DeadlineExceeded`](palisade_core::error::DeadlineExceeded), a [`Retryable::no`](palisade_core::retry::Retryable::no) mark, any other error | no |
//! | [`Http`]: a 502, 503 or 504 response to an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, or [`CallOptions::idempotent`] true) | yes |
//! | [`Grpc`]: a trailers-only response with `grpc-status: 14` (UNAVAILABLE), or a 502/503/504 (which gRPC maps to UNAVAILABLE) | yes |
//! | [`Grpc`]: a response whose status is only in its trailers | no: the call is committed once headers arrived |
//! | anything else | no |
//!
//! When a retry is decided, the layer (not the predicate) chooses the delay:
//! [server pushback](crate::pushback), else for a
//! [`CircuitOpen`] refused with no new peer recorded for the attempt
//! ([`RetryProtocol::switched_peer`]) the breaker's `retry_in`, else the
//! backoff. A predicate that answers
//! [`RetryDecision::RetryAfter`] chooses the delay itself.

use palisade_core::BoxError;
use palisade_core::error::CircuitOpen;
use palisade_core::grpc_timeout;
use palisade_core::options::{CallOptions, CallOptionsExt};
use palisade_core::peer::{AttemptRecord, PeerId};
use palisade_core::protocol::{Grpc, GrpcCode, Http, Inspect, Plain};
use palisade_core::retry::{RetryDecision, RetryPredicate, Retryability, Retryable, error_retryability};

use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::body::RetryBody;
use crate::pushback::{self, Pushback};
use crate::replay::{ReplayBody, ReplaySource};

/// The number of attempts a call took, put in the extensions of the final
/// http response by [`Http`] and [`Grpc`] when the call was retried (more
/// than one attempt). A response without it took one attempt: the layer does
/// not touch the extensions on the success path, which would cost an
/// allocation per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);

/// How a protocol turns one request into attempts.
pub trait RetryProtocol<Req>: Inspect<Req> {
    /// The request the inner service receives on each attempt.
    type Attempt;
    /// What the layer keeps of the request to make later attempts.
    type Kept;
    /// What predicates see of the request.
    type View;

    /// The first attempt, and (when `may_retry`) what is kept for later ones.
    /// `replay_cap` bounds a replay buffer.
    fn first_attempt(&self, request: Req, replay_cap: usize, may_retry: bool) -> (Self::Attempt, Option<Self::Kept>);

    /// What predicates see of a kept request.
    fn view<'k>(&self, kept: &'k Self::Kept) -> &'k Self::View;

    /// The next attempt, or `None` when the request cannot be sent again.
    fn next_attempt(&self, kept: &Self::Kept) -> Option<Self::Attempt>;

    /// Whether the request can still be sent again (a replay buffer can be
    /// lost while an earlier attempt's body is still being sent). Checked
    /// before the budget is spent and again just before each later attempt.
    fn can_retry(&self, kept: &Self::Kept) -> bool {
        let _ = kept;
        true
    }

    /// Notes, for the next attempts, that an attempt used `peer`.
    fn record_peer(&self, kept: &mut Self::Kept, peer: PeerId) {
        let _ = (kept, peer);
    }

    /// A time limit the caller already wrote on the request itself (gRPC: a
    /// `grpc-timeout` header, as tonic's `Request::set_timeout` writes it):
    /// the layer treats it as a deadline from the moment of the call, so
    /// that later attempts carry the time left rather than the stale header.
    /// The first attempt keeps the header as the caller wrote it. The
    /// default: none.
    fn written_timeout(&self, request: &Req) -> Option<std::time::Duration> {
        let _ = request;
        None
    }

    /// Called just before an attempt of a call with a deadline is sent, with
    /// the deadline: [`Grpc`] writes the time left into `grpc-timeout`
    /// (rounded down, keeping a shorter one already there). The default does
    /// nothing. Calls without a deadline never get here.
    fn before_send(&self, attempt: &mut Self::Attempt, deadline: Instant) {
        let _ = (attempt, deadline);
    }

    /// Called just before a later attempt is sent, to note what the attempt
    /// record holds then (see [`switched_peer`](Self::switched_peer)).
    fn note_sent(&self, kept: &mut Self::Kept) {
        let _ = kept;
    }

    /// Whether something below (a balancer) recorded a new peer for the
    /// attempt that just ended, in the attempt record it carried: then a
    /// retry can go to another peer. The default (no record): never.
    fn switched_peer(&self, kept: &Self::Kept) -> bool {
        let _ = kept;
        false
    }

    /// Called once no further attempt can be made (the call is committed):
    /// [`Http`] and [`Grpc`] stop buffering the request body for replays.
    fn commit(&self, kept: &Self::Kept) {
        let _ = kept;
    }
}

/// A protocol's default retry rules, what it reads from results, and what
/// it keeps of a retried response.
pub trait RetryOn<View, Res> {
    /// The response a call returns: `Res` itself for [`Plain`], the response
    /// with its body in a [`RetryBody`] for [`Http`] and [`Grpc`].
    type Output;
    /// What is kept of a response whose retry was decided, through the
    /// backoff, should the next attempt not be sent: the response itself for
    /// [`Plain`] (it holds no body), only the head (`http::response::Parts`)
    /// for [`Http`] and [`Grpc`], so that the body (and every guard the
    /// layers below put in it) is dropped before the backoff sleep.
    type Held;

    /// An attempt's response as the call's (the success path: no copy).
    fn output(&self, response: Res) -> Self::Output;

    /// Keeps what the call needs of a response whose retry was decided.
    fn hold(&self, response: Res) -> Self::Held;

    /// A kept response as the call's, when no further attempt was sent.
    fn release(&self, held: Self::Held) -> Self::Output;

    /// The default decision on one attempt's result.
    fn decide(&self, view: &View, result: &Result<Res, BoxError>) -> RetryDecision {
        let _ = view;
        match result {
            Ok(_) => RetryDecision::DoNotRetry,
            Err(error) => decide_error(error),
        }
    }

    /// The server's pushback, if the result carries one.
    fn pushback(&self, result: &Result<Res, BoxError>) -> Option<Pushback> {
        let _ = result;
        None
    }

    /// The peer the attempt used, when the result names it.
    fn peer(&self, result: &Result<Res, BoxError>) -> Option<PeerId> {
        match result {
            Ok(_) => None,
            Err(error) => peer_of_error(error),
        }
    }

    /// Whether the result is a success, for the
    /// [throttle](crate::budget::Throttle) (only successes refill it). The
    /// default: any `Ok`. Asked only of a result that is not retried, and
    /// only when the layer has a throttle that is not full (a full one has
    /// nothing to refill): do not count calls with it.
    fn is_success(&self, result: &Result<Res, BoxError>) -> bool {
        result.is_ok()
    }

    /// Marks the final response with the number of attempts.
    fn finish(&self, response: &mut Self::Output, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// The default decision on an error: retry what [`error_retryability`] calls
/// retryable, nothing else.
pub fn decide_error(error: &BoxError) -> RetryDecision {
    match error_retryability(error.as_ref()) {
        Retryability::Retry => RetryDecision::Retry,
        Retryability::Never | Retryability::Unknown => RetryDecision::DoNotRetry,
    }
}

fn peer_of_error(error: &BoxError) -> Option<PeerId> {
    circuit_open(error).and_then(|open| open.peer().cloned())
}

/// The [`CircuitOpen`] in `error` or its sources (looking inside a
/// [`Retryable`] mark too), if any.
pub(crate) fn circuit_open(error: &BoxError) -> Option<&CircuitOpen> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(err) = next {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return Some(open);
        }
        next = match err.downcast_ref::<Retryable>() {
            Some(marked) => Some(marked.inner()),
            None => err.source(),
        };
    }
    None
}

/// Whether a request may be sent twice: [`CallOptions::idempotent`] if set,
/// else whether its method is GET, HEAD, OPTIONS, PUT or DELETE.
pub fn is_idempotent(method: &Method, options: Option<&CallOptions>) -> bool {
    if let Some(marked) = options.and_then(CallOptions::idempotent) {
        return marked;
    }
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

// ---- Plain: Req: Clone, one clone per attempt ----

impl<Req: Clone> RetryProtocol<Req> for Plain {
    type Attempt = Req;
    type Kept = Req;
    type View = Req;

    #[inline]
    fn first_attempt(&self, request: Req, _: usize, may_retry: bool) -> (Req, Option<Req>) {
        if may_retry {
            (request.clone(), Some(request))
        } else {
            (request, None)
        }
    }

    #[inline]
    fn view<'k>(&self, kept: &'k Req) -> &'k Req {
        kept
    }

    #[inline]
    fn next_attempt(&self, kept: &Req) -> Option<Req> {
        Some(kept.clone())
    }
}

impl<View, Res> RetryOn<View, Res> for Plain {
    type Output = Res;
    type Held = Res;

    #[inline]
    fn output(&self, response: Res) -> Res {
        response
    }

    #[inline]
    fn hold(&self, response: Res) -> Res {
        response
    }

    #[inline]
    fn release(&self, held: Res) -> Res {
        held
    }
}

// ---- Http and Grpc: replayable bodies ----

/// The head of a response whose body is dropped now: should it stand as the
/// call's response, it goes out with an empty body, so the headers that
/// described the dropped body's framing go too (a server would otherwise
/// announce a `content-length` it never sends).
fn hold_head<RB>(response: http::Response<RB>) -> http::response::Parts {
    let mut head = response.into_parts().0;
    head.headers.remove(http::header::CONTENT_LENGTH);
    head.headers.remove(http::header::TRANSFER_ENCODING);
    head
}

/// What [`Http`] and [`Grpc`] keep of a request between attempts: its head
/// (method, uri, headers, extensions), a handle on its replay buffer and the
/// call's [`AttemptRecord`].
///
/// The head's extensions are the request's as the caller sent them: the
/// attempt record the layer adds (when the caller brought none) travels on
/// the attempts, not in the head, so a predicate's view does not hold it. A
/// balancer below names the peer each attempt went to on its response (a
/// [`PeerId`] in the response's extensions).
#[derive(Debug)]
pub struct KeptRequest<B> {
    /// Without the attempt record: each later attempt gets a handle on
    /// `record` (kept apart so that the copy of the head does not box a
    /// clone of it on every call, only on retries).
    head: http::Request<()>,
    body: ReplaySource<B>,
    record: AttemptRecord,
    /// How many peers the attempt record held when the latest attempt was sent.
    recorded_at_send: usize,
}

impl<B> KeptRequest<B> {
    /// The request's head, as predicates see it (without the layer's own
    /// attempt record: see [`KeptRequest`]).
    pub fn head(&self) -> &http::Request<()> {
        &self.head
    }
}

fn first_http_attempt<B: http_body::Body>(
    request: http::Request<B>,
    cap: usize,
    may_retry: bool,
) -> (http::Request<ReplayBody<B>>, Option<KeptRequest<B>>) {
    if !may_retry {
        return (request.map(ReplayBody::once), None);
    }
    let (mut parts, body) = request.into_parts();
    // A record the caller brought may hold peers already (and stays in the
    // copy of the head); a new one is empty (no lock taken on this path).
    let (record, recorded_at_send, brought) = match parts.extensions.attempt_record() {
        Some(record) => (record.clone(), record.len(), true),
        None => (AttemptRecord::default(), 0, false),
    };
    let body = ReplayBody::new(body, cap);
    let kept = body.source().map(|source| KeptRequest {
        head: http::Request::from_parts(parts.clone(), ()),
        body: source,
        record: record.clone(),
        recorded_at_send,
    });
    if !brought {
        parts.extensions.insert(record);
    }
    (http::Request::from_parts(parts, body), kept)
}

/// How much longer than the time left a `grpc-timeout` already on an attempt
/// may be and still be kept: one written for this very deadline a moment ago
/// (by the total timeout just above, for the first attempt) is true to within
/// its own rounding, and writing it again would format and allocate a header
/// value per call for microseconds.
const STAMP_SLACK: std::time::Duration = std::time::Duration::from_millis(1);

/// Writes the time left until `deadline` as the attempt's `grpc-timeout`,
/// unless the header already says that (within [`STAMP_SLACK`]) or less.
fn stamp_grpc_timeout<B>(attempt: &mut http::Request<B>, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let fresh = attempt
        .headers()
        .get(&grpc_timeout::GRPC_TIMEOUT_HEADER)
        .and_then(grpc_timeout::parse_header)
        .is_some_and(|sent| sent <= left + STAMP_SLACK);
    if !fresh {
        attempt
            .headers_mut()
            .insert(grpc_timeout::GRPC_TIMEOUT_HEADER, grpc_timeout::wire_value(left));
    }
}

fn next_http_attempt<B: http_body::Body>(kept: &KeptRequest<B>) -> Option<http::Request<ReplayBody<B>>> {
    let body = kept.body.replay()?;
    let mut attempt = kept.head.clone().map(|()| body);
    attempt.extensions_mut().insert(kept.record.clone());
    Some(attempt)
}

fn record_http_peer<B>(kept: &mut KeptRequest<B>, peer: PeerId) {
    // The record is a shared handle: every attempt holds a clone of it, so
    // a balancer's entries are already here; a peer equal to the last one is
    // not recorded twice.
    kept.record.record(peer);
}

macro_rules! replayable_protocol {
    ($protocol:ty, $stamp:expr) => {
        impl<B: http_body::Body> RetryProtocol<http::Request<B>> for $protocol {
            type Attempt = http::Request<ReplayBody<B>>;
            type Kept = KeptRequest<B>;
            type View = http::Request<()>;

            #[inline]
            fn first_attempt(
                &self,
                request: http::Request<B>,
                cap: usize,
                may_retry: bool,
            ) -> (Self::Attempt, Option<Self::Kept>) {
                first_http_attempt(request, cap, may_retry)
            }

            #[inline]
            fn view<'k>(&self, kept: &'k Self::Kept) -> &'k http::Request<()> {
                &kept.head
            }

            #[inline]
            fn next_attempt(&self, kept: &Self::Kept) -> Option<Self::Attempt> {
                next_http_attempt(kept)
            }

            fn record_peer(&self, kept: &mut Self::Kept, peer: PeerId) {
                record_http_peer(kept, peer)
            }

            #[inline]
            fn can_retry(&self, kept: &Self::Kept) -> bool {
                kept.body.is_replayable()
            }

            #[inline]
            fn written_timeout(&self, request: &http::Request<B>) -> Option<std::time::Duration> {
                if $stamp {
                    request
                        .headers()
                        .get(&grpc_timeout::GRPC_TIMEOUT_HEADER)
                        .and_then(grpc_timeout::parse_header)
                } else {
                    None
                }
            }

            fn before_send(&self, attempt: &mut Self::Attempt, deadline: Instant) {
                if $stamp {
                    stamp_grpc_timeout(attempt, deadline);
                }
            }

            fn note_sent(&self, kept: &mut Self::Kept) {
                kept.recorded_at_send = kept.record.len();
            }

            fn switched_peer(&self, kept: &Self::Kept) -> bool {
                kept.record.len() > kept.recorded_at_send
            }

            fn commit(&self, kept: &Self::Kept) {
                kept.body.commit();
            }
        }
    };
}

// Only gRPC has a header for the time left; plain http is left to a timeout
// layer's `propagate_header`.
replayable_protocol!(Http, false);
replayable_protocol!(Grpc, true);

impl<RB> RetryOn<http::Request<()>, http::Response<RB>> for Http {
    type Output = http::Response<RetryBody<RB>>;
    type Held = http::response::Parts;

    #[inline]
    fn output(&self, response: http::Response<RB>) -> Self::Output {
        response.map(RetryBody::new)
    }

    fn hold(&self, response: http::Response<RB>) -> http::response::Parts {
        hold_head(response)
    }

    fn release(&self, held: http::response::Parts) -> Self::Output {
        http::Response::from_parts(held, RetryBody::empty())
    }

    fn decide(&self, view: &http::Request<()>, result: &Result<http::Response<RB>, BoxError>) -> RetryDecision {
        match result {
            Ok(response) if is_gateway_failure(response.status()) => {
                if is_idempotent(view.method(), view.call_options()) {
                    RetryDecision::Retry
                } else {
                    RetryDecision::DoNotRetry
                }
            }
            Ok(_) => RetryDecision::DoNotRetry,
            Err(error) => decide_error(error),
        }
    }

    fn pushback(&self, result: &Result<http::Response<RB>, BoxError>) -> Option<Pushback> {
        result.as_ref().ok().and_then(|r| pushback::from_headers(r.headers()))
    }

    fn peer(&self, result: &Result<http::Response<RB>, BoxError>) -> Option<PeerId> {
        match result {
            Ok(response) => response.extensions().get::<PeerId>().cloned(),
            Err(error) => peer_of_error(error),
        }
    }

    /// A response below 500.
    fn is_success(&self, result: &Result<http::Response<RB>, BoxError>) -> bool {
        result.as_ref().is_ok_and(|r| !r.status().is_server_error())
    }

    fn finish(&self, response: &mut Self::Output, attempts: u32) {
        mark_attempts(response, attempts);
    }
}

/// Only a retried call's response is marked: the success path stays free of
/// the extensions map's allocation. No [`Attempts`] means one attempt.
fn mark_attempts<RB>(response: &mut http::Response<RB>, attempts: u32) {
    if attempts > 1 {
        response.extensions_mut().insert(Attempts(attempts));
    }
}

impl<RB> RetryOn<http::Request<()>, http::Response<RB>> for Grpc {
    type Output = http::Response<RetryBody<RB>>;
    type Held = http::response::Parts;

    #[inline]
    fn output(&self, response: http::Response<RB>) -> Self::Output {
        response.map(RetryBody::new)
    }

    fn hold(&self, response: http::Response<RB>) -> http::response::Parts {
        hold_head(response)
    }

    fn release(&self, held: http::response::Parts) -> Self::Output {
        http::Response::from_parts(held, RetryBody::empty())
    }

    fn decide(&self, _: &http::Request<()>, result: &Result<http::Response<RB>, BoxError>) -> RetryDecision {
        match result {
            Ok(response) if is_gateway_failure(response.status()) => RetryDecision::Retry,
            Ok(response)
                if response.status() == StatusCode::OK
                    && GrpcCode::from_headers(response.headers()) == Some(GrpcCode::UNAVAILABLE) =>
            {
                RetryDecision::Retry
            }
            // Any other response is committed: a status only in the trailers
            // comes too late to replay the call.
            Ok(_) => RetryDecision::DoNotRetry,
            Err(error) => decide_error(error),
        }
    }

    fn pushback(&self, result: &Result<http::Response<RB>, BoxError>) -> Option<Pushback> {
        result.as_ref().ok().and_then(|r| pushback::from_headers(r.headers()))
    }

    fn peer(&self, result: &Result<http::Response<RB>, BoxError>) -> Option<PeerId> {
        match result {
            Ok(response) => response.extensions().get::<PeerId>().cloned(),
            Err(error) => peer_of_error(error),
        }
    }

    /// A non-5xx response whose headers carry no `grpc-status` (it comes in
    /// the trailers) or `grpc-status: 0`; a trailers-only error is a failure.
    fn is_success(&self, result: &Result<http::Response<RB>, BoxError>) -> bool {
        result.as_ref().is_ok_and(|r| {
            !r.status().is_server_error() && GrpcCode::from_headers(r.headers()).is_none_or(|code| code == GrpcCode::OK)
        })
    }

    fn finish(&self, response: &mut Self::Output, attempts: u32) {
        mark_attempts(response, attempts);
    }
}

// ---- Predicates ----

/// Decides, after each attempt, whether to retry. Implemented by
/// [`DefaultPredicate`], [`Replace`] and [`Extend`].
pub trait Predicate<P, View, Res> {
    /// The decision on one attempt's result.
    fn decide(&self, protocol: &P, view: &View, result: &Result<Res, BoxError>) -> RetryDecision;
}

/// The protocol's default rules (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPredicate;

impl<P, View, Res> Predicate<P, View, Res> for DefaultPredicate
where
    P: RetryOn<View, Res>,
{
    #[inline]
    fn decide(&self, protocol: &P, view: &View, result: &Result<Res, BoxError>) -> RetryDecision {
        protocol.decide(view, result)
    }
}

/// Only the user's predicate decides.
#[derive(Clone, Copy, Debug)]
pub struct Replace<F>(pub F);

impl<P, View, Res, F> Predicate<P, View, Res> for Replace<F>
where
    F: RetryPredicate<View, Res, BoxError>,
{
    #[inline]
    fn decide(&self, _: &P, view: &View, result: &Result<Res, BoxError>) -> RetryDecision {
        self.0.decide(view, result)
    }
}

/// The default rules first; when they say no, the user's predicate, except for
/// an error that must never be retried (a passed deadline, a
/// [`Retryable::no`](palisade_core::retry::Retryable::no) mark).
#[derive(Clone, Copy, Debug)]
pub struct Extend<F>(pub F);

impl<P, View, Res, F> Predicate<P, View, Res> for Extend<F>
where
    P: RetryOn<View, Res>,
    F: RetryPredicate<View, Res, BoxError>,
{
    fn decide(&self, protocol: &P, view: &View, result: &Result<Res, BoxError>) -> RetryDecision {
        match protocol.decide(view, result) {
            RetryDecision::DoNotRetry => {
                if let Err(error) = result
                    && error_retryability(error.as_ref()) == Retryability::Never
                {
                    return RetryDecision::DoNotRetry;
                }
                self.0.decide(view, result)
            }
            retry => retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::error::{DeadlineExceeded, NoAvailablePeers};
    use palisade_core::retry::Retryable;
    use std::time::Duration;

    #[test]
    fn the_kept_request_holds_a_handle_on_the_body_not_a_body() {
        // The kept request lives in every call's future, which each layer
        // above moves: it holds the head, the record and a handle on the
        // body's shared state, not a body with room for the read state.
        type Body = http_body_util::Full<bytes::Bytes>;
        let kept = std::mem::size_of::<KeptRequest<Body>>();
        let head = std::mem::size_of::<http::Request<()>>();
        let body = std::mem::size_of::<ReplayBody<Body>>();
        assert!(
            kept < head + body,
            "{kept} bytes: {head} of head and {} more (a whole body is {body})",
            kept - head
        );
    }

    fn response(status: u16, grpc_status: Option<&str>) -> Result<http::Response<()>, BoxError> {
        let mut builder = http::Response::builder().status(status);
        if let Some(code) = grpc_status {
            builder = builder.header("grpc-status", code);
        }
        Ok(builder.body(()).unwrap())
    }

    fn request(method: Method) -> http::Request<()> {
        http::Request::builder().method(method).body(()).unwrap()
    }

    #[test]
    fn http_retries_gateway_failures_of_idempotent_requests_only() {
        let http = Http::default();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            for status in [502, 503, 504] {
                assert_eq!(
                    http.decide(&request(method.clone()), &response(status, None)),
                    RetryDecision::Retry
                );
            }
            assert_eq!(
                http.decide(&request(method.clone()), &response(500, None)),
                RetryDecision::DoNotRetry
            );
            assert_eq!(
                http.decide(&request(method.clone()), &response(200, None)),
                RetryDecision::DoNotRetry
            );
        }
        let post = request(Method::POST);
        assert_eq!(http.decide(&post, &response(503, None)), RetryDecision::DoNotRetry);
        let mut marked = request(Method::POST);
        marked.call_options_mut().set_idempotent(true);
        assert_eq!(http.decide(&marked, &response(503, None)), RetryDecision::Retry);
        let mut unmarked = request(Method::GET);
        unmarked.call_options_mut().set_idempotent(false);
        assert_eq!(http.decide(&unmarked, &response(503, None)), RetryDecision::DoNotRetry);
    }

    #[test]
    fn grpc_retries_trailers_only_unavailable() {
        let grpc = Grpc::default();
        let post = request(Method::POST);
        assert_eq!(grpc.decide(&post, &response(200, Some("14"))), RetryDecision::Retry);
        assert_eq!(grpc.decide(&post, &response(503, None)), RetryDecision::Retry);
        assert_eq!(
            grpc.decide(&post, &response(200, Some("13"))),
            RetryDecision::DoNotRetry
        );
        assert_eq!(grpc.decide(&post, &response(200, Some("4"))), RetryDecision::DoNotRetry);
        // Status in trailers only: committed.
        assert_eq!(grpc.decide(&post, &response(200, None)), RetryDecision::DoNotRetry);
    }

    #[test]
    fn errors_follow_core_retryability() {
        let err = |e: BoxError| -> Result<(), BoxError> { Err(e) };
        let d = |r: &Result<(), BoxError>| RetryOn::<(), ()>::decide(&Plain, &(), r);
        assert_eq!(d(&err(NoAvailablePeers::new(2, 2, 0, 0).into())), RetryDecision::Retry);
        assert_eq!(
            d(&err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())),
            RetryDecision::Retry
        );
        assert_eq!(d(&err(Retryable::yes("x").into())), RetryDecision::Retry);
        assert_eq!(
            d(&err(Retryable::no(CircuitOpen::new(None, Duration::ZERO)).into())),
            RetryDecision::DoNotRetry
        );
        assert_eq!(
            d(&err(DeadlineExceeded::before_send().into())),
            RetryDecision::DoNotRetry
        );
        assert_eq!(d(&err("business".into())), RetryDecision::DoNotRetry);
        assert_eq!(d(&Ok(())), RetryDecision::DoNotRetry);
    }

    #[test]
    fn extend_never_overrides_never() {
        let always = |_: &(), _: &Result<(), BoxError>| RetryDecision::Retry;
        let extend = Extend(always);
        let d = |r: Result<(), BoxError>| extend.decide(&Plain, &(), &r);
        assert_eq!(d(Err("business".into())), RetryDecision::Retry);
        assert_eq!(d(Ok(())), RetryDecision::Retry);
        assert_eq!(
            d(Err(DeadlineExceeded::before_send().into())),
            RetryDecision::DoNotRetry
        );
        assert_eq!(d(Err(Retryable::no("x").into())), RetryDecision::DoNotRetry);
        let never = |_: &(), _: &Result<(), BoxError>| RetryDecision::DoNotRetry;
        let replace = Replace(never);
        let r: Result<(), BoxError> = Err(CircuitOpen::new(None, Duration::ZERO).into());
        assert_eq!(replace.decide(&Plain, &(), &r), RetryDecision::DoNotRetry);
    }

    #[test]
    fn peers_come_from_response_extensions_or_circuit_open() {
        let mut res = http::Response::new(());
        res.extensions_mut().insert(PeerId::from("a:1"));
        assert_eq!(
            RetryOn::<http::Request<()>, _>::peer(&Http::default(), &Ok(res)),
            Some(PeerId::from("a:1"))
        );
        let err: Result<http::Response<()>, BoxError> =
            Err(CircuitOpen::new(Some("b:2".into()), Duration::ZERO).into());
        assert_eq!(
            RetryOn::<http::Request<()>, _>::peer(&Grpc::default(), &err),
            Some(PeerId::from("b:2"))
        );
    }
}
