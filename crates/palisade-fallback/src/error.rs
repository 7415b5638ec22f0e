//! The errors the fallback layer returns, and the core kinds it recognises.
//!
//! The layer returns [`BoxError`] at its boundary. An error its predicate does
//! not accept is returned untouched (the same value, downcastable to the inner
//! service's type). When the fallback itself fails, the caller gets a
//! [`FallbackFailed`] carrying both causes.

use std::error::Error;
use std::fmt;

use palisade_core::error::StatusSource;
use palisade_core::protocol::GrpcCode;

pub use palisade_core::error::{
    BoxError, BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, NoAvailablePeers, TimedOut,
};

/// The fallback was asked to answer and failed too.
///
/// Carries the error that triggered the fallback ([`original`](Self::original))
/// and the fallback's own error ([`fallback`](Self::fallback)); both can be
/// downcast. [`Error::source`] is the original error, the primary cause: a
/// tonic caller sees its gRPC code (a `CircuitOpen` answered by a failing
/// fallback is still `UNAVAILABLE`), and
/// [`PalisadeError::find`](palisade_core::error::PalisadeError::find) finds
/// it.
///
/// ```
/// use palisade_fallback::error::{BoxError, CircuitOpen, FallbackFailed};
/// use std::time::Duration;
///
/// let original: BoxError = CircuitOpen::new(None, Duration::from_secs(2)).into();
/// let failed = FallbackFailed::new(original, "cache miss".into());
/// assert!(failed.original().is::<CircuitOpen>());
/// assert_eq!(failed.fallback().to_string(), "cache miss");
/// assert_eq!(
///     failed.to_string(),
///     "fallback failed: cache miss (it was answering: circuit open: next probe allowed in 2s)"
/// );
/// ```
#[derive(Debug)]
pub struct FallbackFailed {
    original: BoxError,
    fallback: BoxError,
}

impl FallbackFailed {
    /// The fallback answering `original` failed with `fallback`.
    pub fn new(original: BoxError, fallback: BoxError) -> Self {
        Self { original, fallback }
    }

    /// The error of the inner service (or [`FailedResponse`]) that triggered the fallback.
    pub fn original(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.original
    }

    /// The fallback's own error.
    pub fn fallback(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.fallback
    }

    /// Both errors, by value: `(original, fallback)`.
    pub fn into_parts(self) -> (BoxError, BoxError) {
        (self.original, self.fallback)
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fallback failed: {} (it was answering: {})",
            self.fallback, self.original
        )
    }
}

impl Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.original)
    }
}

/// The inner service answered, but a response rule classified the answer as a
/// failure (for example HTTP 503, or a trailers-only gRPC `UNAVAILABLE`), so the
/// fallback answered instead.
///
/// This is the error a fallback function receives in that case, and the
/// [`FallbackFailed::original`] if the fallback then fails. The replaced
/// response itself is dropped.
///
/// With core's `tonic` feature its [`Error::source`] is a `tonic::Status` of
/// the response's code ([`grpc_code`](Self::grpc_code)), so a tonic caller
/// whose fallback failed too sees the code the peer answered with.
#[derive(Clone, PartialEq, Eq)]
pub struct FailedResponse {
    status: Option<http::StatusCode>,
    grpc_status: Option<GrpcCode>,
    tonic_status: StatusSource,
}

impl fmt::Debug for FailedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedResponse")
            .field("status", &self.status)
            .field("grpc_status", &self.grpc_status)
            .finish()
    }
}

impl FailedResponse {
    /// A response, of http `status` and gRPC status `grpc_status` where known,
    /// was classified as a failure.
    pub fn new(status: Option<http::StatusCode>, grpc_status: Option<GrpcCode>) -> Self {
        Self {
            status,
            grpc_status,
            tonic_status: StatusSource::new(),
        }
    }

    /// The gRPC code the failed response stands for: its `grpc-status`, else
    /// what gRPC infers from its http status
    /// ([`GrpcCode::from_http_status`]), else `UNKNOWN`. An `OK` status that
    /// a rule classified as a failure is `UNKNOWN` too.
    pub fn grpc_code(&self) -> GrpcCode {
        match (self.grpc_status, self.status) {
            (Some(code), _) if code != GrpcCode::OK => code,
            (Some(_), _) => GrpcCode::UNKNOWN,
            (None, Some(status)) => GrpcCode::from_http_status(status),
            (None, None) => GrpcCode::UNKNOWN,
        }
    }

    /// The http status of the replaced response, if it was an http response.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.status
    }

    /// The gRPC status in the replaced response's headers, if any.
    pub fn grpc_status(&self) -> Option<GrpcCode> {
        self.grpc_status
    }
}

impl fmt::Display for FailedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response classified as a failure")?;
        match (self.status, self.grpc_status) {
            (Some(status), Some(code)) => write!(f, ": http {status}, grpc-status {code}"),
            (Some(status), None) => write!(f, ": http {status}"),
            (None, Some(code)) => write!(f, ": grpc-status {code}"),
            (None, None) => Ok(()),
        }
    }
}

impl Error for FailedResponse {
    /// With core's `tonic` feature, a `tonic::Status` of
    /// [`grpc_code`](Self::grpc_code); otherwise none.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.tonic_status.get(self.grpc_code(), || self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::protocol::GrpcCode;

    #[test]
    fn failed_response_names_the_status() {
        let r = FailedResponse::new(Some(http::StatusCode::SERVICE_UNAVAILABLE), None);
        assert_eq!(
            r.to_string(),
            "response classified as a failure: http 503 Service Unavailable"
        );
        let g = FailedResponse::new(Some(http::StatusCode::OK), Some(GrpcCode::UNAVAILABLE));
        assert_eq!(
            g.to_string(),
            "response classified as a failure: http 200 OK, grpc-status UNAVAILABLE"
        );
        assert_eq!(
            FailedResponse::new(None, None).to_string(),
            "response classified as a failure"
        );
    }

    #[test]
    fn a_failed_response_stands_for_its_grpc_code() {
        let code = |status: Option<u16>, grpc: Option<GrpcCode>| {
            FailedResponse::new(status.map(|s| http::StatusCode::from_u16(s).unwrap()), grpc).grpc_code()
        };
        assert_eq!(code(Some(200), Some(GrpcCode::UNAVAILABLE)), GrpcCode::UNAVAILABLE);
        assert_eq!(code(Some(503), None), GrpcCode::UNAVAILABLE);
        assert_eq!(code(Some(200), Some(GrpcCode::OK)), GrpcCode::UNKNOWN);
        assert_eq!(code(None, None), GrpcCode::UNKNOWN);
    }

    #[test]
    fn fallback_failed_keeps_both_and_chains_the_original() {
        let failed = FallbackFailed::new("inner down".into(), "cache down".into());
        assert_eq!(failed.source().map(ToString::to_string).as_deref(), Some("inner down"));
        let (o, f) = failed.into_parts();
        assert_eq!(
            (o.to_string(), f.to_string()),
            ("inner down".into(), "cache down".into())
        );
    }
}
