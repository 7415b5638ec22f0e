//! When the fallback answers: the predicate on errors and the rules on responses.
//!
//! **Errors.** By default every error of the inner service triggers the
//! fallback. Naming error types with
//! [`on_error::<T>()`](crate::FallbackBuilder::on_error) (and/or closures with
//! [`on_error_where`](crate::FallbackBuilder::on_error_where)) restricts it to
//! those: an error matches `T` when it, or any error in its
//! [`source`](std::error::Error::source) chain, is a `T` (so a
//! `tonic::transport::Error` caused by a refused connection matches
//! `std::io::Error`). Any other error is returned untouched.
//!
//! **Responses.** By default every response passes. A response rule can turn a
//! response into a fallback: a closure
//! ([`on_response`](crate::FallbackBuilder::on_response)) or the protocol's
//! verdict ([`on_failed_response`](crate::FallbackBuilder::on_failed_response):
//! HTTP 5xx with [`Http`](palisade_core::protocol::Http), a trailers-only gRPC
//! failure status with [`Grpc`](palisade_core::protocol::Grpc)). Only a verdict
//! known from the response head counts: see the crate docs on streamed responses.
//!
//! **Routes.** [`route`](crate::FallbackBuilder::route) overrides both for one
//! route (an http path or a gRPC method `/package.Service/Method`): with
//! [`RouteFallback::Off`] nothing on that route triggers the fallback, with
//! [`RouteFallback::OnErrors`] that route's errors are judged by its own
//! [`ErrorPolicy`]. A per-call [`CallFallback`](crate::CallFallback) replaces
//! the source, not these rules: it answers only a failure that triggers the
//! fallback on its route. A route configured twice is an error at
//! [`build`](crate::FallbackBuilder::build) (see [`palisade_core::route`]).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use palisade_core::BoxError;
use palisade_core::classify::{Classify, Outcome, Verdict};

type TypeMatcher = fn(&(dyn Error + 'static)) -> bool;
type ErrorFn = Arc<dyn Fn(&BoxError) -> bool + Send + Sync>;

fn is<T: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    error.is::<T>()
}

/// Overrides the layer's rules for one route. See the [module docs](self).
#[derive(Clone, Debug)]
pub enum RouteFallback {
    /// No fallback on this route: errors and failed responses pass through
    /// untouched, and no fallback event is emitted.
    Off,
    /// On this route these errors trigger the fallback, instead of the ones
    /// the layer names; responses follow the layer's rule.
    OnErrors(ErrorPolicy),
}

/// The predicate on errors. See the [module docs](self).
#[derive(Clone, Default)]
pub struct ErrorPolicy {
    types: Vec<(TypeMatcher, &'static str)>,
    closures: Vec<ErrorFn>,
}

impl fmt::Debug for ErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorPolicy")
            .field("any_error", &self.is_any())
            .field("types", &self.types.iter().map(|t| t.1).collect::<Vec<_>>())
            .field("closures", &self.closures.len())
            .finish()
    }
}

impl ErrorPolicy {
    /// Every error triggers the fallback.
    pub fn any() -> Self {
        Self::default()
    }

    /// Whether every error triggers the fallback (no rule was added).
    pub fn is_any(&self) -> bool {
        self.types.is_empty() && self.closures.is_empty()
    }

    /// Also accepts errors that are (or are caused by) a `T`.
    pub fn or_type<T: Error + 'static>(mut self) -> Self {
        self.types.push((is::<T> as TypeMatcher, std::any::type_name::<T>()));
        self
    }

    /// Also accepts errors for which `f` returns true.
    pub fn or_where<F>(mut self, f: F) -> Self
    where
        F: Fn(&BoxError) -> bool + Send + Sync + 'static,
    {
        self.closures.push(Arc::new(f));
        self
    }

    /// Whether `error` triggers the fallback.
    pub fn accepts(&self, error: &BoxError) -> bool {
        if self.is_any() {
            return true;
        }
        let root: &(dyn Error + 'static) = &**error;
        let mut current = Some(root);
        while let Some(e) = current {
            if self.types.iter().any(|(matches, _)| matches(e)) {
                return true;
            }
            current = e.source();
        }
        self.closures.iter().any(|f| f(error))
    }
}

/// Decides whether a response of type `Res` is replaced by the fallback, given
/// the layer's protocol `P`.
pub trait ResponseRule<Res, P> {
    /// Whether `response` is a failure the fallback should answer.
    fn is_failure(&self, response: &Res, protocol: &P) -> bool;
}

/// No response is replaced. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoResponseRule;

impl<Res, P> ResponseRule<Res, P> for NoResponseRule {
    #[inline]
    fn is_failure(&self, _: &Res, _: &P) -> bool {
        false
    }
}

/// Replaces responses for which the closure returns true.
#[derive(Clone, Copy)]
pub struct ResponseWhen<F>(pub(crate) F);

impl<F> fmt::Debug for ResponseWhen<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseWhen(..)")
    }
}

impl<Res, P, F> ResponseRule<Res, P> for ResponseWhen<F>
where
    F: Fn(&Res) -> bool,
{
    #[inline]
    fn is_failure(&self, response: &Res, _: &P) -> bool {
        (self.0)(response)
    }
}

/// Replaces responses that the protocol classifies as a failure from the head
/// ([`Verdict::Now`]`(`[`Outcome::Failure`]`)`). A verdict that waits for the
/// end of the stream is not a failure here: the response is handed on.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassifiedFailure;

impl<Res, P> ResponseRule<Res, P> for ClassifiedFailure
where
    P: Classify<Res, BoxError>,
{
    #[inline]
    fn is_failure(&self, response: &Res, protocol: &P) -> bool {
        matches!(protocol.classify_response(response), Verdict::Now(Outcome::Failure))
    }
}

/// Either rule: the response is replaced when `A` or `B` says so.
#[derive(Clone, Copy, Debug, Default)]
pub struct Either<A, B>(pub(crate) A, pub(crate) B);

impl<Res, P, A, B> ResponseRule<Res, P> for Either<A, B>
where
    A: ResponseRule<Res, P>,
    B: ResponseRule<Res, P>,
{
    #[inline]
    fn is_failure(&self, response: &Res, protocol: &P) -> bool {
        self.0.is_failure(response, protocol) || self.1.is_failure(response, protocol)
    }
}

/// Adds the response rule `B` to a rule: the response is replaced when either
/// says so. Adding to [`NoResponseRule`] gives `B` itself, so that one rule has
/// a one-word type (`ClassifiedFailure`, not `Either<NoResponseRule, ClassifiedFailure>`)
/// where a user names the layer; further rules nest in [`Either`].
pub trait AddRule<B> {
    /// The combined rule.
    type Output;

    /// `self` or `rule`.
    fn add(self, rule: B) -> Self::Output;
}

impl<B> AddRule<B> for NoResponseRule {
    type Output = B;

    fn add(self, rule: B) -> B {
        rule
    }
}

impl<B, F> AddRule<B> for ResponseWhen<F> {
    type Output = Either<Self, B>;

    fn add(self, rule: B) -> Self::Output {
        Either(self, rule)
    }
}

impl<B> AddRule<B> for ClassifiedFailure {
    type Output = Either<Self, B>;

    fn add(self, rule: B) -> Self::Output {
        Either(self, rule)
    }
}

impl<B, L, R> AddRule<B> for Either<L, R> {
    type Output = Either<Self, B>;

    fn add(self, rule: B) -> Self::Output {
        Either(self, rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::error::{CircuitOpen, TimedOut, TimeoutKind};
    use palisade_core::protocol::{Grpc, Http};
    use std::time::Duration;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn types_match_through_the_source_chain() {
        let policy = ErrorPolicy::any().or_type::<CircuitOpen>();
        let open: BoxError = CircuitOpen::new(None, Duration::ZERO).into();
        let wrapped: BoxError = Wrapper(CircuitOpen::new(None, Duration::ZERO).into()).into();
        let timed: BoxError = TimedOut::new(TimeoutKind::Total, Duration::from_secs(1)).into();
        assert!(policy.accepts(&open));
        assert!(policy.accepts(&wrapped));
        assert!(!policy.accepts(&timed));
        assert!(ErrorPolicy::any().accepts(&timed));
        let closures = ErrorPolicy::any().or_where(|e| e.to_string().contains("total"));
        assert!(closures.accepts(&timed) && !closures.accepts(&open));
        assert!(format!("{policy:?}").contains("CircuitOpen"));
    }

    #[test]
    fn classified_failures_are_decided_at_the_head_only() {
        let r503 = http::Response::builder().status(503).body(()).unwrap();
        let r404 = http::Response::builder().status(404).body(()).unwrap();
        assert!(ClassifiedFailure.is_failure(&r503, &Http::default()));
        assert!(!ClassifiedFailure.is_failure(&r404, &Http::default()));
        let trailers_only = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
        let streaming = http::Response::builder().body(()).unwrap();
        assert!(ClassifiedFailure.is_failure(&trailers_only, &Grpc::default()));
        assert!(!ClassifiedFailure.is_failure(&streaming, &Grpc::default()));
        let either = Either(NoResponseRule, ResponseWhen(|r: &http::Response<()>| r.status() == 404));
        assert!(either.is_failure(&r404, &Http::default()) && !either.is_failure(&r503, &Http::default()));
    }
}
