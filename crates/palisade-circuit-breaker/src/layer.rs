//! The breaker layer.

use std::sync::Arc;

use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, PeerId};
use palisade_core::protocol::Plain;
use tower_layer::Layer;

use crate::config::CircuitBreakerConfig;
use crate::service::CircuitBreaker;
use crate::shared::{CircuitBreakerHandle, Shared};

/// Wraps services in a [`CircuitBreaker`].
///
/// The layer holds one breaker: every service it wraps, and every clone of
/// the layer, shares it, so a framework that calls [`Layer::layer`] again and
/// again still gets one breaker that trips. For a breaker per peer, make one
/// explicitly with [`for_peer`](Self::for_peer).
#[derive(Debug)]
pub struct CircuitBreakerLayer<P = Plain> {
    shared: Arc<Shared>,
    protocol: P,
}

impl<P: Clone> Clone for CircuitBreakerLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
        }
    }
}

impl CircuitBreakerLayer<Plain> {
    /// A layer with one breaker configured by `config`, classifying with
    /// [`Plain`] until [`protocol`](Self::protocol) chooses another.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            shared: Shared::new(config, None),
            protocol: Plain,
        }
    }
}

impl<P> CircuitBreakerLayer<P> {
    /// Classifies (and follows responses) with `protocol`: [`Http`](palisade_core::protocol::Http),
    /// [`Grpc`](palisade_core::protocol::Grpc), or any classifier refined with
    /// [`ClassifyExt`](palisade_core::classify::ClassifyExt) closures. Keeps the breaker.
    pub fn protocol<Q>(self, protocol: Q) -> CircuitBreakerLayer<Q> {
        CircuitBreakerLayer {
            shared: self.shared,
            protocol,
        }
    }

    /// A layer with a fresh breaker of its own for `peer`, with this layer's
    /// configuration and protocol: what a balancer uses to give each peer its
    /// own state.
    pub fn for_peer(&self, peer: impl Into<PeerId>) -> Self
    where
        P: Clone,
    {
        Self {
            shared: Shared::new(self.shared.config().clone().with_peer(peer), None),
            protocol: self.protocol.clone(),
        }
    }

    /// A handle on the layer's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        self.shared.config()
    }
}

impl<S, P: Clone> Layer<S> for CircuitBreakerLayer<P> {
    type Service = CircuitBreaker<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_shared(inner, Arc::clone(&self.shared), self.protocol.clone())
    }
}

impl<P> CheckAvailability for CircuitBreakerLayer<P> {
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
