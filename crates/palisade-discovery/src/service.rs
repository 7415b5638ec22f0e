//! The balancer service.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_body::TrackResponse;
use palisade_core::BoxError;
use palisade_core::peer::CheckAvailability;
use palisade_core::protocol::{Inspect, Plain};
use tower::discover::Discover;
use tower_service::Service;

use crate::balancer::{Balancer, Sent, Wait};

/// How many times one `poll_ready` applies news that came in while it
/// looked, before it yields.
const NEWS_ROUNDS: usize = 3;
use crate::config::Settings;
use crate::future::{InFlight, ResponseFuture};
use crate::health::HealthReport;
use crate::peer::PeerWeight;
use crate::tag::TagPeer;

/// A balancer over a [`Discover`] of per-peer services that routes around
/// unavailable peers. See the [crate docs](crate) for the behaviour.
///
/// Clones share the peer set (and the discover), so a tonic client built on
/// it can be cloned into many tasks; clones choose in parallel (the set is
/// read-mostly).
pub struct PeerDiscovery<D: Discover, P = Plain> {
    shared: Arc<Balancer<D>>,
    protocol: P,
}

impl<D: Discover, P: Clone> Clone for PeerDiscovery<D, P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

impl<D: Discover, P: fmt::Debug> fmt::Debug for PeerDiscovery<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerDiscovery")
            .field("service", &self.shared.settings.service)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<D> PeerDiscovery<D, Plain>
where
    D: Discover,
{
    /// A balancer over `discover` with the default settings.
    pub fn new(discover: D) -> Self {
        Self::from_parts(discover, Arc::default(), Plain)
    }
}

impl<D: Discover, P> PeerDiscovery<D, P> {
    pub(crate) fn from_parts(discover: D, settings: Arc<Settings>, protocol: P) -> Self {
        Self {
            shared: Arc::new(Balancer::new(discover, settings)),
            protocol,
        }
    }
}

impl<D, P> PeerDiscovery<D, P>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: CheckAvailability + PeerWeight,
    D::Error: Into<BoxError>,
{
    /// How many peers are known (available or not).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The health report: every known peer with its breaker's state (open
    /// until when, probing, available), readiness, load and latest failure,
    /// counts by state, and the registry's state if one was attached.
    ///
    /// It may be called from any listener, the balancer's own (its events
    /// are emitted after its locks are released) or a per-peer breaker's
    /// (a peer whose service is busy on this very thread is reported from
    /// what the balancer last learnt of it).
    pub fn health(&self) -> HealthReport {
        self.shared.health()
    }
}

impl<D, P, Req> Service<Req> for PeerDiscovery<D, P>
where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Display,
    D::Service: Service<Req> + CheckAvailability + PeerWeight,
    <D::Service as Service<Req>>::Error: Into<BoxError>,
    D::Error: Into<BoxError>,
    P: Inspect<Req>
        + TrackResponse<<D::Service as Service<Req>>::Response, <D::Service as Service<Req>>::Error, InFlight>
        + TagPeer<<D::Service as Service<Req>>::Response>
        + Clone,
{
    type Response = P::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<D::Service as Service<Req>>::Future, P>;

    /// Applies the discover's pending changes and the peers' reports, and
    /// re-polls a few peers whose client was not ready. Ready unless every
    /// available peer's client is busy (back-pressure: it waits, as a tower
    /// `Buffer` does, and is woken when one is ready); never an error. When
    /// no peer is available at all, `call` answers
    /// [`NoAvailablePeers`](palisade_core::error::NoAvailablePeers) at once.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let shared = &*self.shared;
        for _ in 0..NEWS_ROUNDS {
            shared.drive_discover();
            shared.apply_inbox();
            shared.poll_not_ready::<Req>();
            match shared.must_wait(cx) {
                Wait::Go => return Poll::Ready(Ok(())),
                Wait::Pending => return Poll::Pending,
                Wait::News => {}
            }
        }
        // News keeps coming: yield, and look again when polled next.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.shared.call(&self.protocol, req) {
            Ok(Sent { future, guard, peer }) => ResponseFuture::called(future, guard, self.protocol.clone(), peer),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}
