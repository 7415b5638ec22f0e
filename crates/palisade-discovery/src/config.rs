//! Configuration of the balancer.

use std::sync::Arc;

use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{Grpc, Http, Plain};

use crate::layer::PeerDiscoveryLayer;
use crate::load::LoadMetric;
use crate::registry::RegistryStatus;

/// Validated settings shared by every balancer a layer builds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    pub(crate) service: Option<Arc<str>>,
    pub(crate) panic_threshold: Option<f64>,
    pub(crate) listeners: Listeners,
    pub(crate) registry: Option<RegistryStatus>,
    pub(crate) load: LoadMetric,
}

/// Builds a [`PeerDiscoveryLayer`]; [`build`](Self::build) validates it.
#[derive(Clone, Debug)]
pub struct PeerDiscoveryBuilder<P = Plain> {
    settings: Settings,
    protocol: P,
}

impl Default for PeerDiscoveryBuilder<Plain> {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            protocol: Plain,
        }
    }
}

impl<P> PeerDiscoveryBuilder<P> {
    /// Speaks `protocol`: it finds the call's attempt record in the request and
    /// follows responses to their end (for http, the end of the body) to count
    /// in-flight calls. Any `Inspect + TrackResponse` classifier works.
    pub fn protocol<P2>(self, protocol: P2) -> PeerDiscoveryBuilder<P2> {
        PeerDiscoveryBuilder {
            settings: self.settings,
            protocol,
        }
    }

    /// Shorthand for `protocol(Grpc::default())`, for a tonic client.
    pub fn grpc(self) -> PeerDiscoveryBuilder<Grpc> {
        self.protocol(Grpc::default())
    }

    /// Shorthand for `protocol(Http::default())`, for a hyper client.
    pub fn http(self) -> PeerDiscoveryBuilder<Http> {
        self.protocol(Http::default())
    }

    /// Names the service, in errors, events and the health report.
    pub fn service_name(mut self, name: impl AsRef<str>) -> Self {
        self.settings.service = Some(Arc::from(name.as_ref()));
        self
    }

    /// Envoy-style panic threshold in `(0, 1]`: when the share of available
    /// peers falls below it, the attempt record stops excluding peers, so
    /// retries may go back to one of the few available peers. Open peers are
    /// never picked (their breaker would refuse the call); see the crate docs
    /// for why this differs from Envoy. Off by default.
    pub fn panic_threshold(mut self, threshold: f64) -> Self {
        self.settings.panic_threshold = Some(threshold);
        self
    }

    /// How load is measured (default [`LoadMetric::PendingRequests`]).
    pub fn load(mut self, metric: LoadMetric) -> Self {
        self.settings.load = metric;
        self
    }

    /// Adds a listener for peer added/removed and rejection events.
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.settings.listeners = self.settings.listeners.with(listener);
        self
    }

    /// Attaches a registry's status (from
    /// [`RegistryDiscover::status`](crate::RegistryDiscover::status)) so that
    /// the health report says which state the registry is in.
    pub fn registry_status(mut self, status: RegistryStatus) -> Self {
        self.settings.registry = Some(status);
        self
    }

    /// Checks the configuration: the panic threshold lies in `(0, 1]`; a
    /// peak-EWMA decay is non-zero.
    pub fn build(self) -> Result<PeerDiscoveryLayer<P>, ConfigError> {
        if let LoadMetric::PeakEwma { decay, .. } = self.settings.load
            && decay.is_zero()
        {
            return Err(ConfigError::new(
                "peer discovery",
                "load",
                "peak-EWMA decay must be non-zero",
            ));
        }
        if let Some(t) = self.settings.panic_threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(ConfigError::new(
                "peer discovery",
                "panic_threshold",
                format!("must lie in (0, 1], got {t}"),
            ));
        }
        Ok(PeerDiscoveryLayer::from_parts(Arc::new(self.settings), self.protocol))
    }
}
