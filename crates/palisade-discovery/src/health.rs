//! The balancer's health report: every peer with its breaker's state (open
//! until when, probing, closed), its client's readiness, its load and its
//! latest failure with the whole cause chain, and counts a dashboard can show.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_core::peer::{Availability, PeerId, Unavailable};
use tokio::time::Instant;

use crate::config::AllOpenPolicy;
use crate::future::{LastError, PeerStats};
use crate::registry::RegistryState;

/// Whether a peer's client could take a call when last polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// Ready (or not polled since it last was).
    Ready,
    /// Its `poll_ready` was pending: skipped until a later `poll_ready` of the
    /// balancer finds it ready. Not evicted.
    NotReady,
    /// Its `poll_ready` failed: kept in the set (and in this report) but not
    /// picked until the discover inserts the peer again.
    Failed,
}

impl Readiness {
    /// `ready`, `not_ready` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::NotReady => "not_ready",
            Readiness::Failed => "failed",
        }
    }
}

/// A peer's availability as its per-peer middleware (its breaker) states it,
/// with instants instead of durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerState {
    /// Takes calls: the breaker is closed (or the peer has none).
    Available,
    /// Takes calls but is failing: its breaker tripped and the balancer's
    /// ejection cap kept it in rotation ("open but kept"). Other peers are
    /// preferred to it.
    Degraded,
    /// The breaker is open; its next probe is due at `until`.
    Open {
        /// When the cooldown ends.
        until: Instant,
    },
    /// The breaker is half-open: a probe may go now (`slot_free`), or every
    /// probe slot is in flight.
    Probing {
        /// Whether a probe slot is free.
        slot_free: bool,
    },
    /// Unavailable for another reason (a full per-peer bulkhead, a user
    /// policy) until `until`.
    Unavailable {
        /// When it may be available again.
        until: Instant,
    },
}

impl PeerState {
    /// The state an [`Availability`] answered at `now` stands for.
    pub fn of(availability: Availability, now: Instant) -> Self {
        let later = |d: Duration| palisade_core::time::after(now, d);
        match availability {
            Availability::Available => PeerState::Available,
            Availability::Degraded => PeerState::Degraded,
            Availability::Probe => PeerState::Probing { slot_free: true },
            Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in,
            } => PeerState::Open { until: later(retry_in) },
            Availability::Unavailable {
                reason: Unavailable::ProbesBusy,
                ..
            } => PeerState::Probing { slot_free: false },
            Availability::Unavailable { retry_in, .. } => PeerState::Unavailable { until: later(retry_in) },
            _ => PeerState::Unavailable { until: now },
        }
    }

    /// `available`, `degraded`, `open`, `probing` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Available => "available",
            PeerState::Degraded => "degraded",
            PeerState::Open { .. } => "open",
            PeerState::Probing { .. } => "probing",
            PeerState::Unavailable { .. } => "unavailable",
        }
    }
}

/// One peer in a [`HealthReport`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PeerHealth {
    /// The peer.
    pub peer: PeerId,
    /// Its breaker's state: open until when, probing, available.
    pub state: PeerState,
    /// What its per-peer middleware (breaker) answers now.
    pub availability: Availability,
    /// Whether its client was ready when last polled.
    pub readiness: Readiness,
    /// Its weight.
    pub weight: u32,
    /// Calls in flight (until their response bodies end).
    pub in_flight: usize,
    /// Calls that ended in success since the peer joined.
    pub successes: u64,
    /// Calls that ended in failure since the peer joined.
    pub failures: u64,
    /// The latest failure of a call to it, if any: an error with its whole
    /// cause chain (`transport error: tcp connect error: Connection refused
    /// (os error 111)`), a failed response (`gRPC status 14 (UNAVAILABLE):
    /// ...`, `HTTP 503 Service Unavailable`), or a response that failed at
    /// the end of its stream. Each failure replaces the one before.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<Instant>,
}

impl PeerHealth {
    pub(crate) fn new(
        peer: PeerId,
        state: PeerState,
        availability: Availability,
        readiness: Readiness,
        weight: u32,
        stats: &PeerStats,
        last: Option<LastError>,
    ) -> Self {
        let (last_error, last_error_at) = match last {
            Some(e) => (Some(e.message), Some(e.at)),
            None => (None, None),
        };
        Self {
            peer,
            state,
            availability,
            readiness,
            weight,
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            successes: stats.successes.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            last_error,
            last_error_at,
        }
    }

    /// Whether a call may be sent to it now.
    pub fn is_available(&self) -> bool {
        self.readiness == Readiness::Ready && self.availability.is_available()
    }
}

/// How many peers are in each state, for a dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCounts {
    /// Every known peer.
    pub known: usize,
    /// Available and ready: a call may go there now.
    pub available: usize,
    /// Degraded and ready: "open but kept" by the ejection cap; a call may
    /// go there, other peers are preferred.
    pub degraded: usize,
    /// Breaker open.
    pub open: usize,
    /// Breaker half-open (a probe due or in flight).
    pub probing: usize,
    /// Unavailable for another reason.
    pub unavailable: usize,
    /// Available, but the client was not ready (back-pressure).
    pub not_ready: usize,
    /// The client failed; not picked until the registry replaces it.
    pub failed: usize,
    /// Calls in flight over all peers.
    pub in_flight: usize,
}

impl fmt::Display for PeerCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} peers: {} available, {} degraded, {} open, {} probing, {} unavailable, {} not ready, {} failed; {} calls in flight",
            self.known,
            self.available,
            self.degraded,
            self.open,
            self.probing,
            self.unavailable,
            self.not_ready,
            self.failed,
            self.in_flight
        )
    }
}

/// What a balancer knows: its peers and the state of the registry behind it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The service name, if one was configured.
    pub service: Option<String>,
    /// The registry's state, if a [`RegistryStatus`](crate::RegistryStatus) was attached.
    pub registry: Option<RegistryState>,
    /// What the registry noted about its latest answer, if anything (say, a
    /// DNS SRV target that did not resolve and was skipped).
    pub registry_note: Option<String>,
    /// The last error of the discover stream, if it failed.
    pub discover_error: Option<String>,
    /// Whether the discover stream ended (the set is then frozen).
    pub discover_ended: bool,
    /// What the balancer does when every peer is open.
    pub all_open: AllOpenPolicy,
    /// When the report was made (the instants in it are on tokio's clock).
    pub at: Instant,
    /// The ejection cap: how many peers their breakers have taken out of
    /// rotation, and how many they may; `None` without a cap.
    pub ejections: Option<Ejections>,
    /// Every known peer.
    pub peers: Vec<PeerHealth>,
}

/// How much of the ejection cap is in use (see
/// [`PeerDiscoveryBuilder::max_ejected_share`](crate::PeerDiscoveryBuilder::max_ejected_share)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ejections {
    /// Peers whose breaker took them out of rotation (open or half-open after a trip).
    pub ejected: usize,
    /// The most that may be out at once with the current set.
    pub limit: usize,
}

impl HealthReport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        service: Option<String>,
        registry: Option<RegistryState>,
        registry_note: Option<String>,
        discover_error: Option<String>,
        discover_ended: bool,
        all_open: AllOpenPolicy,
        at: Instant,
        peers: Vec<PeerHealth>,
    ) -> Self {
        Self {
            service,
            registry,
            registry_note,
            discover_error,
            discover_ended,
            all_open,
            at,
            ejections: None,
            peers,
        }
    }

    pub(crate) fn with_ejections(mut self, capped: bool, ejected: usize, limit: usize) -> Self {
        self.ejections = capped.then_some(Ejections { ejected, limit });
        self
    }

    /// How many peers may be picked now.
    pub fn available(&self) -> usize {
        self.peers.iter().filter(|p| p.is_available()).count()
    }

    /// How many peers are in each state.
    pub fn counts(&self) -> PeerCounts {
        let mut counts = PeerCounts {
            known: self.peers.len(),
            ..PeerCounts::default()
        };
        for p in &self.peers {
            counts.in_flight += p.in_flight;
            match (p.readiness, p.state) {
                (Readiness::Failed, _) => counts.failed += 1,
                (_, PeerState::Open { .. }) => counts.open += 1,
                (_, PeerState::Probing { .. }) => counts.probing += 1,
                (_, PeerState::Unavailable { .. }) => counts.unavailable += 1,
                (Readiness::NotReady, PeerState::Available | PeerState::Degraded) => counts.not_ready += 1,
                (Readiness::Ready, PeerState::Available) => counts.available += 1,
                (Readiness::Ready, PeerState::Degraded) => counts.degraded += 1,
            }
        }
        counts
    }

    /// The entry of `peer`, if known.
    pub fn peer(&self, peer: &PeerId) -> Option<&PeerHealth> {
        self.peers.iter().find(|p| &p.peer == peer)
    }
}

/// `+1.5s` from `at` to `then`, or `-1.5s` for an instant past.
struct Relative(Instant, Instant);

impl fmt::Display for Relative {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (at, then) = (self.0, self.1);
        if then >= at {
            write!(f, "+{:?}", then - at)
        } else {
            write!(f, "-{:?}", at - then)
        }
    }
}

impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.service.as_deref().unwrap_or("peers"), self.counts())?;
        if let Some(e) = self.ejections {
            write!(f, "; {} of at most {} ejected", e.ejected, e.limit)?;
        }
        if let Some(registry) = self.registry {
            write!(f, "; registry {}", registry.as_str())?;
        }
        if let Some(note) = &self.registry_note {
            write!(f, " ({note})")?;
        }
        if let Some(error) = &self.discover_error {
            write!(f, "; discover error: {error}")?;
        }
        for p in &self.peers {
            write!(f, "\n  {} ", p.peer)?;
            match p.state {
                PeerState::Available => f.write_str("available")?,
                PeerState::Degraded => f.write_str("degraded (open but kept)")?,
                PeerState::Open { until } => write!(f, "open until {}", Relative(self.at, until))?,
                PeerState::Probing { slot_free: true } => f.write_str("probing (probe due)")?,
                PeerState::Probing { slot_free: false } => f.write_str("probing (probes in flight)")?,
                PeerState::Unavailable { until } => write!(f, "unavailable until {}", Relative(self.at, until))?,
            }
            write!(
                f,
                " {} weight={} in_flight={} ok={} failed={}",
                p.readiness.as_str(),
                p.weight,
                p.in_flight,
                p.successes,
                p.failures
            )?;
            if let Some(e) = &p.last_error {
                write!(f, " last_error={e:?}")?;
                if let Some(at) = p.last_error_at {
                    write!(f, " ({:?} ago)", self.at.saturating_duration_since(at))?;
                }
            }
        }
        Ok(())
    }
}
