//! The protocols a layer can speak: [`Plain`] (any request and response),
//! [`Http`] and [`Grpc`].
//!
//! A protocol value does two jobs for a layer, both decided at compile time:
//! it classifies results ([`Classify`]) and it inspects requests ([`Inspect`]):
//! where the per-call options are, which route (http path or gRPC method) a
//! request is for, which http method it uses. Every layer is generic over it,
//! and every layer builder starts on [`Unchosen`], which has no `build()`: the
//! protocol is always chosen, never defaulted. Choose [`Http`] for a hyper
//! client and [`Grpc`] for a tonic `Channel` (per-call options, per-route
//! settings and end-of-stream verdicts then work), or [`Plain`] for any other
//! `Service` (the layer's defaults for every call, every `Ok` a success). Only
//! the tower-style `XLayer::new(..)` shortcuts are `Plain`, and say so.
//!
//! ```
//! use palisade_core::classify::{Classify, Outcome, Verdict};
//! use palisade_core::protocol::{Grpc, GrpcCode, Http};
//!
//! let ok = http::Response::builder().status(200).body(()).unwrap();
//! let unavailable = http::Response::builder().status(503).body(()).unwrap();
//! let not_found = http::Response::builder().status(404).body(()).unwrap();
//! let http = Http::default();
//! let verdict = |r| match Classify::<_, ()>::classify_response(&http, r) {
//!     Verdict::Now(outcome) => outcome,
//!     Verdict::AtEndOfStream(never) => match never {},
//! };
//! assert_eq!(verdict(&ok), Outcome::Success);
//! assert_eq!(verdict(&unavailable), Outcome::Failure);
//! assert_eq!(verdict(&not_found), Outcome::Success);
//!
//! // A gRPC response's status arrives in the trailers: the verdict waits.
//! let grpc = Grpc::default();
//! assert!(matches!(
//!     Classify::<_, ()>::classify_response(&grpc, &ok),
//!     Verdict::AtEndOfStream(_)
//! ));
//! assert!(grpc.is_failure(GrpcCode::UNAVAILABLE));
//! assert!(!grpc.is_failure(GrpcCode::NOT_FOUND));
//! ```

use std::any::Any;
use std::fmt;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::classify::{
    AbandonPolicy, Classify, ClassifyEos, ClassifyFn, ErrorsWith, NeverAtEos, Outcome, ResponsesWith, Verdict,
};
use crate::error::{BoxError, DeadlineExceeded, TimedOut, find_error, is_deadline_exceeded};
use crate::options::{CallOptions, CallOptionsExt};
use crate::peer::AttemptRecord;

/// What a layer may learn from, and write on, a request of type `Req`.
///
/// Every method has a default that knows nothing, which is right for
/// non-http requests: they carry no options and get the layers' defaults.
pub trait Inspect<Req> {
    /// The request's extensions, where per-call options travel.
    fn extensions<'r>(&self, request: &'r Req) -> Option<&'r http::Extensions> {
        let _ = request;
        None
    }

    /// The request's extensions, to record attempts or set a deadline.
    fn extensions_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut http::Extensions> {
        let _ = request;
        None
    }

    /// The request's headers, to send `grpc-timeout` and similar.
    fn headers_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut HeaderMap> {
        let _ = request;
        None
    }

    /// The route: an http path, or a gRPC method as `/package.Service/Method`.
    fn route<'r>(&self, request: &'r Req) -> Option<&'r str> {
        let _ = request;
        None
    }

    /// The http method, for idempotency decisions.
    fn method<'r>(&self, request: &'r Req) -> Option<&'r Method> {
        let _ = request;
        None
    }

    /// The call's options, if any were set.
    fn call_options<'r>(&self, request: &'r Req) -> Option<&'r CallOptions> {
        self.extensions(request).and_then(CallOptionsExt::call_options)
    }

    /// The record of peers used by earlier attempts of the call.
    fn attempt_record<'r>(&self, request: &'r Req) -> Option<&'r AttemptRecord> {
        self.extensions(request).and_then(CallOptionsExt::attempt_record)
    }
}

/// The outcome of an error for the built-in classifiers: the caller's
/// deadline, and a timeout that fired late because the client stalled
/// ([`TimedOut::is_client_stall`]), are [`Outcome::Ignored`]; any other error
/// is a failure.
///
/// The error type is only known generically, so the deadline is recognised
/// in the error types layers return: [`BoxError`] (walking its source chain
/// with [`is_deadline_exceeded`]), [`DeadlineExceeded`] itself, and with
/// feature `tonic` a `tonic::Status` (whose source chain tonic keeps). Each
/// check is a comparison of type ids that the compiler resolves for the
/// concrete `E`, so an error type that cannot hold a deadline pays nothing.
/// A user error type that wraps one is not seen: classify it with
/// [`ClassifyExt::errors_with`](crate::classify::ClassifyExt::errors_with).
#[inline]
pub fn default_error_outcome<E: 'static>(error: &E) -> Outcome {
    if is_callers_deadline(error) {
        Outcome::Ignored
    } else {
        Outcome::Failure
    }
}

fn is_callers_deadline<E: 'static>(error: &E) -> bool {
    let error: &dyn Any = error;
    if let Some(boxed) = error.downcast_ref::<BoxError>() {
        return not_the_peers(boxed.as_ref());
    }
    if error.is::<DeadlineExceeded>() {
        return true;
    }
    if let Some(timed_out) = error.downcast_ref::<TimedOut>() {
        return timed_out.is_client_stall();
    }
    #[cfg(feature = "tonic")]
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return not_the_peers(status);
    }
    false
}

/// The caller's deadline, or a timeout that fired late because the client
/// stalled.
fn not_the_peers(error: &(dyn std::error::Error + 'static)) -> bool {
    is_deadline_exceeded(error) || find_error::<TimedOut>(error).is_some_and(TimedOut::is_client_stall)
}

/// Any request and response: every `Ok` is a success and every `Err` a
/// failure, except the caller's deadline ([`DeadlineExceeded`]), which is
/// [`Outcome::Ignored`]; requests carry no per-call options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plain;

impl<Res, E: 'static> Classify<Res, E> for Plain {
    type Eos = NeverAtEos;

    #[inline]
    fn classify_response(&self, _: &Res) -> Verdict<NeverAtEos> {
        Verdict::Now(Outcome::Success)
    }

    #[inline]
    fn classify_error(&self, error: &E) -> Outcome {
        default_error_outcome(error)
    }
}

impl<Req> Inspect<Req> for Plain {}

/// A closure classifier inspects nothing: requests get the layers' defaults.
impl<F, Req> Inspect<Req> for ClassifyFn<F> {}

/// http requests and responses: a 5xx status or an error (a transport error)
/// is a failure; anything else, 4xx included, is a success. Which statuses
/// count as failures can be changed within 400..=599: statuses below 400 are
/// never failures, and nonstandard statuses of 600 and above always are.
///
/// The caller's deadline ([`DeadlineExceeded`], also wrapped) is neither a
/// success nor a failure (see [`default_error_outcome`]). A response whose
/// head is a success and whose body is dropped unread counts as a success by
/// default; that and the other abandoned-call rules are the value's
/// [`AbandonPolicy`].
///
/// The value is 40 bytes and `Copy`, so a layer can keep it in each response
/// future without a reference count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Http {
    // One bit per status code 400..=599 (bit index = code - 400).
    failures: [u64; 4],
    abandon: AbandonPolicy,
}

impl Default for Http {
    fn default() -> Self {
        let mut http = Http {
            failures: [0; 4],
            abandon: AbandonPolicy::DEFAULT,
        };
        for code in 500..600 {
            http.set(code, true);
        }
        http
    }
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<u16> = (400..600).filter(|c| self.bit(*c)).collect();
        f.debug_struct("Http")
            .field("failure_statuses", &codes)
            .field("abandon", &self.abandon)
            .finish()
    }
}

impl Http {
    /// 5xx statuses and errors are failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// What abandoned calls mean (default [`AbandonPolicy::DEFAULT`]).
    pub fn with_abandon_policy(mut self, policy: AbandonPolicy) -> Self {
        self.abandon = policy;
        self
    }

    /// The policy for abandoned calls.
    pub fn abandon_policy(&self) -> AbandonPolicy {
        self.abandon
    }

    /// Also counts `status` as a failure (for example 429). Statuses outside
    /// 400..=599 cannot be changed.
    pub fn with_failure_status(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), true);
        self
    }

    /// No longer counts `status` as a failure (for example 501 Not Implemented).
    pub fn without_failure_status(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), false);
        self
    }

    /// Whether `status` counts as a failure.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        self.bit(status.as_u16())
    }

    fn bit(&self, code: u16) -> bool {
        match code {
            0..400 => false,
            400..600 => {
                let i = usize::from(code - 400);
                self.failures[i / 64] & (1 << (i % 64)) != 0
            }
            _ => true,
        }
    }

    fn set(&mut self, code: u16, on: bool) {
        if (400..600).contains(&code) {
            let i = usize::from(code - 400);
            if on {
                self.failures[i / 64] |= 1 << (i % 64);
            } else {
                self.failures[i / 64] &= !(1 << (i % 64));
            }
        }
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for Http {
    type Eos = NeverAtEos;

    #[inline]
    fn classify_response(&self, response: &http::Response<B>) -> Verdict<NeverAtEos> {
        Verdict::Now(if self.is_failure(response.status()) {
            Outcome::Failure
        } else {
            Outcome::Success
        })
    }

    #[inline]
    fn classify_error(&self, error: &E) -> Outcome {
        default_error_outcome(error)
    }

    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        self.abandon
    }
}

impl<B> Inspect<http::Request<B>> for Http {
    fn extensions<'r>(&self, request: &'r http::Request<B>) -> Option<&'r http::Extensions> {
        Some(request.extensions())
    }

    fn extensions_mut<'r>(&self, request: &'r mut http::Request<B>) -> Option<&'r mut http::Extensions> {
        Some(request.extensions_mut())
    }

    fn headers_mut<'r>(&self, request: &'r mut http::Request<B>) -> Option<&'r mut HeaderMap> {
        Some(request.headers_mut())
    }

    fn route<'r>(&self, request: &'r http::Request<B>) -> Option<&'r str> {
        Some(request.uri().path())
    }

    fn method<'r>(&self, request: &'r http::Request<B>) -> Option<&'r Method> {
        Some(request.method())
    }
}

/// The `grpc-status` header (or trailer) name, built once: a lookup by a
/// `&str` parses the name on every call.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The first value of `name` in `headers`, as [`HeaderMap::get`] finds it.
///
/// A gRPC response head or its trailers hold a handful of entries, and the
/// stack asks them for `grpc-status` several times per call (the classifier,
/// the retry's decision): comparing a few names (by length first) costs a
/// fraction of what the map's lookup does, which hashes the whole name every
/// time. Larger maps are looked up.
#[inline]
fn find_header<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<&'h HeaderValue> {
    const SCANNED_UP_TO: usize = 8;
    if headers.len() <= SCANNED_UP_TO {
        headers.iter().find_map(|(key, value)| (key == name).then_some(value))
    } else {
        headers.get(name)
    }
}

/// A gRPC status code (`0` OK to `16` UNAUTHENTICATED).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcCode(u8);

impl GrpcCode {
    /// 0
    pub const OK: GrpcCode = GrpcCode(0);
    /// 1
    pub const CANCELLED: GrpcCode = GrpcCode(1);
    /// 2
    pub const UNKNOWN: GrpcCode = GrpcCode(2);
    /// 3
    pub const INVALID_ARGUMENT: GrpcCode = GrpcCode(3);
    /// 4
    pub const DEADLINE_EXCEEDED: GrpcCode = GrpcCode(4);
    /// 5
    pub const NOT_FOUND: GrpcCode = GrpcCode(5);
    /// 6
    pub const ALREADY_EXISTS: GrpcCode = GrpcCode(6);
    /// 7
    pub const PERMISSION_DENIED: GrpcCode = GrpcCode(7);
    /// 8
    pub const RESOURCE_EXHAUSTED: GrpcCode = GrpcCode(8);
    /// 9
    pub const FAILED_PRECONDITION: GrpcCode = GrpcCode(9);
    /// 10
    pub const ABORTED: GrpcCode = GrpcCode(10);
    /// 11
    pub const OUT_OF_RANGE: GrpcCode = GrpcCode(11);
    /// 12
    pub const UNIMPLEMENTED: GrpcCode = GrpcCode(12);
    /// 13
    pub const INTERNAL: GrpcCode = GrpcCode(13);
    /// 14
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);
    /// 15
    pub const DATA_LOSS: GrpcCode = GrpcCode(15);
    /// 16
    pub const UNAUTHENTICATED: GrpcCode = GrpcCode(16);

    const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The code with number `code`; numbers outside 0..=16 are `UNKNOWN`, as
    /// the gRPC spec asks of a client.
    pub fn from_i32(code: i32) -> GrpcCode {
        match u8::try_from(code) {
            Ok(c) if c <= 16 => GrpcCode(c),
            _ => GrpcCode::UNKNOWN,
        }
    }

    /// The code's name, as the gRPC spec spells it.
    pub fn name(self) -> &'static str {
        Self::NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
    }

    /// Parses a `grpc-status` header value; a value that is not a decimal
    /// number of 0 to 16 yields `UNKNOWN`.
    pub fn from_header(value: &HeaderValue) -> GrpcCode {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 3 || !bytes.iter().all(u8::is_ascii_digit) {
            return GrpcCode::UNKNOWN;
        }
        let n = bytes.iter().fold(0i32, |n, d| n * 10 + i32::from(d - b'0'));
        GrpcCode::from_i32(n)
    }

    /// The `grpc-status` in `headers` (a trailers-only response's headers, or
    /// the trailers), if there is one.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcCode> {
        find_header(headers, &GRPC_STATUS).map(GrpcCode::from_header)
    }

    /// The code a gRPC client infers from an http `status` that came without
    /// a `grpc-status`, as gRPC's "HTTP to gRPC status code mapping" says:
    /// 400 `INTERNAL`, 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404
    /// `UNIMPLEMENTED`, 429, 502, 503 and 504 `UNAVAILABLE`, anything else
    /// `UNKNOWN`.
    pub fn from_http_status(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::INTERNAL,
            401 => GrpcCode::UNAUTHENTICATED,
            403 => GrpcCode::PERMISSION_DENIED,
            404 => GrpcCode::UNIMPLEMENTED,
            429 | 502 | 503 | 504 => GrpcCode::UNAVAILABLE,
            _ => GrpcCode::UNKNOWN,
        }
    }
}

impl fmt::Debug for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "tonic")]
impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> Self {
        GrpcCode::from_i32(code as i32)
    }
}

#[cfg(feature = "tonic")]
impl From<GrpcCode> for tonic::Code {
    fn from(code: GrpcCode) -> Self {
        tonic::Code::from_i32(i32::from(code.0))
    }
}

/// gRPC over http: the status comes from the headers of a trailers-only
/// response or from the trailers at the end of the stream.
///
/// By default `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`,
/// `RESOURCE_EXHAUSTED` and `DATA_LOSS` are failures; other codes (a
/// `NOT_FOUND` is the caller's business) are successes. A non-200 http status
/// from a proxy follows the [`Http`] rule; a stream that ends without any
/// `grpc-status` is a protocol error and a failure; an error from the
/// transport is a failure, except the caller's own deadline
/// ([`DeadlineExceeded`], also wrapped, see [`default_error_outcome`]), which
/// is neither. (A `DEADLINE_EXCEEDED` *status from the server* is the
/// server's verdict and stays a failure by default.)
///
/// A stream dropped before its trailers is neither by default; that and the
/// other abandoned-call rules are the value's [`AbandonPolicy`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Grpc {
    failures: u32,
    abandon: AbandonPolicy,
}

impl Default for Grpc {
    fn default() -> Self {
        let mut failures = 0;
        for code in [
            GrpcCode::UNAVAILABLE,
            GrpcCode::DEADLINE_EXCEEDED,
            GrpcCode::INTERNAL,
            GrpcCode::UNKNOWN,
            GrpcCode::RESOURCE_EXHAUSTED,
            GrpcCode::DATA_LOSS,
        ] {
            failures |= 1 << code.0;
        }
        Grpc {
            failures,
            abandon: AbandonPolicy::DEFAULT,
        }
    }
}

impl fmt::Debug for Grpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<GrpcCode> = (0..=16).map(GrpcCode).filter(|c| self.is_failure(*c)).collect();
        f.debug_struct("Grpc")
            .field("failure_codes", &codes)
            .field("abandon", &self.abandon)
            .finish()
    }
}

impl Grpc {
    /// The default failure codes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly these codes are failures.
    pub fn with_failure_codes(codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        let failures = codes.into_iter().fold(0, |acc, c| acc | 1 << c.0);
        Grpc {
            failures,
            abandon: AbandonPolicy::DEFAULT,
        }
    }

    /// What abandoned calls mean (default [`AbandonPolicy::DEFAULT`]).
    pub fn with_abandon_policy(mut self, policy: AbandonPolicy) -> Self {
        self.abandon = policy;
        self
    }

    /// The policy for abandoned calls.
    pub fn abandon_policy(&self) -> AbandonPolicy {
        self.abandon
    }

    /// Also counts `code` as a failure.
    pub fn with_failure(mut self, code: GrpcCode) -> Self {
        self.failures |= 1 << code.0;
        self
    }

    /// No longer counts `code` as a failure.
    pub fn without_failure(mut self, code: GrpcCode) -> Self {
        self.failures &= !(1 << code.0);
        self
    }

    /// Whether `code` counts as a failure.
    pub fn is_failure(&self, code: GrpcCode) -> bool {
        self.failures & (1 << code.0) != 0
    }

    /// The outcome of a status `code`.
    pub fn outcome(&self, code: GrpcCode) -> Outcome {
        if self.is_failure(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// Decides a gRPC response from its trailers. Made by [`Grpc`].
#[derive(Clone, Copy, Debug)]
pub struct GrpcEos {
    classifier: Grpc,
}

impl ClassifyEos for GrpcEos {
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome {
        match trailers.and_then(GrpcCode::from_headers) {
            Some(code) => self.classifier.outcome(code),
            // A gRPC stream must end with a status: its absence is a protocol error.
            None => Outcome::Failure,
        }
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for Grpc {
    type Eos = GrpcEos;

    fn classify_response(&self, response: &http::Response<B>) -> Verdict<GrpcEos> {
        if response.status() != StatusCode::OK {
            return Verdict::Now(if response.status().is_server_error() {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        match GrpcCode::from_headers(response.headers()) {
            // A trailers-only response: the status is in the headers.
            Some(code) => Verdict::Now(self.outcome(code)),
            None => Verdict::AtEndOfStream(GrpcEos { classifier: *self }),
        }
    }

    #[inline]
    fn classify_error(&self, error: &E) -> Outcome {
        default_error_outcome(error)
    }

    #[inline]
    fn abandon_policy(&self) -> AbandonPolicy {
        self.abandon
    }

    /// A trailers-only `DEADLINE_EXCEEDED`.
    #[inline]
    fn is_deadline_response(&self, response: &http::Response<B>) -> bool {
        response.status() == StatusCode::OK
            && GrpcCode::from_headers(response.headers()) == Some(GrpcCode::DEADLINE_EXCEEDED)
    }
}

impl<B> Inspect<http::Request<B>> for Grpc {
    fn extensions<'r>(&self, request: &'r http::Request<B>) -> Option<&'r http::Extensions> {
        Some(request.extensions())
    }

    fn extensions_mut<'r>(&self, request: &'r mut http::Request<B>) -> Option<&'r mut http::Extensions> {
        Some(request.extensions_mut())
    }

    fn headers_mut<'r>(&self, request: &'r mut http::Request<B>) -> Option<&'r mut HeaderMap> {
        Some(request.headers_mut())
    }

    fn route<'r>(&self, request: &'r http::Request<B>) -> Option<&'r str> {
        Some(request.uri().path())
    }

    fn method<'r>(&self, request: &'r http::Request<B>) -> Option<&'r Method> {
        Some(request.method())
    }
}

/// The protocol of a layer builder before one is chosen: a builder whose
/// protocol is still `Unchosen` has no `build()`, so forgetting to choose
/// `.grpc()`, `.http()` or `.plain()` fails to compile instead of silently
/// releasing permits at the response head or ignoring gRPC trailers.
///
/// It implements none of the protocol traits on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unchosen;

/// Whether a protocol sends gRPC: a timeout layer then writes `grpc-timeout`.
pub trait IsGrpc {
    /// `true` for [`Grpc`] and refinements of it.
    const IS_GRPC: bool = false;
}

impl IsGrpc for Plain {}
impl<F> IsGrpc for ClassifyFn<F> {}
impl IsGrpc for Http {}
impl IsGrpc for Grpc {
    const IS_GRPC: bool = true;
}

macro_rules! forward_inspect {
    ($wrapper:ident) => {
        impl<C: Inspect<Req>, F, Req> Inspect<Req> for $wrapper<C, F> {
            fn extensions<'r>(&self, request: &'r Req) -> Option<&'r http::Extensions> {
                self.inner().extensions(request)
            }
            fn extensions_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut http::Extensions> {
                self.inner().extensions_mut(request)
            }
            fn headers_mut<'r>(&self, request: &'r mut Req) -> Option<&'r mut HeaderMap> {
                self.inner().headers_mut(request)
            }
            fn route<'r>(&self, request: &'r Req) -> Option<&'r str> {
                self.inner().route(request)
            }
            fn method<'r>(&self, request: &'r Req) -> Option<&'r Method> {
                self.inner().method(request)
            }
        }

        impl<C: IsGrpc, F> IsGrpc for $wrapper<C, F> {
            const IS_GRPC: bool = C::IS_GRPC;
        }
    };
}

forward_inspect!(ErrorsWith);
forward_inspect!(ResponsesWith);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now<E: ClassifyEos>(v: Verdict<E>) -> Option<Outcome> {
        match v {
            Verdict::Now(o) => Some(o),
            Verdict::AtEndOfStream(_) => None,
        }
    }

    proptest::proptest! {
        /// Small maps are scanned, larger ones looked up: either way the
        /// answer is the map's own (the first value of the name).
        #[test]
        fn find_header_answers_as_the_map_does(
            entries in proptest::collection::vec((0usize..5, 0u8..10, proptest::bool::ANY), 0..16),
        ) {
            const NAMES: [&str; 5] = ["grpc-status", "content-type", "grpc-message", "grpc-statu", "x-grpc-status"];
            let mut headers = HeaderMap::new();
            for (name, value, append) in entries {
                let name = http::HeaderName::from_static(NAMES[name]);
                let value = HeaderValue::from(u16::from(value));
                if append {
                    headers.append(name, value);
                } else {
                    headers.insert(name, value);
                }
            }
            for name in NAMES {
                let name = http::HeaderName::from_static(name);
                proptest::prop_assert_eq!(find_header(&headers, &name), headers.get(&name));
            }
        }
    }

    fn response(status: u16, grpc_status: Option<&'static str>) -> http::Response<()> {
        let mut builder = http::Response::builder().status(status);
        if let Some(s) = grpc_status {
            builder = builder.header("grpc-status", s);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn http_5xx_fail_and_4xx_do_not() {
        let http = Http::default();
        for (status, expected) in [
            (200, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Success),
            (500, Outcome::Failure),
            (503, Outcome::Failure),
            (599, Outcome::Failure),
        ] {
            let v = Classify::<_, ()>::classify_response(&http, &response(status, None));
            assert_eq!(now(v), Some(expected), "status {status}");
        }
        assert_eq!(
            Classify::<http::Response<()>, &str>::classify_error(&http, &"reset"),
            Outcome::Failure
        );
        let strict = Http::new()
            .with_failure_status(StatusCode::TOO_MANY_REQUESTS)
            .without_failure_status(StatusCode::NOT_IMPLEMENTED);
        assert!(strict.is_failure(StatusCode::TOO_MANY_REQUESTS));
        assert!(!strict.is_failure(StatusCode::NOT_IMPLEMENTED));
        assert!(!strict.is_failure(StatusCode::OK) && !strict.is_failure(StatusCode::FOUND));
        assert!(Http::default().is_failure(StatusCode::from_u16(650).unwrap()));
        assert_eq!(std::mem::size_of::<Http>(), 40);
        assert_eq!(std::mem::size_of::<Grpc>(), 8);
    }

    #[test]
    fn grpc_trailers_only_decides_from_headers() {
        let grpc = Grpc::default();
        let v = Classify::<_, ()>::classify_response(&grpc, &response(200, Some("14")));
        assert_eq!(now(v), Some(Outcome::Failure));
        let v = Classify::<_, ()>::classify_response(&grpc, &response(200, Some("5")));
        assert_eq!(now(v), Some(Outcome::Success));
        let v = Classify::<_, ()>::classify_response(&grpc, &response(503, None));
        assert_eq!(now(v), Some(Outcome::Failure));
    }

    #[test]
    fn grpc_streams_decide_from_trailers() {
        let grpc = Grpc::default();
        let Verdict::AtEndOfStream(eos) = Classify::<_, ()>::classify_response(&grpc, &response(200, None)) else {
            panic!("a 200 without grpc-status must wait for the trailers");
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(eos.classify_eos(Some(&trailers)), Outcome::Failure);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(eos.classify_eos(Some(&trailers)), Outcome::Success);
        assert_eq!(eos.classify_eos(None), Outcome::Failure);
        let io = std::io::Error::other("reset");
        assert_eq!(eos.classify_body_error(&io), Outcome::Failure);
    }

    #[test]
    fn default_grpc_failure_codes_match_the_design() {
        let grpc = Grpc::default();
        let failing: Vec<_> = (0..=16)
            .map(GrpcCode::from_i32)
            .filter(|c| grpc.is_failure(*c))
            .collect();
        assert_eq!(
            failing,
            vec![
                GrpcCode::UNKNOWN,
                GrpcCode::DEADLINE_EXCEEDED,
                GrpcCode::RESOURCE_EXHAUSTED,
                GrpcCode::INTERNAL,
                GrpcCode::UNAVAILABLE,
                GrpcCode::DATA_LOSS
            ]
        );
        let custom = Grpc::with_failure_codes([GrpcCode::UNAVAILABLE]).with_failure(GrpcCode::ABORTED);
        assert!(custom.is_failure(GrpcCode::ABORTED) && !custom.is_failure(GrpcCode::INTERNAL));
    }

    #[test]
    fn malformed_grpc_status_is_unknown_never_a_panic() {
        for raw in ["", "abc", "-1", "9999", "17", "1x"] {
            let v = HeaderValue::from_str(raw).unwrap();
            assert_eq!(GrpcCode::from_header(&v), GrpcCode::UNKNOWN, "{raw:?}");
        }
        assert_eq!(
            GrpcCode::from_header(&HeaderValue::from_static("16")),
            GrpcCode::UNAUTHENTICATED
        );
        assert_eq!(GrpcCode::UNAVAILABLE.to_string(), "UNAVAILABLE");
    }

    #[test]
    fn the_callers_deadline_is_ignored_and_an_attempt_timeout_is_a_failure() {
        use crate::error::{BoxError, DeadlineExceeded, TimedOut, TimeoutKind};
        use crate::retry::Retryable;

        #[derive(Debug)]
        struct Wrapper(BoxError);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }

        let deadline: BoxError = DeadlineExceeded::before_send().into();
        let in_flight: BoxError = DeadlineExceeded::in_flight(Duration::from_millis(5)).into();
        let wrapped: BoxError = Wrapper(DeadlineExceeded::before_send().into()).into();
        let marked: BoxError = Retryable::yes(DeadlineExceeded::before_send()).into();
        let attempt: BoxError = TimedOut::new(TimeoutKind::Attempt, Duration::from_secs(1)).into();
        let io: BoxError = std::io::Error::other("reset").into();
        let http = Http::default();
        let grpc = Grpc::default();
        for (error, expected) in [
            (&deadline, Outcome::Ignored),
            (&in_flight, Outcome::Ignored),
            (&wrapped, Outcome::Ignored),
            (&marked, Outcome::Ignored),
            (&attempt, Outcome::Failure),
            (&io, Outcome::Failure),
        ] {
            assert_eq!(
                Classify::<(), BoxError>::classify_error(&Plain, error),
                expected,
                "{error}"
            );
            assert_eq!(
                Classify::<http::Response<()>, BoxError>::classify_error(&http, error),
                expected,
                "{error}"
            );
            assert_eq!(
                Classify::<http::Response<()>, BoxError>::classify_error(&grpc, error),
                expected,
                "{error}"
            );
        }
        // The bare type, too.
        assert_eq!(
            Classify::<(), DeadlineExceeded>::classify_error(&Plain, &DeadlineExceeded::before_send()),
            Outcome::Ignored
        );
        // Other error types cannot hold one and stay failures.
        assert_eq!(
            Classify::<(), &str>::classify_error(&Plain, &"deadline"),
            Outcome::Failure
        );
        // A closure still decides when asked to.
        use crate::classify::ClassifyExt;
        let strict = Plain.errors_with(|_: &BoxError| Outcome::Failure);
        assert_eq!(
            Classify::<(), BoxError>::classify_error(&strict, &deadline),
            Outcome::Failure
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn a_tonic_status_made_from_our_deadline_is_ignored_but_a_servers_is_not() {
        use crate::error::{BoxError, DeadlineExceeded};
        let ours = tonic::Status::from_error(BoxError::from(DeadlineExceeded::before_send()));
        assert_eq!(ours.code(), tonic::Code::DeadlineExceeded);
        let grpc = Grpc::default();
        assert_eq!(
            Classify::<http::Response<()>, tonic::Status>::classify_error(&grpc, &ours),
            Outcome::Ignored
        );
        let servers = tonic::Status::deadline_exceeded("the server ran out of time");
        assert_eq!(
            Classify::<http::Response<()>, tonic::Status>::classify_error(&grpc, &servers),
            Outcome::Failure
        );
    }

    #[test]
    fn the_abandon_policy_travels_in_the_protocol_values() {
        use crate::classify::{AbandonPolicy, ProbeVerdict};
        let policy = AbandonPolicy::new()
            .with_body_dropped(Outcome::Ignored)
            .with_trailers_dropped(Outcome::Failure)
            .with_call_dropped(Outcome::Failure)
            .with_probe_verdict(ProbeVerdict::AtHead);
        assert_eq!(Http::new().abandon_policy(), AbandonPolicy::DEFAULT);
        assert_eq!(Grpc::new().abandon_policy(), AbandonPolicy::DEFAULT);
        let http = Http::new().with_abandon_policy(policy);
        let grpc = Grpc::new().with_abandon_policy(policy);
        assert_eq!(Classify::<http::Response<()>, ()>::abandon_policy(&http), policy);
        assert_eq!(Classify::<http::Response<()>, ()>::abandon_policy(&grpc), policy);
        assert_eq!(
            Classify::<(), ()>::abandon_policy(&Plain),
            AbandonPolicy::DEFAULT,
            "classifiers without a policy use the defaults"
        );
        // Refinements ask the classifier they refine.
        use crate::classify::ClassifyExt;
        let refined = grpc
            .errors_with(|_: &()| Outcome::Ignored)
            .responses_with(|_: &http::Response<()>| None);
        assert_eq!(Classify::<http::Response<()>, ()>::abandon_policy(&refined), policy);

        // How a dropped body counts, by what its head said.
        let d = AbandonPolicy::DEFAULT;
        assert_eq!(
            d.on_body_dropped::<NeverAtEos>(&Verdict::Now(Outcome::Success)),
            Outcome::Success
        );
        assert_eq!(
            d.on_body_dropped::<NeverAtEos>(&Verdict::Now(Outcome::Failure)),
            Outcome::Failure
        );
        assert_eq!(
            d.on_body_dropped::<NeverAtEos>(&Verdict::Now(Outcome::Ignored)),
            Outcome::Ignored
        );
        let eos = Verdict::AtEndOfStream(GrpcEos { classifier: grpc });
        assert_eq!(d.on_body_dropped(&eos), Outcome::Ignored);
        assert_eq!(policy.on_body_dropped(&eos), Outcome::Failure);
        assert_eq!(
            policy.on_body_dropped::<NeverAtEos>(&Verdict::Now(Outcome::Success)),
            Outcome::Ignored
        );
        assert_eq!(
            policy.on_body_dropped::<NeverAtEos>(&Verdict::Now(Outcome::Failure)),
            Outcome::Failure,
            "a failure known from the head stays one whatever the policy"
        );
    }

    #[test]
    fn http_statuses_map_to_grpc_codes_as_the_grpc_spec_says() {
        for (status, code) in [
            (400, GrpcCode::INTERNAL),
            (401, GrpcCode::UNAUTHENTICATED),
            (403, GrpcCode::PERMISSION_DENIED),
            (404, GrpcCode::UNIMPLEMENTED),
            (429, GrpcCode::UNAVAILABLE),
            (502, GrpcCode::UNAVAILABLE),
            (503, GrpcCode::UNAVAILABLE),
            (504, GrpcCode::UNAVAILABLE),
            (500, GrpcCode::UNKNOWN),
        ] {
            assert_eq!(GrpcCode::from_http_status(StatusCode::from_u16(status).unwrap()), code);
        }
    }

    #[test]
    fn http_inspects_route_method_and_options() {
        let mut req = http::Request::post("http://x/echo.v1.Echo/Unary").body(()).unwrap();
        req.call_options_mut().set_retries(2);
        let grpc = Grpc::default();
        assert_eq!(grpc.route(&req), Some("/echo.v1.Echo/Unary"));
        assert_eq!(grpc.method(&req), Some(&Method::POST));
        assert_eq!(grpc.call_options(&req).and_then(CallOptions::retries), Some(2));
        assert_eq!(Inspect::<http::Request<()>>::route(&Plain, &req), None);
    }
}
