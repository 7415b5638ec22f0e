//! Peer discovery for tower: a balancer that routes around unavailable peers
//! ([`PeerDiscovery`]), and registry-backed [`Discover`](tower::discover::Discover)
//! streams ([`RegistryDiscover`]) over an in-memory, static, or (feature
//! `etcd`) etcd registry.
//!
//! # Example
//!
//! Three providers register in the in-memory registry; a consumer balances
//! over them, each peer behind its own availability check (in production, a
//! per-peer circuit breaker from `palisade-circuit-breaker`, which implements
//! [`CheckAvailability`](palisade_core::peer::CheckAvailability); here
//! [`AlwaysAvailable`]):
//!
//! ```
//! use palisade_discovery::{AlwaysAvailable, InMemoryRegistry, Instance, PeerDiscoveryLayer, Registry, RegistryDiscover};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade_core::BoxError> {
//! use palisade_core::BoxError;
//! let registry = InMemoryRegistry::new();
//! let mut handles = Vec::new();
//! for addr in ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"] {
//!     handles.push(registry.register(Instance::new("echo", addr).with_zone("eu-1a")).await?);
//! }
//!
//! // How to make the per-peer service of an instance: a client bound to its
//! // address (here a stand-in that answers with it) in its per-peer stack.
//! // Fallible: an instance whose client cannot be made is skipped with a
//! // warning, never a panic.
//! let make = |instance: &Instance| -> Result<_, BoxError> {
//!     let addr = instance.addr().to_owned();
//!     Ok(AlwaysAvailable::new(service_fn(move |_req: ()| {
//!         let addr = addr.clone();
//!         async move { Ok::<_, std::convert::Infallible>(addr) }
//!     })))
//! };
//! let discover = RegistryDiscover::new(&registry, "echo", make);
//! let mut balancer = PeerDiscoveryLayer::builder()
//!     .service_name("echo")
//!     .registry_status(discover.status())
//!     .build()?
//!     .layer(discover);
//!
//! let answer = balancer.ready().await?.call(()).await?;
//! assert!(answer.starts_with("10.0.0."));
//!
//! // A provider leaves: dropping its handle deregisters it.
//! handles.pop();
//! balancer.ready().await?;
//! assert_eq!(balancer.health().peers.len(), 2);
//! # Ok(()) }
//! ```
//!
//! Over tonic, each peer is a lazily connected `Channel` behind its own
//! circuit breaker (`CircuitBreakerLayer::for_peer` gives each peer its own
//! state), and the balancer speaks [`Grpc`](palisade_core::protocol::Grpc) so
//! that a call counts as in flight until its response stream ends:
//!
//! ```ignore
//! let breaker = CircuitBreakerLayer::new(config).protocol(Grpc::default());
//! let discover = RegistryDiscover::new(&registry, "echo", move |instance: &Instance| -> Result<_, BoxError> {
//!     // Registry data: a bad address skips the instance (with a warning), it
//!     // never panics the client.
//!     let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
//!     Ok(breaker.for_peer(instance.id()).layer(channel))
//! });
//! let balancer = PeerDiscoveryLayer::builder().grpc().service_name("echo").build()?.layer(discover);
//! let client = EchoClient::new(balancer); // clones share the peer set
//! ```
//!
//! # The balancer
//!
//! [`PeerDiscovery`] takes a `Discover` of per-peer services that implement
//! [`CheckAvailability`](palisade_core::peer::CheckAvailability) (whether the
//! peer's breaker lets a call through now) and [`PeerWeight`].
//!
//! - **Choice.** Power of two choices: two random peers, drawn in proportion
//!   to their weight, and the one with fewer calls in flight per unit of
//!   weight wins (or, with [`LoadMetric::PeakEwma`], the lower peak-EWMA
//!   response time times calls in flight). A call stays "in flight" until
//!   its response — for http, its response body — has ended (the [`InFlight`] guard rides on the body
//!   through `palisade_body::track`). Selection is O(1): the peers live in a
//!   `Vec` with a key index; an update is O(1) (a weight change O(log n)).
//! - **Availability.** Only peers whose availability says so are picked. A
//!   peer that answers [`Availability::Probe`](palisade_core::peer::Availability::Probe)
//!   (its cooldown has passed) is picked at once, so recovering peers get
//!   their probe and nothing starves: when the balancer sees a peer open, it
//!   queues it in a min-heap by the instant its probe is due (now + the
//!   breaker's `retry_in`); every pick peeks the head (O(1)) and, once it is
//!   due, asks that peer first — with 10,000 peers the probe goes out on the
//!   first call after the cooldown, not after thousands of random draws.
//!   (A peer enters the queue the first time the balancer sees it open: in a
//!   draw, or in the scan below.) When random draws keep meeting
//!   unavailable peers, one scan of the set finds any available peer: the
//!   balancer never fails while a peer is available.
//! - **Attempt record.** A retry avoids the peers that earlier attempts of
//!   the same call used (the [`AttemptRecord`](palisade_core::peer::AttemptRecord)
//!   in the request's extensions, read through the protocol's `Inspect`) —
//!   unless no other peer is available. The chosen peer is appended to the
//!   record when the request carries one (the retry layer puts an empty record
//!   in; the balancer does not insert one, so plain calls allocate nothing).
//!   The record is a shared handle: the copies of the request a retry layer
//!   sends carry clones of one record, so the retry layer sees the chosen
//!   peer even when the attempt fails with an error (refused connection,
//!   timeout) and has no response. On http responses the balancer also
//!   names the peer ([`PeerId`](palisade_core::peer::PeerId) in the response
//!   extensions, see [`TagPeer`]) for calls that carry a record.
//! - **Readiness.** `poll_ready` applies the discover's changes, re-polls up
//!   to 8 peers that were not ready, and is then always ready: the choice
//!   happens in `call`, which polls the chosen peer's readiness without a
//!   waker. A peer that is not ready is skipped (not evicted, unlike tower's
//!   p2c) and comes back when a later `poll_ready` finds it ready. A peer
//!   whose `poll_ready` failed is kept, reported, and not picked until the
//!   discover inserts it again. Either leaves the available sample (and the
//!   panic threshold's count) until it is ready again.
//! - **No peer available.** `call` answers at once with
//!   [`NoAvailablePeers`](error::NoAvailablePeers), naming how many peers are
//!   known, open, probing and excluded (not ready, failed, other reasons) and
//!   when the earliest probe is due. `poll_ready` never fails for it — nor for
//!   an empty set: a call made before the registry answered fails fast, and a
//!   retry layer retries it after its backoff.
//! - **Panic threshold** (optional, Envoy-style): below that share of
//!   available peers (as last seen), the attempt record no longer excludes
//!   peers, so retries spread over the few peers that are left instead of
//!   failing for want of an unused one. An available peer is always
//!   preferred, and an open peer is never picked. This differs from Envoy,
//!   which routes to every host below the threshold: there, an unhealthy
//!   host may still answer, while here a peer is unavailable because its
//!   breaker is open, and the breaker would refuse the call at once with
//!   `CircuitOpen` — routing to it only turns calls that a healthy peer could
//!   serve into failures. Readiness is not relaxed either: a client that is
//!   not ready cannot take the call.
//! - **Set changes.** A removed peer's service and state are dropped at once;
//!   calls in flight keep their own future and finish. Inserting a key again
//!   replaces its service in place (its load counters carry over, since calls
//!   to the old client are still in flight against the same peer).
//! - **Discover errors.** A `Discover` is a `TryStream`: an error item is
//!   logged and shown in the health report, the last known set keeps
//!   serving, and the discover is polled again on the next `poll_ready` (an
//!   error does not end discovery). A discover that ends leaves the last
//!   known set serving for good.
//! - **Events.** The balancer's events (peer added/removed, availability
//!   flips, rejections) are emitted after its lock is released, so a
//!   listener may call back into it (say, [`PeerDiscovery::health`]).
//! - **Shared state.** Clones share the peer set and the discover (a mutex
//!   held for the short, non-async choice). Every balancer built by one layer
//!   shares its settings and listeners.
//! - **Health.** [`PeerDiscovery::health`] lists every peer with its
//!   availability, readiness, load, outcome counts and last error, and the
//!   registry's state when a [`RegistryStatus`] is attached.
//! - **Events.** `PeerAdded` / `PeerRemoved` per change and `Rejected` for
//!   each "no available peers", through `palisade_core::event` listeners and
//!   tracing; the registry's `up`/`down` edges as `StateChange` events from
//!   [`RegistryDiscover`]. With the `metrics` feature, a peer-count gauge and
//!   a rejection counter.
//!
//! # Registries
//!
//! A [`Registry`] has two sides: [`Registry::register`] returns a
//! [`Registration`] handle that keeps an [`Instance`] (service, address,
//! zone, weight, metadata) alive and removes it when dropped or
//! [`shut down`](Registration::shutdown); [`Registry::watch`] streams the
//! live set of a service ([`WatchEvent`]). [`RegistryDiscover`] turns a watch
//! into a tower `Discover`, diffing resynchronisations so that nothing is lost
//! or duplicated, and works with tower's own balancer too.
//!
//! - [`InMemoryRegistry`]: TTL and heartbeats in one process (or no TTL).
//! - [`StaticRegistry`]: a fixed list.
//! - `EtcdRegistry` (feature `etcd`): keys under a prefix bound to leases,
//!   read-then-watch from the read revision, reconnect with backoff and
//!   re-read.
//! - `DnsRegistry` (feature `dns`): periodic re-resolution of a host name
//!   (A/AAAA) or an SRV name through hickory-resolver, or any `Resolve`.
//!
//! When a registry is unreachable its watch reports `Down` and the balancer
//! keeps serving the last known set; on reconnection the set is resynchronised.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod balancer;
mod config;
pub mod error;
mod future;
mod health;
mod layer;
mod load;
mod peer;
mod registry;
mod service;
mod tag;

pub use config::{AllOpenPolicy, PeerDiscoveryBuilder};
pub use future::{InFlight, ResponseFuture};
pub use health::{HealthReport, PeerCounts, PeerHealth, PeerState, Readiness};
pub use layer::PeerDiscoveryLayer;
pub use load::LoadMetric;
pub use peer::{AlwaysAvailable, PeerWeight, Weighted};
#[cfg(feature = "dns")]
pub use registry::dns::{DnsRegistry, HickoryResolver, Resolve, SrvTarget};
#[cfg(feature = "etcd")]
pub use registry::etcd::{DeregisterFailed, EtcdRegistry, EtcdRegistryBuilder};
pub use registry::{
    InMemoryRegistry, Instance, KeepAlive, MAX_FIELD_LEN, MAX_METADATA, MakePeer, Registration, Registry,
    RegistryDiscover, RegistryState, RegistryStatus, StaticRegistry, WatchEvent, WatchStream,
};
pub use service::PeerDiscovery;
pub use tag::TagPeer;
