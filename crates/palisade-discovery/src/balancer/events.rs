//! The balancer's events and metrics.
//!
//! Events are noted under the balancer's lock and emitted once it is
//! released, so that a listener may call back into the balancer (say,
//! [`health`](crate::PeerDiscovery::health)) without deadlocking. Every event
//! goes to `tracing` with the core's field conventions and to the listeners.
//!
//! With the `metrics` feature every metric carries the `service` label (the
//! [`service_name`](crate::PeerDiscoveryBuilder::service_name), `-` when
//! unnamed), so that two balancers never overwrite each other's values; the
//! handles are registered once, when the balancer is made.

use std::time::Duration;

use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::peer::PeerId;
use tokio::time::Instant;

use super::set::{Category, Counts, Tracked};
use crate::config::{AllOpenPolicy, Settings};

/// An event waiting for the lock to be released.
#[derive(Debug)]
pub(crate) enum Deferred {
    Added(PeerId),
    Removed(PeerId),
    /// A peer entered or left the set of peers a call may be sent to.
    Availability {
        peer: PeerId,
        available: bool,
        reason: &'static str,
        cooldown: Option<Duration>,
    },
    /// A peer's breaker tripped but the ejection cap kept it in rotation,
    /// degraded (`degraded`), or a degraded peer recovered.
    Degraded {
        peer: PeerId,
        degraded: bool,
    },
    /// A call found no peer to take it.
    Rejected,
    /// Every peer was open and the all-open policy acted on `peers` of them.
    Policy {
        policy: AllOpenPolicy,
        peers: usize,
    },
}

impl Deferred {
    /// The flip of a peer now in `category` / `tracked`.
    pub(crate) fn availability(peer: PeerId, category: Category, tracked: Tracked, now: Instant) -> Self {
        let (available, reason, cooldown) = match category {
            Category::Available | Category::Degraded => (true, "available", None),
            Category::Open => (
                false,
                "breaker open",
                match tracked {
                    Tracked::Open { until } => Some(until.saturating_duration_since(now)),
                    _ => None,
                },
            ),
            Category::Probing => (false, "probing", None),
            Category::NotReady => (false, "client not ready", None),
            Category::Failed => (false, "client failed", None),
            Category::Other => (false, "unavailable", None),
        };
        Deferred::Availability {
            peer,
            available,
            reason,
            cooldown,
        }
    }

    fn emit(&self, settings: &Settings) {
        let service = settings.service.as_deref();
        let event = match self {
            Deferred::Added(id) => Event::new(LayerName::Discovery, EventKind::PeerAdded).peer(Some(id)),
            Deferred::Removed(id) => Event::new(LayerName::Discovery, EventKind::PeerRemoved).peer(Some(id)),
            Deferred::Availability {
                peer,
                available,
                reason,
                cooldown,
            } => {
                let (from, to) = if *available {
                    ("unavailable", "available")
                } else {
                    ("available", "unavailable")
                };
                Event::new(
                    LayerName::Discovery,
                    EventKind::StateChange {
                        from,
                        to,
                        reason,
                        cooldown: *cooldown,
                    },
                )
                .peer(Some(peer))
            }
            Deferred::Degraded { peer, degraded } => {
                let (from, to, reason) = if *degraded {
                    ("available", "degraded", "ejection cap reached: open but kept")
                } else {
                    ("degraded", "available", "recovered")
                };
                Event::new(
                    LayerName::Discovery,
                    EventKind::StateChange {
                        from,
                        to,
                        reason,
                        cooldown: None,
                    },
                )
                .peer(Some(peer))
            }
            Deferred::Rejected => Event::new(
                LayerName::Discovery,
                EventKind::Rejected {
                    reason: "no available peers",
                },
            ),
            Deferred::Policy { policy, peers } => {
                tracing::info!(target: "palisade", layer = "discovery", service = service.unwrap_or("-"), policy = policy.as_str(), peers, "every peer open: all-open policy applied");
                Event::new(
                    LayerName::Discovery,
                    EventKind::StateChange {
                        from: "all_open",
                        to: policy.as_str(),
                        reason: "every peer open",
                        cooldown: None,
                    },
                )
            }
        };
        settings.listeners.emit(&event.key(service));
    }
}

/// Emits events taken from the set once its lock is released.
pub(crate) fn emit(events: &[Deferred], settings: &Settings) {
    for event in events {
        event.emit(settings);
    }
}

/// The balancer's metric handles (feature `metrics`), or nothing.
#[derive(Debug)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    handles: Handles,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Handles {
    peers: metrics::Gauge,
    available: metrics::Gauge,
    open: metrics::Gauge,
    probing: metrics::Gauge,
    degraded: metrics::Gauge,
    ejected: metrics::Gauge,
    rejected: metrics::Counter,
    resets: metrics::Counter,
    early_probes: metrics::Counter,
}

impl Metrics {
    pub(crate) fn new(settings: &Settings) -> Self {
        #[cfg(feature = "metrics")]
        {
            let service = settings.service.as_deref().unwrap_or("-").to_owned();
            let gauge = |name: &'static str| metrics::gauge!(name, "service" => service.clone());
            let handles = Handles {
                peers: gauge("palisade_discovery_peers"),
                available: gauge("palisade_discovery_available_peers"),
                open: gauge("palisade_discovery_open_peers"),
                probing: gauge("palisade_discovery_probing_peers"),
                degraded: gauge("palisade_discovery_degraded_peers"),
                ejected: gauge("palisade_discovery_ejected_peers"),
                rejected: metrics::counter!("palisade_discovery_no_available_peers_total", "service" => service.clone()),
                resets: metrics::counter!("palisade_discovery_all_open_total", "service" => service.clone(), "policy" => "reset"),
                early_probes: metrics::counter!("palisade_discovery_all_open_total", "service" => service, "policy" => "probe_now"),
            };
            Self { handles }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = settings;
            Self {}
        }
    }

    /// Sets the gauges from the counts (under the write lock, so that they
    /// end at the last change).
    pub(crate) fn counts(&self, known: usize, counts: Counts, ejected: usize) {
        #[cfg(feature = "metrics")]
        {
            let h = &self.handles;
            h.peers.set(known as f64);
            h.available.set(counts.get(Category::Available) as f64);
            h.open.set(counts.get(Category::Open) as f64);
            h.probing.set(counts.get(Category::Probing) as f64);
            h.degraded.set(counts.get(Category::Degraded) as f64);
            h.ejected.set(ejected as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (known, counts, ejected);
    }

    pub(crate) fn rejected(&self) {
        #[cfg(feature = "metrics")]
        self.handles.rejected.increment(1);
    }

    pub(crate) fn policy(&self, policy: AllOpenPolicy) {
        #[cfg(feature = "metrics")]
        match policy {
            AllOpenPolicy::Reset => self.handles.resets.increment(1),
            AllOpenPolicy::ProbeNow => self.handles.early_probes.increment(1),
            AllOpenPolicy::FailFast => {}
        }
        #[cfg(not(feature = "metrics"))]
        let _ = policy;
    }
}
