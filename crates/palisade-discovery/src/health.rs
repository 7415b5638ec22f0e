//! The balancer's health report.

use std::fmt;

use palisade_core::peer::{Availability, PeerId};

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

/// One peer in a [`HealthReport`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PeerHealth {
    /// The peer.
    pub peer: PeerId,
    /// What its per-peer middleware (breaker) says now.
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
    /// The last error a call to it returned, if any.
    pub last_error: Option<String>,
}

/// What a balancer knows: its peers and the state of the registry behind it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The service name, if one was configured.
    pub service: Option<String>,
    /// The registry's state, if a [`RegistryStatus`](crate::RegistryStatus) was attached.
    pub registry: Option<RegistryState>,
    /// The last error of the discover stream, if it failed.
    pub discover_error: Option<String>,
    /// Whether the discover stream ended (the set is then frozen).
    pub discover_ended: bool,
    /// Every known peer.
    pub peers: Vec<PeerHealth>,
}

impl HealthReport {
    /// How many peers may be picked now.
    pub fn available(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.readiness == Readiness::Ready && p.availability.is_available())
            .count()
    }

    /// The entry of `peer`, if known.
    pub fn peer(&self, peer: &PeerId) -> Option<&PeerHealth> {
        self.peers.iter().find(|p| &p.peer == peer)
    }
}

impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} peers, {} available",
            self.service.as_deref().unwrap_or("peers"),
            self.peers.len(),
            self.available()
        )?;
        if let Some(registry) = self.registry {
            write!(f, ", registry {}", registry.as_str())?;
        }
        for p in &self.peers {
            write!(
                f,
                "\n  {} {:?} {} weight={} in_flight={} ok={} failed={}",
                p.peer,
                p.availability,
                p.readiness.as_str(),
                p.weight,
                p.in_flight,
                p.successes,
                p.failures
            )?;
            if let Some(e) = &p.last_error {
                write!(f, " last_error={e:?}")?;
            }
        }
        Ok(())
    }
}
