//! The layer that turns a `Discover` into a balancer.

use std::sync::Arc;

use palisade_core::protocol::{Plain, Unchosen};
use tower_layer::Layer;

use crate::config::{PeerDiscoveryBuilder, Settings};
use crate::service::PeerDiscovery;

/// Wraps a [`Discover`](tower::discover::Discover) of per-peer services in a
/// [`PeerDiscovery`] balancer.
///
/// Every balancer built by one layer value shares its settings and listeners;
/// each has its own peer set (it owns the discover it was built from), shared
/// by all of its clones.
#[derive(Clone, Debug)]
pub struct PeerDiscoveryLayer<P = Plain> {
    settings: Arc<Settings>,
    protocol: P,
}

impl PeerDiscoveryLayer<Plain> {
    /// A layer with the defaults, speaking [`Plain`]: a convenience for
    /// non-http services. Over http or gRPC use [`builder`](Self::builder),
    /// which makes the protocol choice explicit.
    pub fn new() -> Self {
        Self::from_parts(Arc::default(), Plain)
    }

    /// The way to build a balancer layer: a protocol chosen with `.grpc()`,
    /// `.http()`, `.plain()` or `.protocol(p)` (without one there is no
    /// `build()`), a service name, listeners, a panic threshold, then
    /// `build()?`.
    ///
    /// ```
    /// use palisade_discovery::PeerDiscoveryLayer;
    /// let layer = PeerDiscoveryLayer::builder().grpc().service_name("echo").build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    pub fn builder() -> PeerDiscoveryBuilder<Unchosen> {
        PeerDiscoveryBuilder::default()
    }
}

impl Default for PeerDiscoveryLayer<Plain> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> PeerDiscoveryLayer<P> {
    pub(crate) fn from_parts(settings: Arc<Settings>, protocol: P) -> Self {
        Self { settings, protocol }
    }
}

impl<D, P: Clone> Layer<D> for PeerDiscoveryLayer<P>
where
    D: tower::discover::Discover,
{
    type Service = PeerDiscovery<D, P>;

    fn layer(&self, discover: D) -> Self::Service {
        PeerDiscovery::from_parts(discover, self.settings.clone(), self.protocol.clone())
    }
}
