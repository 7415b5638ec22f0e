//! Configuration of the balancer.

use std::sync::Arc;

use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{IsGrpc, Unchosen};

use crate::layer::PeerDiscoveryLayer;
use crate::load::LoadMetric;
use crate::registry::RegistryStatus;

/// What the balancer does when no peer can take a call because every peer
/// that could is open (or half-open with its probe slots taken).
///
/// It matters after a fleet-wide blip — a two-second partition, a rolling
/// restart of a small fleet — which trips every peer's breaker at once:
/// with [`FailFast`](Self::FailFast) every call then fails for a whole
/// cooldown (10 s by default), and each failed probe round doubles it. The
/// policies act only through the peers' [`CheckAvailability`]
/// (`request_probe`, `reset_open`): a breaker forced open by an operator
/// refuses both, and so does a peer without a breaker, so such peers are
/// never picked by a policy.
///
/// The default is [`Reset`](Self::Reset), the behaviour of the client this
/// project descends from: when every peer of a service is open, it resets
/// that service's breakers and picks again, so a fleet that recovered serves
/// the very next call. The cost: a fleet that is really down gets, after each
/// reset, as many calls as its breakers need to trip again (3 per peer with
/// the default breaker) instead of one probe per peer per cooldown. A retry
/// budget above the balancer bounds what that adds. Choose
/// [`ProbeNow`](Self::ProbeNow) for a gentler recovery (one early probe at a
/// time, and the breakers' cooldown doubling stays meaningful for metrics),
/// or [`FailFast`](Self::FailFast) to keep every breaker's cooldown.
///
/// [`CheckAvailability`]: palisade_core::peer::CheckAvailability
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllOpenPolicy {
    /// Fail the call at once with `NoAvailablePeers`; open peers wait out
    /// their cooldown.
    FailFast,
    /// Send this call as the probe of the open peer whose probe is due
    /// soonest, without waiting for its cooldown (respecting its probe
    /// limit). A fleet that recovered serves again within one round trip,
    /// one probe at a time.
    ProbeNow,
    /// Reset the open breakers of every peer of this balancer and pick
    /// again (the default, as the seed system does).
    #[default]
    Reset,
}

impl AllOpenPolicy {
    /// `fail_fast`, `probe_now` or `reset` (events and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            AllOpenPolicy::FailFast => "fail_fast",
            AllOpenPolicy::ProbeNow => "probe_now",
            AllOpenPolicy::Reset => "reset",
        }
    }
}

/// Validated settings shared by every balancer a layer builds.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) service: Option<Arc<str>>,
    pub(crate) panic_threshold: Option<f64>,
    pub(crate) listeners: Listeners,
    pub(crate) registry: Option<RegistryStatus>,
    pub(crate) load: LoadMetric,
    pub(crate) all_open: AllOpenPolicy,
    /// The share of peers that may be ejected at once; `None`: no cap.
    pub(crate) max_ejected_share: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: None,
            panic_threshold: None,
            listeners: Listeners::default(),
            registry: None,
            load: LoadMetric::default(),
            all_open: AllOpenPolicy::default(),
            max_ejected_share: Some(DEFAULT_MAX_EJECTED_SHARE),
        }
    }
}

/// The default share of a balancer's peers that their breakers may take out
/// of rotation at once: 10 %, Envoy's `max_ejection_percent` default (with
/// at least one peer ejectable and at least one kept); see
/// [`PeerDiscoveryBuilder::max_ejected_share`] and the crate docs for the
/// measurements behind it.
pub const DEFAULT_MAX_EJECTED_SHARE: f64 = 0.1;

/// Builds a [`PeerDiscoveryLayer`]; [`build`](Self::build) validates it.
///
/// The builder starts on [`Unchosen`] and has no [`build`](Self::build)
/// until a protocol is chosen with [`grpc`](Self::grpc),
/// [`http`](Self::http), [`plain`](Self::plain) or
/// [`protocol`](Self::protocol). A balancer left on [`Plain`](palisade_core::protocol::Plain) over a tonic
/// `Channel` would count a call as finished at its response head, not at the
/// end of its body (so a streaming peer looks idle and draws more load), and
/// would not see the attempt record that keeps a retry off the peer that
/// just failed, all silently; so forgetting the protocol is a compile error
/// instead:
///
/// ```compile_fail
/// use palisade_discovery::PeerDiscoveryLayer;
/// let layer = PeerDiscoveryLayer::builder().service_name("echo").build();
/// ```
#[derive(Clone, Debug)]
pub struct PeerDiscoveryBuilder<P = Unchosen> {
    settings: Settings,
    protocol: P,
}

impl Default for PeerDiscoveryBuilder<Unchosen> {
    /// The defaults, with no protocol chosen yet.
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            protocol: Unchosen,
        }
    }
}

impl<P> PeerDiscoveryBuilder<P> {
    palisade_core::protocol_methods! {
        builder: PeerDiscoveryBuilder<_>,
        rebuild: |self, protocol: Q| PeerDiscoveryBuilder { settings: self.settings, protocol },
        protocol: "It finds the call's attempt record in the request and follows responses to their end (for \
            http, the end of the body) to count in-flight calls. Any `Inspect + TrackResponse` classifier \
            works.",
        grpc: "a call is in flight until its trailers, and the attempt record in the request keeps a retry \
            off the peer that just failed.",
        http: "a call is in flight until the end of its body.",
        plain: "a call ends with its response; every `Ok` is a success.",
    }

    /// Names the service, in errors, events, the health report and the
    /// `service` label of every metric.
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

    /// What to do when every peer is open (default [`AllOpenPolicy::Reset`],
    /// as the seed system does; see [`AllOpenPolicy`] for the trade-off).
    pub fn all_open(mut self, policy: AllOpenPolicy) -> Self {
        self.settings.all_open = policy;
        self
    }

    /// The ejection cap: the share of this balancer's peers, in `(0, 1]`,
    /// that their breakers may take out of rotation at once (Envoy's
    /// `max_ejection_percent`). Default [`DEFAULT_MAX_EJECTED_SHARE`], 10 %.
    ///
    /// With `n` peers, at most `floor(share * n)` may be out, but at least
    /// one may always go (with two peers or more) and at least one always
    /// stays: a lone peer is never ejected. A breaker whose trip the cap
    /// refuses stays closed, in rotation, and reports itself degraded ("open
    /// but kept"); the balancer prefers other peers to it, sends it one call
    /// a second so that it can show it recovered, and its breaker asks
    /// again on its next failure. So a failure of the whole fleet (a
    /// brownout, a partition) never takes the whole fleet out, while one
    /// bad instance is still excluded. Only breakers that ask count
    /// (`palisade-circuit-breaker`'s do, through the
    /// [`FleetMembership`](palisade_core::peer::FleetMembership) it joins);
    /// a peer forced open by an operator is not counted and not refused.
    pub fn max_ejected_share(mut self, share: f64) -> Self {
        self.settings.max_ejected_share = Some(share);
        self
    }

    /// No ejection cap: every peer may be ejected, the last one too (the
    /// balancer's behaviour before the cap existed; the all-open policy then
    /// decides what a call does when every peer is open).
    pub fn no_ejection_cap(mut self) -> Self {
        self.settings.max_ejected_share = None;
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
}

impl<P: IsGrpc> PeerDiscoveryBuilder<P> {
    /// Checks the configuration: the panic threshold and the ejection cap
    /// lie in `(0, 1]`; a peak-EWMA decay is non-zero. Exists once a
    /// protocol is chosen (every protocol implements [`IsGrpc`];
    /// [`Unchosen`] does not).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field out of range.
    pub fn build(self) -> Result<PeerDiscoveryLayer<P>, ConfigError> {
        if let Some(share) = self.settings.max_ejected_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(ConfigError::new(
                "peer discovery",
                "max_ejected_share",
                format!("must lie in (0, 1], got {share}"),
            ));
        }
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
