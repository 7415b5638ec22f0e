//! The Palisade client's per-peer breaker states over time, from its events.

use std::sync::Arc;

use palisade_core::event::{Event, EventKind, LayerName, Listener};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

/// A breaker state as the chart draws it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused (forced open counts here too).
    Open,
    /// Probes decide.
    HalfOpen,
}

impl BreakerState {
    /// From an event's `to` state name (`closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`).
    pub fn from_event(name: &str) -> Option<Self> {
        match name {
            "closed" | "forced_closed" => Some(BreakerState::Closed),
            "open" | "forced_open" => Some(BreakerState::Open),
            "half_open" => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }

    /// `closed`, `open`, `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// One breaker transition.
#[derive(Clone, Debug)]
pub struct Transition {
    /// When it happened.
    pub at: Instant,
    /// The peer (its address).
    pub peer: String,
    /// The state entered.
    pub to: BreakerState,
}

/// A [`Listener`] that records every breaker transition; register it on the
/// breaker configuration so that every per-peer breaker reports to it.
#[derive(Debug, Default)]
pub struct BreakerLog {
    transitions: Mutex<Vec<Transition>>,
}

impl BreakerLog {
    /// A new, empty log.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Every transition so far, in order.
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.lock().clone()
    }
}

impl Listener for BreakerLog {
    fn on_event(&self, event: &Event<'_>) {
        if event.layer != LayerName::CircuitBreaker {
            return;
        }
        let (EventKind::StateChange { to, .. }, Some(peer)) = (event.kind, event.peer) else {
            return;
        };
        if let Some(to) = BreakerState::from_event(to) {
            self.transitions.lock().push(Transition {
                at: Instant::now(),
                peer: peer.as_str().to_owned(),
                to,
            });
        }
    }
}
