//! The in-memory registry: the embedded default, for one process (tests,
//! demos, a process that hosts both sides).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use palisade_core::BoxError;
use palisade_core::error::ConfigError;
use palisade_core::peer::PeerId;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::registry::{Instance, KeepAlive, Registration, Registry, WatchEvent, WatchStream};

/// How many changes a slow watcher may fall behind before it resynchronises.
const WATCH_BUFFER: usize = 256;

/// An in-memory registry with TTL and heartbeats.
///
/// A registration expires `ttl` after its last heartbeat; its handle sends a
/// heartbeat every `heartbeat` (default a third of the TTL) on a spawned task,
/// so registering with a TTL needs a Tokio runtime (without one it fails).
/// The registration is made when `register` is called; the future is ready. Dropping the handle removes the
/// instance at once; [`Registration::abandon`] stops the heartbeats and lets
/// it expire. Clones share one registry.
#[derive(Clone, Debug)]
pub struct InMemoryRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None`: registrations live until their handle is dropped.
    ttl: Option<Duration>,
    heartbeat: Duration,
    state: Mutex<State>,
    wake_reaper: Arc<Notify>,
    reaper_started: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<String, ServiceEntry>,
    next_generation: u64,
}

#[derive(Debug)]
struct ServiceEntry {
    instances: HashMap<PeerId, Entry>,
    changes: broadcast::Sender<WatchEvent>,
}

impl ServiceEntry {
    fn new() -> Self {
        Self {
            instances: HashMap::new(),
            changes: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    fn snapshot(&self) -> Vec<Instance> {
        self.instances.values().map(|e| e.instance.clone()).collect()
    }
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    /// `None` when the registry has no TTL.
    expires: Option<Instant>,
    generation: u64,
}

impl Default for InMemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRegistry {
    /// A registry whose registrations expire 30 s after their last heartbeat,
    /// with a heartbeat every 10 s.
    pub fn new() -> Self {
        Self::make(Duration::from_secs(30), Duration::from_secs(10))
    }

    /// A registry with this TTL and a heartbeat every third of it. The TTL
    /// must be at least 3 ms.
    pub fn with_ttl(ttl: Duration) -> Result<Self, ConfigError> {
        Self::with_ttl_and_heartbeat(ttl, ttl / 3)
    }

    /// A registry with this TTL and heartbeat interval; the heartbeat must be
    /// non-zero and shorter than the TTL.
    pub fn with_ttl_and_heartbeat(ttl: Duration, heartbeat: Duration) -> Result<Self, ConfigError> {
        if heartbeat.is_zero() || heartbeat >= ttl {
            return Err(ConfigError::new(
                "in-memory registry",
                "heartbeat",
                format!("must be non-zero and shorter than the TTL {ttl:?}, got {heartbeat:?}"),
            ));
        }
        Ok(Self::make(ttl, heartbeat))
    }

    /// A registry without TTL: a registration lives until its handle is
    /// dropped or shut down, and no heartbeat task or timer runs. For one
    /// process where a provider cannot die without its handle being dropped.
    pub fn without_ttl() -> Self {
        Self::make_opt(None, Duration::MAX)
    }

    fn make(ttl: Duration, heartbeat: Duration) -> Self {
        Self::make_opt(Some(ttl), heartbeat)
    }

    fn make_opt(ttl: Option<Duration>, heartbeat: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                heartbeat,
                state: Mutex::default(),
                wake_reaper: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// The TTL of registrations, if they have one.
    pub fn ttl(&self) -> Option<Duration> {
        self.inner.ttl
    }

    /// The live instances of `service`, now.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        let state = self.inner.state.lock();
        state
            .services
            .get(service)
            .map(ServiceEntry::snapshot)
            .unwrap_or_default()
    }

    fn start_reaper(&self, runtime: &tokio::runtime::Handle) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.wake_reaper.clone();
        runtime.spawn(async move {
            loop {
                let next = match weak.upgrade() {
                    Some(inner) => inner.reap(),
                    None => return,
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake.notified() => {}
                        }
                    }
                    None => wake.notified().await,
                }
            }
        });
    }
}

impl Inner {
    /// Removes expired registrations; returns the earliest expiry left.
    fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut earliest: Option<Instant> = None;
        for (service, entry) in state.services.iter_mut() {
            entry.instances.retain(|id, e| {
                let Some(expires) = e.expires else {
                    return true;
                };
                if expires <= now {
                    tracing::info!(target: "palisade", layer = "discovery", %service, peer = %id, "registration expired");
                    let _ = entry.changes.send(WatchEvent::Delete(id.clone()));
                    false
                } else {
                    earliest = Some(earliest.map_or(expires, |t| t.min(expires)));
                    true
                }
            });
        }
        earliest
    }

    fn heartbeat(&self, service: &str, id: &PeerId, generation: u64) -> bool {
        let mut state = self.state.lock();
        let Some(entry) = state
            .services
            .get_mut(service)
            .and_then(|s| s.instances.get_mut(id))
            .filter(|e| e.generation == generation)
        else {
            return false;
        };
        entry.expires = self.ttl.map(|ttl| Instant::now() + ttl);
        true
    }

    fn deregister(&self, service: &str, id: &PeerId, generation: u64) {
        let mut state = self.state.lock();
        if let Some(entry) = state.services.get_mut(service)
            && entry.instances.get(id).is_some_and(|e| e.generation == generation)
        {
            entry.instances.remove(id);
            let _ = entry.changes.send(WatchEvent::Delete(id.clone()));
        }
    }
}

struct Keeper {
    registry: Weak<Inner>,
    service: String,
    id: PeerId,
    generation: u64,
    heartbeats: Option<JoinHandle<()>>,
}

impl Keeper {
    fn remove(self) {
        if let Some(h) = &self.heartbeats {
            h.abort();
        }
        if let Some(inner) = self.registry.upgrade() {
            inner.deregister(&self.service, &self.id, self.generation);
        }
    }
}

impl KeepAlive for Keeper {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.remove();
        futures::future::ready(Ok(())).boxed()
    }

    fn deregister_now(self: Box<Self>) {
        self.remove();
    }

    fn abandon(self: Box<Self>) {
        if let Some(h) = &self.heartbeats {
            h.abort();
        }
    }
}

impl Registry for InMemoryRegistry {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        if let Err(e) = instance.validate() {
            return futures::future::ready(Err(e.into())).boxed();
        }
        // Heartbeats and expiry run on tasks: with a TTL, a runtime is needed.
        let runtime = match (self.inner.ttl, tokio::runtime::Handle::try_current()) {
            (None, _) => None,
            (Some(_), Ok(runtime)) => Some(runtime),
            (Some(_), Err(_)) => {
                let error: BoxError = "the in-memory registry needs a Tokio runtime for heartbeats".into();
                return futures::future::ready(Err(error)).boxed();
            }
        };
        if let Some(runtime) = &runtime {
            self.start_reaper(runtime);
        }
        let id = instance.id();
        let service = instance.service().to_owned();
        let generation = {
            let mut state = self.inner.state.lock();
            state.next_generation += 1;
            let generation = state.next_generation;
            let entry = state.services.entry(service.clone()).or_insert_with(ServiceEntry::new);
            entry.instances.insert(
                id.clone(),
                Entry {
                    instance: instance.clone(),
                    expires: self.inner.ttl.map(|ttl| Instant::now() + ttl),
                    generation,
                },
            );
            let _ = entry.changes.send(WatchEvent::Upsert(instance.clone()));
            generation
        };
        self.inner.wake_reaper.notify_one();
        let weak = Arc::downgrade(&self.inner);
        let period = self.inner.heartbeat;
        let (hb_service, hb_id) = (service.clone(), id.clone());
        let heartbeats = runtime.map(|runtime| {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    let alive = weak
                        .upgrade()
                        .is_some_and(|inner| inner.heartbeat(&hb_service, &hb_id, generation));
                    if !alive {
                        return;
                    }
                }
            })
        });
        let keeper = Keeper {
            registry: Arc::downgrade(&self.inner),
            service,
            id,
            generation,
            heartbeats,
        };
        futures::future::ready(Ok(Registration::new(instance, Box::new(keeper)))).boxed()
    }

    fn watch(&self, service: &str) -> WatchStream {
        let (snapshot, changes) = {
            let mut state = self.inner.state.lock();
            let entry = state
                .services
                .entry(service.to_owned())
                .or_insert_with(ServiceEntry::new);
            (entry.snapshot(), entry.changes.subscribe())
        };
        let weak = Arc::downgrade(&self.inner);
        let service = service.to_owned();
        let first = futures::stream::once(futures::future::ready(WatchEvent::Reset(snapshot)));
        let rest = futures::stream::unfold((changes, weak, service), |(mut changes, weak, service)| async move {
            let event = match changes.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: resynchronise from a fresh snapshot.
                    let inner = weak.upgrade()?;
                    let state = inner.state.lock();
                    let entry = state.services.get(&service)?;
                    changes = entry.changes.subscribe();
                    WatchEvent::Reset(entry.snapshot())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((event, (changes, weak, service)))
        });
        first.chain(rest).boxed()
    }
}
