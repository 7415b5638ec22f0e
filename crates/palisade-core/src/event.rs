//! Events: what every layer reports when its state changes, to `tracing` and
//! to listeners the user registers.
//!
//! ## Tracing conventions
//!
//! Every layer emits its events with target `palisade::<layer>` (for example
//! `palisade::circuit_breaker`) and these structured fields, so one filter and
//! one dashboard work across layers:
//!
//! | field | meaning |
//! |---|---|
//! | `layer` | [`LayerName::as_str`]: `circuit_breaker`, `retry`, `timeout`, `bulkhead`, `fallback`, `discovery`, `body` |
//! | `peer` | the peer or key concerned, when there is one |
//! | `event` | [`EventKind::name`]: `state_change`, `rejected`, `retry`, ... |
//! | `from`, `to` | state names, on a state change |
//! | `reason` | why, in a short fixed phrase |
//! | `cooldown_ms`, `delay_ms`, `limit`, `attempt` | numbers, where they apply |
//!
//! State changes are logged at `INFO` (a breaker opening, or a peer kept in
//! rotation only by its balancer's ejection cap — `to = "degraded"` — at
//! `WARN`), per-call
//! events (a rejection, a retry) at `DEBUG`.
//!
//! ## Listeners
//!
//! ```
//! use palisade_core::event::{Event, EventKind, LayerName, Listener, Listeners};
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//!
//! #[derive(Default)]
//! struct CountOpenings(AtomicUsize);
//!
//! impl Listener for CountOpenings {
//!     fn on_event(&self, event: &Event<'_>) {
//!         if let EventKind::StateChange { to: "open", .. } = event.kind {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let counter = Arc::new(CountOpenings::default());
//! let listeners = Listeners::new().with(counter.clone());
//! listeners.emit(&Event::new(LayerName::CircuitBreaker, EventKind::StateChange {
//!     from: "closed", to: "open", reason: "consecutive failures", cooldown: None,
//! }));
//! assert_eq!(counter.0.load(Ordering::Relaxed), 1);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::peer::PeerId;

/// The layer that emitted an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LayerName {
    /// `palisade-circuit-breaker`
    CircuitBreaker,
    /// `palisade-retry`
    Retry,
    /// `palisade-timeout`
    Timeout,
    /// `palisade-bulkhead`
    Bulkhead,
    /// `palisade-fallback`
    Fallback,
    /// `palisade-discovery`
    Discovery,
    /// `palisade-body`
    Body,
}

impl LayerName {
    /// The value of the `layer` tracing field.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerName::CircuitBreaker => "circuit_breaker",
            LayerName::Retry => "retry",
            LayerName::Timeout => "timeout",
            LayerName::Bulkhead => "bulkhead",
            LayerName::Fallback => "fallback",
            LayerName::Discovery => "discovery",
            LayerName::Body => "body",
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// A state machine moved (`closed` to `open`, a registry went `down`, ...).
    StateChange {
        /// The state left.
        from: &'static str,
        /// The state entered.
        to: &'static str,
        /// Why.
        reason: &'static str,
        /// The cooldown that starts now, when the new state has one.
        cooldown: Option<Duration>,
    },
    /// A call was refused without reaching the inner service.
    Rejected {
        /// Why.
        reason: &'static str,
    },
    /// A retry was scheduled.
    Retry {
        /// The attempt about to start (1 is the first retry).
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Why the previous attempt is retried.
        reason: &'a str,
    },
    /// A retry was not made because the retry budget is spent.
    BudgetExhausted,
    /// A limit changed (a bulkhead's concurrency, by a handle or adaptively).
    LimitChanged {
        /// The old limit.
        from: usize,
        /// The new limit.
        to: usize,
        /// Why.
        reason: &'static str,
    },
    /// A timeout fired.
    TimedOut {
        /// Which limit.
        kind: &'static str,
        /// Its length.
        limit: Duration,
    },
    /// A fallback answered instead of the inner service.
    Fallback {
        /// Why the inner call was replaced.
        reason: &'a str,
    },
    /// A peer joined the set.
    PeerAdded,
    /// A peer left the set.
    PeerRemoved,
}

impl EventKind<'_> {
    /// The value of the `event` tracing field.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::StateChange { .. } => "state_change",
            EventKind::Rejected { .. } => "rejected",
            EventKind::Retry { .. } => "retry",
            EventKind::BudgetExhausted => "budget_exhausted",
            EventKind::LimitChanged { .. } => "limit_changed",
            EventKind::TimedOut { .. } => "timed_out",
            EventKind::Fallback { .. } => "fallback",
            EventKind::PeerAdded => "peer_added",
            EventKind::PeerRemoved => "peer_removed",
        }
    }
}

/// One event: which layer, which peer or key, what happened.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The layer that emitted it.
    pub layer: LayerName,
    /// The peer concerned, if any.
    pub peer: Option<&'a PeerId>,
    /// The key (route, gRPC method) of a keyed layer, if any.
    pub key: Option<&'a str>,
    /// What happened.
    pub kind: EventKind<'a>,
}

impl<'a> Event<'a> {
    /// An event of `layer` about no particular peer.
    pub fn new(layer: LayerName, kind: EventKind<'a>) -> Self {
        Self {
            layer,
            peer: None,
            key: None,
            kind,
        }
    }

    /// Names the peer concerned.
    pub fn peer(mut self, peer: Option<&'a PeerId>) -> Self {
        self.peer = peer;
        self
    }

    /// Names the key concerned.
    pub fn key(mut self, key: Option<&'a str>) -> Self {
        self.key = key;
        self
    }

    /// Emits the event to `tracing` with the field conventions of this module.
    pub fn trace(&self) {
        let layer = self.layer.as_str();
        let peer = DisplayOpt(self.peer.map(PeerId::as_str).or(self.key));
        let event = self.kind.name();
        match self.kind {
            EventKind::StateChange {
                from,
                to,
                reason,
                cooldown,
            } => {
                let cooldown_ms = cooldown.map(|c| c.as_millis() as u64);
                // A breaker opening, or kept in rotation only by the fleet's
                // ejection cap: both mean a peer is failing.
                if to == "open" || to == "degraded" {
                    tracing::warn!(target: "palisade", layer, %peer, event, from, to, reason, cooldown_ms, "state change");
                } else {
                    tracing::info!(target: "palisade", layer, %peer, event, from, to, reason, cooldown_ms, "state change");
                }
            }
            EventKind::Rejected { reason } => {
                tracing::debug!(target: "palisade", layer, %peer, event, reason, "call rejected");
            }
            EventKind::Retry { attempt, delay, reason } => {
                let delay_ms = delay.as_millis() as u64;
                tracing::debug!(target: "palisade", layer, %peer, event, attempt, delay_ms, reason, "retrying");
            }
            EventKind::BudgetExhausted => {
                tracing::debug!(target: "palisade", layer, %peer, event, reason = "retry budget spent", "not retrying");
            }
            EventKind::LimitChanged { from, to, reason } => {
                tracing::info!(target: "palisade", layer, %peer, event, limit_from = from, limit = to, reason, "limit changed");
            }
            EventKind::TimedOut { kind, limit } => {
                let limit_ms = limit.as_millis() as u64;
                tracing::debug!(target: "palisade", layer, %peer, event, reason = kind, limit_ms, "timed out");
            }
            EventKind::Fallback { reason } => {
                tracing::debug!(target: "palisade", layer, %peer, event, reason, "fallback answered");
            }
            EventKind::PeerAdded | EventKind::PeerRemoved => {
                tracing::info!(target: "palisade", layer, %peer, event, "peer set changed");
            }
        }
    }
}

struct DisplayOpt<'a>(Option<&'a str>);

impl fmt::Display for DisplayOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.unwrap_or("-"))
    }
}

/// Receives every event of the layers it is registered with.
///
/// Called inline on the thread where the event happened, possibly on the
/// request path: keep it short and never block.
pub trait Listener: Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &Event<'_>);
}

impl<F> Listener for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

/// The listeners of one layer. Cheap to clone; empty by default, in which case
/// emitting costs one branch beyond what `tracing` itself costs.
#[derive(Clone, Default)]
pub struct Listeners {
    listeners: Option<Arc<[Arc<dyn Listener>]>>,
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners").field("len", &self.len()).finish()
    }
}

impl Listeners {
    /// No listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listener.
    pub fn with(self, listener: Arc<dyn Listener>) -> Self {
        let mut all: Vec<Arc<dyn Listener>> = self.listeners.map(|l| l.to_vec()).unwrap_or_default();
        all.push(listener);
        Self {
            listeners: Some(all.into()),
        }
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.listeners.as_ref().map_or(0, |l| l.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_none()
    }

    /// Sends `event` to `tracing` and to every listener.
    pub fn emit(&self, event: &Event<'_>) {
        event.trace();
        if let Some(listeners) = &self.listeners {
            for listener in listeners.iter() {
                listener.on_event(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn emit_reaches_every_listener_with_the_fields() {
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let peer = PeerId::from("a:1");
        let listeners = Listeners::new()
            .with(Arc::new(move |e: &Event<'_>| {
                assert_eq!(e.layer, LayerName::Retry);
                assert_eq!(e.peer.map(PeerId::as_str), Some("a:1"));
                assert!(matches!(e.kind, EventKind::Retry { attempt: 2, .. }));
                seen2.fetch_add(1, Ordering::Relaxed);
            }))
            .with(Arc::new(|_: &Event<'_>| {}));
        assert_eq!(listeners.len(), 2);
        listeners.emit(
            &Event::new(
                LayerName::Retry,
                EventKind::Retry {
                    attempt: 2,
                    delay: Duration::from_millis(5),
                    reason: "unavailable",
                },
            )
            .peer(Some(&peer)),
        );
        assert_eq!(seen.load(Ordering::Relaxed), 1);
        assert!(Listeners::new().is_empty());
    }
}
