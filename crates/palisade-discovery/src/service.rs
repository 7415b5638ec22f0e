//! The balancer service.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_body::TrackResponse;
use palisade_core::BoxError;
use palisade_core::peer::{AttemptRecord, CheckAvailability};
use palisade_core::protocol::{Inspect, Plain};
use parking_lot::Mutex;
use tower::discover::Discover;
use tower_service::Service;

use crate::config::Settings;
use crate::future::{InFlight, ResponseFuture};
use crate::health::HealthReport;
use crate::peer::PeerWeight;
use crate::state::{Shared, emit_deferred};
use crate::tag::TagPeer;

/// A balancer over a [`Discover`] of per-peer services that routes around
/// unavailable peers. See the [crate docs](crate) for the behaviour.
///
/// Clones share the peer set (and the discover), so a tonic client built on
/// it can be cloned into many tasks.
pub struct PeerDiscovery<D: Discover, P = Plain> {
    shared: Arc<Mutex<Shared<D>>>,
    settings: Arc<Settings>,
    protocol: P,
}

impl<D: Discover, P: Clone> Clone for PeerDiscovery<D, P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            settings: self.settings.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

impl<D: Discover, P: fmt::Debug> fmt::Debug for PeerDiscovery<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerDiscovery")
            .field("service", &self.settings.service)
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
    pub(crate) fn from_parts(discover: D, settings: Arc<Settings>, protocol: P) -> Self
    where
        D: Discover,
    {
        Self {
            shared: Arc::new(Mutex::new(Shared::new(discover))),
            settings,
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
        self.shared.lock().len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The health report: every known peer with its availability, readiness,
    /// load and last error, and the registry's state if one was attached.
    ///
    /// The balancer's own events are emitted after its lock is released, so
    /// its listeners may call this. Do not call it from an event listener of
    /// a per-peer middleware (a breaker's): the balancer may be asking that
    /// middleware for its availability while it holds its lock.
    pub fn health(&self) -> HealthReport {
        self.shared.lock().health(&self.settings)
    }
}

fn record_of<'r, P: Inspect<Req>, Req>(protocol: &P, req: &'r Req) -> Option<&'r AttemptRecord> {
    protocol.attempt_record(req)
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

    /// Applies the discover's pending changes and re-polls a few peers that
    /// were not ready. Always ready: when no peer can take a call, `call`
    /// answers [`NoAvailablePeers`](palisade_core::error::NoAvailablePeers) at once.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut shared = self.shared.lock();
        shared.drain_discover(cx, &self.settings);
        shared.poll_not_ready::<Req>(cx);
        let events = shared.take_deferred();
        drop(shared);
        emit_deferred(events, &self.settings);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let mut shared = self.shared.lock();
        let chosen = loop {
            match shared.choose(record_of(&self.protocol, &req), &self.settings) {
                Ok(i) => {
                    if shared.try_ready::<Req>(i) {
                        break i;
                    }
                    // Not ready: now flagged, so the next choice skips it.
                }
                Err(error) => {
                    let events = shared.take_deferred();
                    drop(shared);
                    emit_deferred(events, &self.settings);
                    return ResponseFuture::failed(error);
                }
            }
        };
        let mut tag = None;
        if let Some(record) = self
            .protocol
            .extensions_mut(&mut req)
            .and_then(|e| e.get_mut::<AttemptRecord>())
        {
            let peer = shared.peer_id(chosen).clone();
            record.record(peer.clone());
            tag = Some(peer);
        }
        let guard = InFlight::new(shared.stats(chosen).clone());
        let future = shared.call(chosen, req);
        let events = shared.take_deferred();
        drop(shared);
        emit_deferred(events, &self.settings);
        ResponseFuture::called(future, guard, self.protocol.clone(), tag)
    }
}
