//! The control plane: the registry abstraction (providers register
//! instances, consumers watch a service's live set), its backends, and
//! [`RegistryDiscover`], which turns a watch into the tower `Discover` the
//! balancer (the data path) consumes.
//!
//! The registries stay in this crate rather than a crate of their own: the
//! balancer never calls them (it consumes any `Discover`), the heavy
//! backends are behind features (`etcd`, `dns`) so a user of the balancer
//! alone compiles only the small in-memory and static ones, and the types a
//! user touches together (`Instance`, `RegistryDiscover`, `RegistryStatus`
//! in the health report) stay in one place. Linkerd keeps its control plane
//! apart because it is another process behind a protocol; here it is a
//! library the client links either way.

mod discover;
#[cfg(feature = "dns")]
pub(crate) mod dns;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
mod instance;
mod memory;
mod static_list;
#[cfg(any(feature = "dns", feature = "etcd"))]
mod watch_task;

pub use discover::{MakePeer, RegistryDiscover};
pub use instance::{Instance, InvalidInstance, MAX_FIELD_LEN, MAX_METADATA};
pub use memory::InMemoryRegistry;
pub use static_list::StaticRegistry;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use palisade_core::BoxError;
use palisade_core::peer::PeerId;

/// A registry refused an operation it does not support (registering into a
/// static list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported by this registry: {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

/// The registry could not be reached (or, for the in-memory registry, an
/// outage is being simulated with
/// [`set_reachable(false)`](crate::InMemoryRegistry::set_reachable)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    registry: &'static str,
    reason: String,
}

impl Unreachable {
    pub(crate) fn new(registry: &'static str, reason: impl Into<String>) -> Self {
        Self {
            registry,
            reason: reason.into(),
        }
    }

    /// Which registry (`"in-memory registry"`, `"etcd"`).
    pub fn registry(&self) -> &'static str {
        self.registry
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} unreachable: {}", self.registry, self.reason)
    }
}

impl std::error::Error for Unreachable {}

/// What keeps one registration alive; implemented by each backend.
pub trait KeepAlive: Send + 'static {
    /// Removes the registration and waits until the registry confirms it.
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Removes the registration without waiting (from `Drop`): at once where
    /// the backend can, otherwise on a spawned task, best effort.
    fn deregister_now(self: Box<Self>);

    /// Stops keeping the registration alive without removing it, as a
    /// crashed provider would: the registry expires it after its TTL.
    fn abandon(self: Box<Self>);
}

/// A provider's handle on its registration: keeps it alive (heartbeats or a
/// lease) while held, removes it when dropped or on [`shutdown`](Self::shutdown).
#[must_use = "dropping the registration removes the instance"]
pub struct Registration {
    instance: Instance,
    keeper: Option<Box<dyn KeepAlive>>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("instance", &self.instance)
            .finish()
    }
}

impl Registration {
    /// A registration of `instance` kept alive by `keeper` (for backends).
    pub fn new(instance: Instance, keeper: Box<dyn KeepAlive>) -> Self {
        Self {
            instance,
            keeper: Some(keeper),
        }
    }

    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Removes the registration and waits for the registry to confirm it.
    pub async fn shutdown(mut self) -> Result<(), BoxError> {
        match self.keeper.take() {
            Some(keeper) => keeper.deregister().await,
            None => Ok(()),
        }
    }

    /// Stops keeping the registration alive without removing it (a simulated
    /// crash): the registry expires it after its TTL.
    pub fn abandon(mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abandon();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.deregister_now();
        }
    }
}

/// What a watch of one service reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The whole live set (first event, and after every resynchronisation).
    Reset(Vec<Instance>),
    /// An instance joined or changed.
    Upsert(Instance),
    /// An instance left (deregistered or expired).
    Delete(PeerId),
    /// The registry became unreachable; the last known set should keep serving.
    Down {
        /// Why, for the logs.
        reason: String,
    },
    /// The registry is reachable again (a `Reset` follows or preceded it).
    Up,
    /// The registry answered, but not fully: part of the answer was left out
    /// (a DNS SRV target without an address, an etcd value that does not
    /// decode). Comes after the `Reset` it qualifies; the next `Reset`
    /// clears it. Shown in the health report as the registry's note.
    Degraded {
        /// What was left out and why, for the logs and the health report.
        reason: String,
    },
}

/// The stream a watch returns.
pub type WatchStream = BoxStream<'static, WatchEvent>;

/// A service registry: the provider side registers instances, the consumer
/// side watches a service's live set.
pub trait Registry: Send + Sync + 'static {
    /// Registers `instance`; the returned handle keeps it alive.
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Registration, BoxError>>;

    /// Watches the instances of `service`: first a [`WatchEvent::Reset`], then
    /// changes. Backends reconnect by themselves (with backoff) and report the
    /// edges as [`WatchEvent::Down`] / [`WatchEvent::Up`].
    fn watch(&self, service: &str) -> WatchStream;
}

impl<R: Registry + ?Sized> Registry for Arc<R> {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        (**self).register(instance)
    }

    fn watch(&self, service: &str) -> WatchStream {
        (**self).watch(service)
    }
}

/// The state of the registry as a consumer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryState {
    /// No answer yet.
    Connecting,
    /// Reachable; the set is current.
    Up,
    /// Unreachable; the last known set is serving while the backend reconnects.
    Down,
    /// The watch ended (the registry was dropped); the set is frozen.
    Closed,
}

impl RegistryState {
    /// `connecting`, `up`, `down` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryState::Connecting => "connecting",
            RegistryState::Up => "up",
            RegistryState::Down => "down",
            RegistryState::Closed => "closed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => RegistryState::Up,
            2 => RegistryState::Down,
            3 => RegistryState::Closed,
            _ => RegistryState::Connecting,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            RegistryState::Connecting => 0,
            RegistryState::Up => 1,
            RegistryState::Down => 2,
            RegistryState::Closed => 3,
        }
    }
}

/// A cheap, cloneable view of a watch's [`RegistryState`], and of what the
/// registry noted about its latest answer.
#[derive(Clone, Debug, Default)]
pub struct RegistryStatus(Arc<StatusInner>);

#[derive(Debug, Default)]
struct StatusInner {
    state: AtomicU8,
    note: parking_lot::Mutex<Option<String>>,
}

impl RegistryStatus {
    /// The current state.
    pub fn state(&self) -> RegistryState {
        RegistryState::from_u8(self.0.state.load(Ordering::Acquire))
    }

    /// What the registry noted about its latest answer ([`WatchEvent::Degraded`]),
    /// if anything.
    pub fn note(&self) -> Option<String> {
        self.0.note.lock().clone()
    }

    /// Sets the state, returning the previous one.
    pub(crate) fn set(&self, state: RegistryState) -> RegistryState {
        RegistryState::from_u8(self.0.state.swap(state.to_u8(), Ordering::AcqRel))
    }

    pub(crate) fn set_note(&self, note: Option<String>) {
        *self.0.note.lock() = note;
    }
}
