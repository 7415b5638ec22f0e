//! The in-memory registry: the embedded default, for one process (tests,
//! demos, a process that hosts both sides).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use palisade_core::BoxError;
use palisade_core::error::ConfigError;
use palisade_core::peer::PeerId;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::registry::{Instance, KeepAlive, Registration, Registry, Unreachable, WatchEvent, WatchStream};

/// How many changes a slow watcher may fall behind before it resynchronises.
const WATCH_BUFFER: usize = 256;
/// The default TTL: the seed system's heartbeat timeout.
const DEFAULT_TTL: Duration = Duration::from_secs(20);
/// The default heartbeat: the seed system's heartbeat interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const OUTAGE: &str = "simulated outage";

/// An in-memory registry with TTL and heartbeats.
///
/// A registration expires `ttl` after its last heartbeat; its handle sends a
/// heartbeat every `heartbeat` on a spawned task, so registering with a TTL
/// needs a Tokio runtime (without one it fails). The defaults are the seed
/// system's: a heartbeat every 10 s and expiry 20 s after the last one, so a
/// provider that dies is gone within 20 s and one late heartbeat is
/// tolerated. The registration is made when `register` is called; the
/// future is ready. Dropping the handle removes the instance at once;
/// [`Registration::abandon`] stops the heartbeats and lets it expire. Clones
/// share one registry.
///
/// Nothing outlives the registry: its expiry task and the heartbeat tasks of
/// its registrations end as soon as the last clone is dropped, and its
/// watches end then too.
///
/// # Simulating an outage
///
/// [`set_reachable(false)`](Self::set_reachable) makes the registry behave
/// as if it could not be reached, for tests and demos of "the registry is
/// down, the last known set keeps serving": every watch reports
/// [`WatchEvent::Down`] and then says nothing; registering fails with
/// [`Unreachable`]; heartbeats are not delivered and, as in a real registry
/// that is down, nothing expires meanwhile. A provider that deregisters
/// during the outage is removed, but watchers only learn it when the
/// registry comes back. [`set_reachable(true)`](Self::set_reachable) brings
/// it back: every watch reports [`WatchEvent::Up`] and the live set
/// ([`WatchEvent::Reset`]), which consumers diff against what they kept, and
/// every registration gets a full TTL from then on (its heartbeats resume).
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
    /// Whether the registry answers; watches and tasks follow it.
    reachable: watch::Sender<bool>,
    /// Dropped with the registry: every task it spawned sees the channel
    /// close and ends.
    closed: watch::Sender<()>,
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
    /// A registry whose registrations expire 20 s after their last heartbeat,
    /// with a heartbeat every 10 s (the seed system's numbers).
    pub fn new() -> Self {
        Self::make_opt(Some(DEFAULT_TTL), DEFAULT_HEARTBEAT)
    }

    /// A registry with this TTL and a heartbeat every third of it (two
    /// heartbeats may be lost before a registration expires). The TTL must
    /// be at least 3 ms.
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
        Ok(Self::make_opt(Some(ttl), heartbeat))
    }

    /// A registry without TTL: a registration lives until its handle is
    /// dropped or shut down, and no heartbeat task or timer runs. For one
    /// process where a provider cannot die without its handle being dropped.
    pub fn without_ttl() -> Self {
        Self::make_opt(None, Duration::MAX)
    }

    fn make_opt(ttl: Option<Duration>, heartbeat: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                heartbeat,
                state: Mutex::default(),
                wake_reaper: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
                reachable: watch::Sender::new(true),
                closed: watch::Sender::new(()),
            }),
        }
    }

    /// The TTL of registrations, if they have one.
    pub fn ttl(&self) -> Option<Duration> {
        self.inner.ttl
    }

    /// The heartbeat interval of registrations (`Duration::MAX` without TTL).
    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// The live instances of `service`, now (whether reachable or not).
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        let state = self.inner.state.lock();
        state
            .services
            .get(service)
            .map(ServiceEntry::snapshot)
            .unwrap_or_default()
    }

    /// Simulates an outage (`false`) or ends it (`true`); see the type's
    /// docs for what each side sees. Idempotent.
    pub fn set_reachable(&self, reachable: bool) {
        let changed = self
            .inner
            .reachable
            .send_if_modified(|r| std::mem::replace(r, reachable) != reachable);
        if !changed {
            return;
        }
        if reachable {
            // Back: every registration gets a full TTL from now, as if its
            // next heartbeat had just arrived.
            if let Some(ttl) = self.inner.ttl {
                let expires = Instant::now() + ttl;
                let mut state = self.inner.state.lock();
                for entry in state.services.values_mut().flat_map(|s| s.instances.values_mut()) {
                    entry.expires = Some(expires);
                }
            }
            self.inner.wake_reaper.notify_one();
        }
        tracing::info!(target: "palisade", layer = "discovery", reachable, "in-memory registry reachability changed (simulated)");
    }

    /// Whether the registry answers (see [`set_reachable`](Self::set_reachable)).
    pub fn is_reachable(&self) -> bool {
        *self.inner.reachable.borrow()
    }

    fn start_reaper(&self, runtime: &tokio::runtime::Handle) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.wake_reaper.clone();
        let mut closed = self.inner.closed.subscribe();
        let mut reachable = self.inner.reachable.subscribe();
        runtime.spawn(async move {
            loop {
                // The registry is not held across an await: the task must
                // not keep it alive.
                let next = match weak.upgrade() {
                    Some(inner) if *inner.reachable.borrow() => inner.reap(),
                    // Unreachable: nothing expires until it is back.
                    Some(_) => None,
                    None => return,
                };
                let expiry = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = expiry => {}
                    () = wake.notified() => {}
                    changed = reachable.changed() => if changed.is_err() { return },
                    // The registry was dropped.
                    _ = closed.changed() => return,
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

    /// Refreshes a registration; `false` once it is gone (the heartbeats
    /// stop). An unreachable registry does not hear heartbeats.
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
        if *self.reachable.borrow() {
            entry.expires = self.ttl.map(|ttl| Instant::now() + ttl);
        }
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
        if !self.is_reachable() {
            let error: BoxError = Unreachable::new("in-memory registry", OUTAGE).into();
            return futures::future::ready(Err(error)).boxed();
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
        let mut closed = self.inner.closed.subscribe();
        let heartbeats = runtime.map(|runtime| {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        // The registry was dropped: nothing to keep alive.
                        _ = closed.changed() => return,
                    }
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

    /// The live set, then changes; while the registry is unreachable
    /// ([`set_reachable`](Self::set_reachable)), `Down` and silence, then
    /// `Up` and the live set when it is back. Ends when the registry is
    /// dropped.
    fn watch(&self, service: &str) -> WatchStream {
        let (snapshot, changes) = {
            let mut state = self.inner.state.lock();
            let entry = state
                .services
                .entry(service.to_owned())
                .or_insert_with(ServiceEntry::new);
            (entry.snapshot(), entry.changes.subscribe())
        };
        let mut reachable = self.inner.reachable.subscribe();
        let up = *reachable.borrow_and_update();
        let mut queued = VecDeque::new();
        queued.push_back(if up {
            WatchEvent::Reset(snapshot)
        } else {
            WatchEvent::Down { reason: OUTAGE.into() }
        });
        let watch = Watch {
            service: service.to_owned(),
            registry: Arc::downgrade(&self.inner),
            changes,
            reachable,
            closed: self.inner.closed.subscribe(),
            down: !up,
            queued,
        };
        futures::stream::unfold(watch, |mut watch| async move {
            let event = watch.next().await?;
            Some((event, watch))
        })
        .boxed()
    }
}

/// One watch's state.
struct Watch {
    service: String,
    registry: Weak<Inner>,
    changes: broadcast::Receiver<WatchEvent>,
    reachable: watch::Receiver<bool>,
    closed: watch::Receiver<()>,
    down: bool,
    queued: VecDeque<WatchEvent>,
}

impl Watch {
    /// A fresh subscription and the live set, as one atomic step.
    fn resubscribe(&mut self) -> Option<WatchEvent> {
        let inner = self.registry.upgrade()?;
        let mut state = inner.state.lock();
        let entry = state
            .services
            .entry(self.service.clone())
            .or_insert_with(ServiceEntry::new);
        self.changes = entry.changes.subscribe();
        Some(WatchEvent::Reset(entry.snapshot()))
    }

    async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.down {
                // Unreachable: say nothing (changes are not read) until back.
                tokio::select! {
                    back = self.reachable.wait_for(|r| *r) => back.ok()?,
                    _ = self.closed.changed() => return None,
                };
                self.down = false;
                let reset = self.resubscribe()?;
                self.queued.push_back(WatchEvent::Up);
                self.queued.push_back(reset);
                continue;
            }
            tokio::select! {
                biased;
                changed = self.reachable.changed() => {
                    changed.ok()?;
                    if !*self.reachable.borrow_and_update() {
                        self.down = true;
                        return Some(WatchEvent::Down { reason: OUTAGE.into() });
                    }
                }
                received = self.changes.recv() => match received {
                    Ok(event) => return Some(event),
                    // Fell behind: resynchronise from a fresh snapshot.
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.resubscribe(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.closed.changed() => return None,
            }
        }
    }
}
