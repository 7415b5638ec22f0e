//! A registry whose watchers can be cut off: the `registry-outage` switch.
//!
//! TODO(registry outage switch): `InMemoryRegistry` is getting an outage
//! switch of its own (another change in flight). Once it is merged, drop this
//! wrapper, use `InMemoryRegistry` directly, and make
//! [`OutageRegistry::set_outage`] that one call; the scenario calls nothing
//! else.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use palisade_core::BoxError;
use palisade_discovery::{InMemoryRegistry, Instance, Registration, Registry, WatchEvent, WatchStream};
use tokio::sync::watch;

/// An [`InMemoryRegistry`] whose watches go silent while an outage is on.
///
/// During an outage every watch reports [`WatchEvent::Down`] once and then
/// nothing: registrations and deregistrations still change the registry, but
/// no watcher hears of them, as when the registry's servers are unreachable
/// from the client. When the outage ends every watch reports
/// [`WatchEvent::Up`] and the whole live set ([`WatchEvent::Reset`]), as a
/// real backend does when it reconnects and reads again.
#[derive(Clone, Debug)]
pub struct OutageRegistry {
    inner: InMemoryRegistry,
    outage: Arc<watch::Sender<bool>>,
}

impl OutageRegistry {
    /// A registry without TTL (registrations live until their handle drops).
    pub fn new() -> Self {
        Self {
            inner: InMemoryRegistry::without_ttl(),
            outage: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Starts (`true`) or ends (`false`) the outage.
    pub fn set_outage(&self, outage: bool) {
        let was = self.outage.send_replace(outage);
        if was != outage {
            let (from, to) = if outage { ("up", "down") } else { ("down", "up") };
            tracing::info!(target: "palisade_chaos", event = "state_change", from, to, reason = "registry outage switch", "registry");
        }
    }

    /// The registry behind the switch.
    pub fn inner(&self) -> &InMemoryRegistry {
        &self.inner
    }
}

impl Default for OutageRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// What a watch is doing.
enum Phase {
    /// Passing the inner watch's events through.
    Live,
    /// Saying `Down` once, then holding everything back until the outage ends.
    Out { said_down: bool },
    /// The outage ended: saying `Up`, then the live set.
    Back,
}

struct WatchState {
    service: String,
    registry: InMemoryRegistry,
    events: WatchStream,
    outage: watch::Receiver<bool>,
    phase: Phase,
}

impl Registry for OutageRegistry {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        self.inner.register(instance)
    }

    fn watch(&self, service: &str) -> WatchStream {
        let state = WatchState {
            service: service.to_owned(),
            registry: self.inner.clone(),
            events: self.inner.watch(service),
            outage: self.outage.subscribe(),
            phase: Phase::Live,
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                match state.phase {
                    Phase::Live => {
                        if *state.outage.borrow_and_update() {
                            state.phase = Phase::Out { said_down: false };
                            continue;
                        }
                        tokio::select! {
                            event = state.events.next() => return Some((event?, state)),
                            changed = state.outage.changed() => changed.ok()?,
                        }
                    }
                    Phase::Out { said_down: false } => {
                        state.phase = Phase::Out { said_down: true };
                        let reason = "registry outage (chaos)".to_owned();
                        return Some((WatchEvent::Down { reason }, state));
                    }
                    Phase::Out { said_down: true } => {
                        if !*state.outage.borrow_and_update() {
                            state.phase = Phase::Back;
                            return Some((WatchEvent::Up, state));
                        }
                        // Held back: the registry is unreachable. The inner
                        // watch keeps buffering; the Reset below supersedes it.
                        state.outage.changed().await.ok()?;
                    }
                    Phase::Back => {
                        // Forget what happened during the outage: the full
                        // set says it all.
                        state.events = state.registry.watch(&state.service);
                        // The fresh watch starts with its own Reset.
                        state.phase = Phase::Live;
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_hides_changes_until_it_ends_then_resynchronises() {
        let registry = OutageRegistry::new();
        let first = registry.register(Instance::new("echo", "127.0.0.1:1")).await.unwrap();
        let mut watch = registry.watch("echo");
        assert!(matches!(watch.next().await, Some(WatchEvent::Reset(set)) if set.len() == 1));

        registry.set_outage(true);
        assert!(matches!(watch.next().await, Some(WatchEvent::Down { .. })));
        drop(first);
        let _second = registry.register(Instance::new("echo", "127.0.0.1:2")).await.unwrap();
        let held = tokio::time::timeout(std::time::Duration::from_millis(50), watch.next()).await;
        assert!(held.is_err(), "an event got through the outage: {held:?}");

        registry.set_outage(false);
        assert_eq!(watch.next().await, Some(WatchEvent::Up));
        match watch.next().await {
            Some(WatchEvent::Reset(set)) => {
                assert_eq!(set.len(), 1);
                assert_eq!(set[0].addr(), "127.0.0.1:2");
            }
            other => panic!("expected the live set, got {other:?}"),
        }
    }
}
