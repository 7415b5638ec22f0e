//! The breaker service.

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_body::TrackResponse;
use palisade_core::classify::Classify;
use palisade_core::error::BoxError;
use palisade_core::peer::{Availability, CheckAvailability, FleetMembership};
use palisade_core::protocol::Plain;
use tower_service::Service;

use crate::config::CircuitBreakerConfig;
use crate::future::ResponseFuture;
use crate::shared::{Breaker, CallGuard, CircuitBreakerHandle};

/// A circuit breaker around a service `S`, classifying with `P`.
///
/// Clones share one breaker. Build it with [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)
/// or [`CircuitBreaker::new`].
#[derive(Debug)]
pub struct CircuitBreaker<S, P = Plain> {
    inner: S,
    shared: Arc<Breaker>,
    protocol: P,
}

impl<S: Clone, P: Clone> Clone for CircuitBreaker<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
        }
    }
}

impl<S> CircuitBreaker<S, Plain> {
    /// A breaker of its own around `inner`, classifying with [`Plain`] (every
    /// `Err` is a failure).
    pub fn new(inner: S, config: CircuitBreakerConfig) -> Self {
        Self::with_protocol(inner, config, Plain)
    }
}

impl<S, P> CircuitBreaker<S, P> {
    /// A breaker of its own around `inner`, classifying with `protocol`.
    pub fn with_protocol(inner: S, config: CircuitBreakerConfig, protocol: P) -> Self {
        Self {
            inner,
            shared: Breaker::new(config, None),
            protocol,
        }
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Breaker>, protocol: P) -> Self {
        Self {
            inner,
            shared,
            protocol,
        }
    }

    /// A handle on this breaker's state.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Req> Service<Req> for CircuitBreaker<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: TrackResponse<S::Response, S::Error, CallGuard> + Clone,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    /// Forwards the inner service's readiness: an open breaker never makes
    /// the service unready (it answers from `call`).
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let cancelled = Classify::<S::Response, S::Error>::abandon_policy(&self.protocol).call_dropped();
        match self.shared.acquire(cancelled) {
            Ok(guard) => ResponseFuture::called(self.inner.call(request), guard, self.protocol.clone()),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

impl<S, P> CheckAvailability for CircuitBreaker<S, P> {
    fn availability(&self) -> Availability {
        self.shared.availability()
    }
    fn join_fleet(&self, membership: FleetMembership) -> bool {
        self.shared.join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        self.shared.request_probe()
    }

    fn reset_open(&self) -> bool {
        self.shared.reset_open()
    }
}
