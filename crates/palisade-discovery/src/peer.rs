//! What the balancer needs from a per-peer service beyond `Service`: its
//! availability ([`CheckAvailability`]) and its weight ([`PeerWeight`]), and
//! the wrappers that supply them.

use std::task::{Context, Poll};

use palisade_core::peer::{Availability, CheckAvailability, FleetMembership};
use tower_service::Service;

/// The relative share of traffic a peer should get (default 1).
///
/// The balancer samples peers in proportion to their weight and compares load
/// per unit of weight, so a peer of weight 3 takes about three times the calls
/// of a peer of weight 1.
pub trait PeerWeight {
    /// The peer's weight; 0 is treated as 1.
    fn weight(&self) -> u32 {
        1
    }
}

/// A plain service that is always available (it has no breaker), weight 1
/// unless set.
///
/// Use it to put services without per-peer middleware behind the balancer, or
/// in benchmarks.
#[derive(Clone, Debug)]
pub struct AlwaysAvailable<S> {
    inner: S,
    weight: u32,
}

impl<S> AlwaysAvailable<S> {
    /// Wraps `inner`, weight 1.
    pub fn new(inner: S) -> Self {
        Self { inner, weight: 1 }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Never changes, so it "reports" every change (there are none): the
/// balancer keeps it in the available set without asking.
impl<S> CheckAvailability for AlwaysAvailable<S> {
    #[inline]
    fn availability(&self) -> Availability {
        Availability::Available
    }

    fn join_fleet(&self, _: FleetMembership) -> bool {
        true
    }

    fn request_probe(&self) -> bool {
        true
    }

    fn reset_open(&self) -> bool {
        true
    }
}

impl<S> PeerWeight for AlwaysAvailable<S> {
    #[inline]
    fn weight(&self) -> u32 {
        self.weight
    }
}

impl<S: Service<Req>, Req> Service<Req> for AlwaysAvailable<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> S::Future {
        self.inner.call(req)
    }
}

/// A per-peer service (usually a circuit breaker over a client) with a weight.
///
/// [`RegistryDiscover`](crate::RegistryDiscover) wraps the services it makes
/// in it, with the weight the instance registered. Availability is the inner
/// service's.
#[derive(Clone, Debug)]
pub struct Weighted<S> {
    inner: S,
    weight: u32,
}

impl<S> Weighted<S> {
    /// Wraps `inner` with `weight`.
    pub fn new(inner: S, weight: u32) -> Self {
        Self { inner, weight }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: CheckAvailability> CheckAvailability for Weighted<S> {
    #[inline]
    fn availability(&self) -> Availability {
        self.inner.availability()
    }

    fn join_fleet(&self, membership: FleetMembership) -> bool {
        self.inner.join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        self.inner.request_probe()
    }

    fn reset_open(&self) -> bool {
        self.inner.reset_open()
    }
}

impl<S> PeerWeight for Weighted<S> {
    #[inline]
    fn weight(&self) -> u32 {
        self.weight
    }
}

impl<S: Service<Req>, Req> Service<Req> for Weighted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> S::Future {
        self.inner.call(req)
    }
}
