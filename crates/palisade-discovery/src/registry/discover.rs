//! `RegistryDiscover`: a tower `Discover` over any [`Registry`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use palisade_core::BoxError;
use palisade_core::event::{Event, EventKind, LayerName, Listener, Listeners};
use palisade_core::peer::PeerId;
use tower::discover::Change;

use crate::peer::Weighted;
use crate::registry::{Instance, Registry, RegistryState, RegistryStatus, WatchEvent, WatchStream};

/// Makes the per-peer service for an instance: a client bound to its address
/// wrapped in the per-peer stack (circuit breaker, per-attempt timeout).
///
/// Fallible, because the instance comes from registry data: an instance whose
/// client cannot be made (say, an address a URI parser refuses) is skipped
/// with a warning — and removed if an earlier version of it was inserted —
/// instead of panicking the client. Registries already reject instances
/// whose address is not `host:port` ([`Instance::validate`]).
///
/// Implemented by closures `FnMut(&Instance) -> Result<S, BoxError>`.
pub trait MakePeer {
    /// The per-peer service.
    type Service;

    /// The service for `instance`, or why none can be made.
    fn make_peer(&mut self, instance: &Instance) -> Result<Self::Service, BoxError>;
}

impl<F, S> MakePeer for F
where
    F: FnMut(&Instance) -> Result<S, BoxError>,
{
    type Service = S;

    fn make_peer(&mut self, instance: &Instance) -> Result<S, BoxError> {
        self(instance)
    }
}

enum Pending {
    Insert(Instance),
    Remove(PeerId),
}

/// What the discover knows of one instance: its latest version, and the
/// service made for its address (kept, so that a later version with the same
/// address reuses it).
struct Known<S> {
    instance: Instance,
    // Boxed so that the discover stays `Unpin` whatever the service is.
    service: Option<Box<S>>,
}

/// A [`Discover`](tower::discover::Discover) of the instances of one service
/// in a [`Registry`]: a stream of `Change::Insert(PeerId, Weighted<S>)` and
/// `Change::Remove(PeerId)`, keyed by the instance's address.
///
/// It works under [`PeerDiscovery`](crate::PeerDiscovery) and under tower's own
/// balancer (wrap it in `tower::load::PendingRequestsDiscover` there).
///
/// - A resynchronisation (the registry's full set) is diffed against the
///   known set: only real changes come out, so nothing is lost or duplicated.
/// - An instance's identity is its address. A change that keeps the address
///   (a new weight, zone or metadata) keeps the peer: the discover inserts a
///   clone of the service it made for that address, with the new weight, so
///   the balancer updates the peer in place and its breaker keeps its state
///   and history (clones of a breaker share them). `make` is called once per
///   address for as long as the address stays registered; to rebuild a
///   client after a metadata change, deregister the instance and register it
///   again. A changed address is a new peer.
/// - When the registry goes down the stream says nothing more until it is
///   back: the balancer keeps serving the last known set. Both edges are
///   logged and emitted as `StateChange` events (`up` / `down`), and
///   [`status`](Self::status) tells the state.
/// - It never yields an error; when the registry's watch ends (the registry
///   was dropped) the stream ends and the balancer keeps its set.
pub struct RegistryDiscover<M: MakePeer> {
    service: String,
    watch: WatchStream,
    make: M,
    known: HashMap<PeerId, Known<M::Service>>,
    queue: VecDeque<Pending>,
    status: RegistryStatus,
    listeners: Listeners,
}

impl<M: MakePeer> fmt::Debug for RegistryDiscover<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryDiscover")
            .field("service", &self.service)
            .field("known", &self.known.len())
            .field("state", &self.status.state())
            .finish_non_exhaustive()
    }
}

impl<M: MakePeer> RegistryDiscover<M> {
    /// Watches `service` in `registry`, making each peer's service with `make`.
    pub fn new<R: Registry + ?Sized>(registry: &R, service: &str, make: M) -> Self {
        Self::from_watch(service, registry.watch(service), make)
    }

    /// Follows an existing watch stream.
    pub fn from_watch(service: &str, watch: WatchStream, make: M) -> Self {
        Self {
            service: service.to_owned(),
            watch,
            make,
            known: HashMap::new(),
            queue: VecDeque::new(),
            status: RegistryStatus::default(),
            listeners: Listeners::new(),
        }
    }

    /// Adds a listener for the registry's up/down events.
    pub fn with_listener(mut self, listener: std::sync::Arc<dyn Listener>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// A handle on the registry's state, for health reports
    /// ([`PeerDiscoveryBuilder::registry_status`](crate::PeerDiscoveryBuilder::registry_status)).
    pub fn status(&self) -> RegistryStatus {
        self.status.clone()
    }

    /// The instances known now.
    pub fn known(&self) -> impl Iterator<Item = &Instance> {
        self.known.values().map(|k| &k.instance)
    }

    fn transition(&self, to: RegistryState, reason: &'static str) {
        let from = self.status.set(to);
        if from == to {
            return;
        }
        let event = Event::new(
            LayerName::Discovery,
            EventKind::StateChange {
                from: from.as_str(),
                to: to.as_str(),
                reason,
                cooldown: None,
            },
        )
        .key(Some(&self.service));
        self.listeners.emit(&event);
    }

    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Reset(instances) => {
                self.transition(RegistryState::Up, "registry answered");
                self.status.set_note(None);
                let mut fresh: HashMap<PeerId, Instance> = HashMap::with_capacity(instances.len());
                for instance in instances {
                    if instance.service() != self.service {
                        continue;
                    }
                    fresh.insert(instance.id(), instance);
                }
                let gone: Vec<PeerId> = self
                    .known
                    .keys()
                    .filter(|id| !fresh.contains_key(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    self.known.remove(&id);
                    self.queue.push_back(Pending::Remove(id));
                }
                for (id, instance) in fresh {
                    self.upsert(id, instance);
                }
            }
            WatchEvent::Upsert(instance) => {
                if instance.service() != self.service {
                    return;
                }
                self.upsert(instance.id(), instance);
            }
            WatchEvent::Delete(id) => {
                if self.known.remove(&id).is_some() {
                    self.queue.push_back(Pending::Remove(id));
                }
            }
            WatchEvent::Down { reason } => {
                tracing::warn!(target: "palisade", layer = "discovery", service = %self.service, %reason, "registry unreachable; serving the last known set");
                self.transition(RegistryState::Down, "registry unreachable");
            }
            WatchEvent::Up => self.transition(RegistryState::Up, "registry reachable again"),
            WatchEvent::Degraded { reason } => {
                tracing::warn!(target: "palisade", layer = "discovery", service = %self.service, %reason, "registry answer incomplete");
                self.status.set_note(Some(reason));
            }
        }
    }

    /// Records the latest version of an instance; queues an insert when it
    /// is new or changed.
    fn upsert(&mut self, id: PeerId, instance: Instance) {
        match self.known.get_mut(&id) {
            Some(known) if known.instance == instance => {}
            Some(known) => {
                known.instance = instance.clone();
                self.queue.push_back(Pending::Insert(instance));
            }
            None => {
                self.known.insert(
                    id,
                    Known {
                        instance: instance.clone(),
                        service: None,
                    },
                );
                self.queue.push_back(Pending::Insert(instance));
            }
        }
    }

    /// The service for `instance`: a clone of the one made for its address,
    /// or a new one.
    fn service_for(&mut self, instance: &Instance) -> Result<M::Service, BoxError>
    where
        M::Service: Clone,
    {
        let id = instance.id();
        if let Some(service) = self.known.get(&id).and_then(|k| k.service.as_deref()) {
            return Ok(service.clone());
        }
        let service = self.make.make_peer(instance)?;
        if let Some(known) = self.known.get_mut(&id) {
            known.service = Some(Box::new(service.clone()));
        }
        Ok(service)
    }
}

/// A stream of changes; `M::Service` is `Clone` so that a changed instance
/// with the same address keeps its service (see the type's docs).
impl<M> Stream for RegistryDiscover<M>
where
    M: MakePeer + Unpin,
    M::Service: Clone,
{
    type Item = Result<Change<PeerId, Weighted<M::Service>>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(match pending {
                    Pending::Insert(instance) => match this.service_for(&instance) {
                        Ok(service) => Change::Insert(instance.id(), Weighted::new(service, instance.weight())),
                        Err(error) => {
                            let id = instance.id();
                            tracing::warn!(target: "palisade", layer = "discovery", service = %this.service, peer = %id, %error, "cannot make a client for the instance; skipped");
                            // Forget it, so that a later version is tried
                            // again, and drop an earlier version's client.
                            this.known.remove(&id);
                            Change::Remove(id)
                        }
                    },
                    Pending::Remove(id) => Change::Remove(id),
                })));
            }
            match this.watch.as_mut().poll_next(cx) {
                Poll::Ready(Some(event)) => this.apply(event),
                Poll::Ready(None) => {
                    this.transition(RegistryState::Closed, "watch ended");
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
