//! The registry abstraction: providers register instances, consumers watch a
//! service's live set.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use palisade_core::BoxError;
use palisade_core::peer::PeerId;

/// The longest service name, address, zone or metadata entry accepted.
pub const MAX_FIELD_LEN: usize = 512;
/// The most metadata entries an instance may carry.
pub const MAX_METADATA: usize = 32;

/// One instance of a service, as a provider registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    service: String,
    addr: String,
    zone: Option<String>,
    weight: u32,
    metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance of `service` at `addr` (`host:port`), weight 1, no zone.
    pub fn new(service: impl Into<String>, addr: impl fmt::Display) -> Self {
        Self {
            service: service.into(),
            addr: addr.to_string(),
            zone: None,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the zone (availability zone, rack).
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the weight (relative share of traffic; 0 counts as 1).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The zone, if set.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.max(1)
    }

    /// The metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The instance's identity within its service: its address.
    pub fn id(&self) -> PeerId {
        PeerId::new(&self.addr)
    }

    /// Checks the fields: non-empty service and address, no control
    /// characters or `=`/whitespace where they would break the encoding, and
    /// lengths within [`MAX_FIELD_LEN`] and [`MAX_METADATA`]. The address must
    /// be `host:port`: the port a number up to 65535, the host an IPv4
    /// literal, a bracketed IPv6 literal (`[::1]:80`) or a DNS name of ASCII
    /// letters, digits, `.` and `-` — so that a client can always be made
    /// from it (`http://{addr}` is a valid URI).
    pub fn validate(&self) -> Result<(), InvalidInstance> {
        fn field(name: &'static str, value: &str, allow_space: bool) -> Result<(), InvalidInstance> {
            if value.is_empty() {
                return Err(InvalidInstance::new(format!("{name} is empty")));
            }
            if value.len() > MAX_FIELD_LEN {
                return Err(InvalidInstance::new(format!(
                    "{name} is {} bytes long, more than {MAX_FIELD_LEN}",
                    value.len()
                )));
            }
            if value
                .chars()
                .any(|c| c.is_control() || (!allow_space && c.is_whitespace()))
            {
                return Err(InvalidInstance::new(format!("{name} {value:?} has invalid characters")));
            }
            Ok(())
        }
        field("service", &self.service, false)?;
        field("addr", &self.addr, false)?;
        check_addr(&self.addr)?;
        if let Some(zone) = &self.zone {
            field("zone", zone, false)?;
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(InvalidInstance::new(format!(
                "{} metadata entries, more than {MAX_METADATA}",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            field("metadata key", k, false)?;
            if k.contains('=') {
                return Err(InvalidInstance::new(format!("metadata key {k:?} contains '='")));
            }
            if !v.is_empty() {
                field("metadata value", v, true)?;
            }
        }
        Ok(())
    }

    /// Encodes the instance as text, one `key=value` per line, as the etcd
    /// backend stores it.
    pub fn encode(&self) -> String {
        let mut out = format!("service={}\naddr={}\nweight={}\n", self.service, self.addr, self.weight);
        if let Some(zone) = &self.zone {
            out.push_str(&format!("zone={zone}\n"));
        }
        for (k, v) in &self.metadata {
            out.push_str(&format!("meta.{k}={v}\n"));
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) wrote, validating it. Never
    /// panics, whatever the input.
    pub fn decode(text: &str) -> Result<Instance, InvalidInstance> {
        let max = (MAX_FIELD_LEN + 16) * (MAX_METADATA + 4);
        if text.len() > max {
            return Err(InvalidInstance::new(format!(
                "value is {} bytes long, more than {max}",
                text.len()
            )));
        }
        let (mut service, mut addr, mut zone, mut weight) = (None, None, None, 1u32);
        let mut metadata = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Some((k, v)) = line.split_once('=') else {
                return Err(InvalidInstance::new(format!("line {line:?} is not key=value")));
            };
            match k {
                "service" => service = Some(v.to_owned()),
                "addr" => addr = Some(v.to_owned()),
                "zone" => zone = Some(v.to_owned()),
                "weight" => {
                    weight = v
                        .parse()
                        .map_err(|_| InvalidInstance::new(format!("weight {v:?} is not a number")))?;
                }
                _ => match k.strip_prefix("meta.") {
                    Some(key) => {
                        metadata.insert(key.to_owned(), v.to_owned());
                    }
                    None => return Err(InvalidInstance::new(format!("unknown field {k:?}"))),
                },
            }
        }
        let (Some(service), Some(addr)) = (service, addr) else {
            return Err(InvalidInstance::new("service or addr missing"));
        };
        let instance = Instance {
            service,
            addr,
            zone,
            weight,
            metadata,
        };
        instance.validate()?;
        Ok(instance)
    }
}

/// Checks that `addr` is `host:port` (see [`Instance::validate`]).
fn check_addr(addr: &str) -> Result<(), InvalidInstance> {
    let bad = |why: &str| InvalidInstance::new(format!("addr {addr:?} is not host:port: {why}"));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(bad("the port is not a number in 0..=65535"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return Err(bad("unclosed '['"));
        };
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(bad("not an IPv6 literal in brackets")),
        };
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.contains("..");
    if name_ok {
        Ok(())
    } else {
        Err(bad("the host is neither an IP literal nor a DNS name"))
    }
}

/// An instance was rejected: a field is empty, too long or malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInstance {
    problem: String,
}

impl InvalidInstance {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
        }
    }
}

impl fmt::Display for InvalidInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid instance: {}", self.problem)
    }
}

impl std::error::Error for InvalidInstance {}

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

/// A cheap, cloneable view of a watch's [`RegistryState`].
#[derive(Clone, Debug, Default)]
pub struct RegistryStatus(Arc<AtomicU8>);

impl RegistryStatus {
    /// The current state.
    pub fn state(&self) -> RegistryState {
        RegistryState::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Sets the state, returning the previous one.
    pub(crate) fn set(&self, state: RegistryState) -> RegistryState {
        RegistryState::from_u8(self.0.swap(state.to_u8(), Ordering::AcqRel))
    }
}
