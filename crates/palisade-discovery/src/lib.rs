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
//!     .plain() // a non-http service; `.grpc()` over a tonic `Channel`, `.http()` over hyper
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
//! // The breaker's balancer preset (5 in a row, cooldown 1 s doubling to
//! // 10 s): see "Fleet-wide failures, measured" below.
//! let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::for_balancer().build()?).protocol(Grpc::default());
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
//!   to their weight from the peers that can take a call now, and the one
//!   with fewer calls in flight per unit of weight wins (or, with
//!   [`LoadMetric::PeakEwma`], the lower peak-EWMA response time times calls
//!   in flight). A call stays "in flight" until its response — for http,
//!   its response body — has ended (the [`InFlight`] guard rides on the body
//!   through `palisade_body::track`). Peak-EWMA samples the time to the
//!   *response head* (or the error), not to the end of the body, so a peer
//!   serving long streams does not look slow; the in-flight count still
//!   lasts to the end of the body.
//! - **Availability, kept exact.** When a peer joins, the balancer hands it
//!   a [`FleetMembership`](palisade_core::peer::FleetMembership)
//!   ([`CheckAvailability::join_fleet`](palisade_core::peer::CheckAvailability::join_fleet));
//!   a breaker reports every transition through it (opened with its
//!   cooldown, half-open, closed, a probe slot back). Reports land in the
//!   peer's cell and a bounded inbox (each peer at most once) and are applied
//!   on the next `poll_ready` or `call`, never under a lock the breaker holds
//!   and never taking the set's lock from the breaker. So the balancer keeps
//!   an exact set of the peers a call may go to, and selection is O(1)
//!   however many peers are unavailable: 10,000 peers with 9,990 open cost
//!   what 10 healthy ones cost. The chosen peer is still asked before it is
//!   called (one atomic load for a closed breaker), so a report not yet
//!   applied never sends a call to an open peer. A peer that does not report
//!   (`join_fleet` returns `false`, the trait's default) is followed lazily:
//!   its availability is learnt when it is picked, and an unavailable one is
//!   looked at again when the `retry_in` it gave has passed (at least 1 s).
//! - **Probes first.** Every peer that is not plainly available is in a probe
//!   queue, a min-heap by when to look at it again: an open peer at the end
//!   of its cooldown, a half-open peer with a free probe slot at once, a
//!   peer whose probes are all in flight a second later (its breaker reports
//!   when a slot comes back). Every call peeks the head (O(1), a clock read
//!   only while some peer is out) and, once it is due, asks that peer first
//!   — with 10,000 peers the probe goes out on the first call after the
//!   cooldown, not after thousands of random draws. The queue follows every
//!   transition, an operator's too: a peer forced open and then reset, which
//!   trips again, is probed when its new cooldown ends.
//! - **Attempt record.** A retry avoids the peers that earlier attempts of
//!   the same call used (the [`AttemptRecord`](palisade_core::peer::AttemptRecord)
//!   in the request's extensions, read through the protocol's `Inspect`) —
//!   unless no other peer can take it. The chosen peer is appended to the
//!   record when the request carries one (the retry layer puts an empty record
//!   in; the balancer does not insert one, so plain calls allocate nothing).
//!   The record is a shared handle: the copies of the request a retry layer
//!   sends carry clones of one record, so the retry layer sees the chosen
//!   peer even when the attempt fails with an error (refused connection,
//!   timeout) and has no response. On http responses the balancer also
//!   names the peer ([`PeerId`](palisade_core::peer::PeerId) in the response
//!   extensions, see [`TagPeer`]) for calls that carry a record.
//! - **The ejection cap** ([`PeerDiscoveryBuilder::max_ejected_share`],
//!   10 % by default, Envoy's `max_ejection_percent`). A breaker asks the
//!   balancer, through its [`FleetMembership`](palisade_core::peer::FleetMembership),
//!   before a trip takes its peer out of rotation, and the balancer never
//!   lets more than `floor(share * n)` of its `n` peers out at once — but
//!   always lets one go (with two peers or more) and always keeps one (a
//!   lone peer is never ejected). A breaker the cap refuses stays closed and
//!   in rotation, *degraded* ("open but kept", [`PeerState::Degraded`]): it
//!   keeps counting and asks again on its next failure. The choice prefers
//!   any peer that is not degraded over a degraded one, whatever their loads
//!   (a degraded peer that fails fast would otherwise attract calls by
//!   looking unloaded); a degraded peer still gets one call a second through
//!   the probe queue, so that it shows when it recovered. A grant is given
//!   back when the breaker closes, is reset or forced, and when the peer
//!   leaves the set: nothing leaks (a proptest checks the accounting against
//!   a model). Why: when the *whole fleet* fails — a brownout, a partition —
//!   ejecting peers only removes capacity that is no worse than what is
//!   left, and ejecting all of them turns a partial failure into a total
//!   one; when *one* instance fails, one ejection is all it takes. See
//!   [Fleet-wide failures](#fleet-wide-failures-measured) for the numbers
//!   behind the default. Operators' forced opens are neither refused nor
//!   counted. [`PeerDiscoveryBuilder::no_ejection_cap`] restores the
//!   balancer's behaviour before the cap.
//! - **Every peer open** ([`AllOpenPolicy`], set with
//!   [`PeerDiscoveryBuilder::all_open`]). With the ejection cap on (the
//!   default) breakers cannot take every peer out, so this applies when the
//!   cap is off, or when peers are out for reasons the cap does not count
//!   (forced open, a peer without a breaker). When no peer can take a call because
//!   every peer that could is open — after a two-second partition, or a
//!   rolling restart of a small fleet, trips them all — the default,
//!   [`AllOpenPolicy::Reset`], resets the open breakers of this balancer and
//!   picks again, as the client this project descends from does: a fleet
//!   that recovered serves the very next call instead of failing for a
//!   whole cooldown (10 s, doubling with every failed probe round). The
//!   price is that a fleet that is really down is retried after each reset
//!   (as many calls as its breakers need to trip again); a retry budget above
//!   bounds it. [`AllOpenPolicy::ProbeNow`] sends the call as an early probe
//!   of the peer due soonest instead (one at a time, respecting the probe
//!   limit), and [`AllOpenPolicy::FailFast`] keeps every cooldown. A breaker
//!   forced open by an operator refuses both (so does a peer without a
//!   breaker), and is then left out of the policy until it reports a change,
//!   so the policy costs O(open peers) once per fleet-wide trip, not per
//!   call. One caller acts at a time; the others wait for it and pick.
//! - **Readiness and back-pressure.** `poll_ready` applies the discover's
//!   changes and the peers' reports, and re-polls up to 8 peers whose client
//!   was not ready. It is ready as long as some peer can take a call (or
//!   none can at all: then `call` fails fast, below). When every available
//!   peer's client is busy (a tonic channel whose buffer is full) it returns
//!   `Pending`, as a tower `Buffer` does, and the task is woken when one has
//!   room again or when anything changes: a busy client is back-pressure,
//!   not "no available peers". A caller therefore waits in `ready()` (a
//!   tonic client does); as with any tower service, a timeout layer applied
//!   in `call` does not bound that wait — put tower's `LoadShed` above to
//!   turn it into an immediate `Overloaded` error. A peer found not ready
//!   in `call` (it lost a race for the last slot) is skipped; if no other
//!   can take the call, it fails with `NoAvailablePeers` counting that peer
//!   as excluded. A peer is never evicted for not being ready (unlike
//!   tower's p2c); a peer whose `poll_ready` failed is kept, reported, and
//!   not picked until the discover inserts it again.
//! - **No peer available.** `call` answers at once with
//!   [`NoAvailablePeers`](error::NoAvailablePeers), naming how many peers are
//!   known, open, probing and excluded (not ready, failed, other reasons) and
//!   when the earliest probe of an open peer is due, from counts kept as the
//!   set changes (no scan). `poll_ready` never fails for it — nor for an
//!   empty set: a call made before the registry answered fails fast, and a
//!   retry layer retries it after its backoff.
//! - **Panic threshold** (optional, Envoy-style): below that share of
//!   available peers, the attempt record no longer excludes peers, so
//!   retries spread over the few peers that are left instead of piling on
//!   the unused ones. An open peer is never picked. This differs from Envoy,
//!   which routes to every host below the threshold: there, an unhealthy
//!   host may still answer, while here a peer is unavailable because its
//!   breaker is open, and the breaker would refuse the call at once with
//!   `CircuitOpen` — routing to it only turns calls that a healthy peer could
//!   serve into failures. Readiness is not relaxed either: a client that is
//!   not ready cannot take the call.
//! - **Set changes.** A removed peer's service and state are dropped (outside
//!   the lock); calls in flight keep their own future and finish. Inserting
//!   a known key again replaces its service in place: its load counters,
//!   outcome counts, latest error and probe-queue place carry over, its
//!   weight is updated, and its availability is whatever the new service
//!   answers — the same breaker behind a clone stays open.
//!   [`RegistryDiscover`] relies on this: a metadata or weight change of an
//!   instance whose address did not change re-inserts a clone of the
//!   service it made for that address, so the peer keeps its client and its
//!   breaker's state and history; a changed address is a new peer.
//! - **Discover errors.** A `Discover` is a `TryStream`: an error item is
//!   logged and shown in the health report, the last known set keeps
//!   serving, and the discover is polled again on the next `poll_ready` (an
//!   error does not end discovery). A discover that ends leaves the last
//!   known set serving for good. The discover is polled only when its waker
//!   said it has news.
//! - **Threads.** Clones share one balancer. The peer set is read-mostly
//!   behind an `RwLock`: every pick takes the read lock, so threads calling
//!   through clones choose at the same time; the write lock is taken to
//!   apply news. A pick locks only the chosen peer's service, for its
//!   `poll_ready` + `call`. Random draws use a per-thread generator. No lock
//!   is held across an `.await`, and no user code (a breaker's listener, a
//!   peer's `poll_ready`) runs under the write lock.
//! - **Health.** [`PeerDiscovery::health`] lists every peer with its
//!   breaker's state ([`PeerState`]: open until when, probing, degraded
//!   (open but kept), available), how much of the ejection cap is in use
//!   ([`HealthReport::ejections`]),
//!   readiness, weight, load, outcome counts and its latest failure with the
//!   whole cause chain (`transport error: tcp connect error: Connection
//!   refused (os error 111)`, `gRPC status 14 (UNAVAILABLE): ...`), counts
//!   by state for a dashboard ([`HealthReport::counts`]), the all-open
//!   policy, and the registry's state and note when a [`RegistryStatus`] is
//!   attached. Any listener may call it.
//! - **Events.** `PeerAdded` / `PeerRemoved` per change; a `StateChange`
//!   (`available` <-> `unavailable`, with the reason — `breaker open` and its
//!   cooldown, `probing`, `client not ready`, `client failed` — and the
//!   service as the key) when a peer enters or leaves the set a call may go
//!   to; a `StateChange` from `all_open` to the policy's name when the
//!   all-open policy acts; a `StateChange` `available` -> `degraded`
//!   (reason `ejection cap reached: open but kept`) when the cap keeps a
//!   tripped peer in rotation, and `degraded` -> `available` (`recovered`)
//!   when it recovers; `Rejected` for each "no available peers"; the
//!   registry's `up`/`down` edges from [`RegistryDiscover`]. All through
//!   `palisade_core::event` listeners and tracing, emitted once the
//!   balancer's locks are released, so a listener may call back into it.
//! - **Metrics** (feature `metrics`), each with the `service` label (the
//!   [`service_name`](PeerDiscoveryBuilder::service_name), `-` when unnamed):
//!   gauges `palisade_discovery_peers`, `palisade_discovery_available_peers`,
//!   `palisade_discovery_open_peers`, `palisade_discovery_probing_peers`,
//!   `palisade_discovery_degraded_peers` (open but kept) and
//!   `palisade_discovery_ejected_peers` (grants of the ejection cap held);
//!   counters `palisade_discovery_no_available_peers_total` and
//!   `palisade_discovery_all_open_total{policy}`.
//!
//! # Fleet-wide failures, measured
//!
//! The numbers behind the ejection cap's default, through the stack of
//! DESIGN.md section 3 (total timeout 1 s -> retry, 1 retry -> bulkhead ->
//! this balancer -> per peer: breaker `CircuitBreakerConfig::for_balancer()`,
//! attempt timeout 250 ms, tonic channel) over three tonic servers at
//! 200 calls/s of tokio's paused clock, each server failing from its own
//! seeded generator (`tests/tests/fleet_never_worse.rs`, `measure_matrix`,
//! which also prints the breaker-configuration table of
//! `palisade-circuit-breaker`'s docs). Success of the calls made during the
//! fault; for brownouts, the most peers out at once and the peer-seconds
//! out of rotation during it; for the 2 s partition, when calls succeeded
//! again after the servers recovered.
//!
//! | balancer | 30 % brownout, 5 s | 30 % brownout, 20 s | one down, refusing or slow, 5 s | two of three down, 5 s | every server UNAVAILABLE or refusing for 2 s |
//! |---|---|---|---|---|---|
//! | **cap 10 % (default)** | 91.9 %, 1 out, 4.4 peer-s | 88.7 %, 1 out, 11.0 peer-s | 100 % | 99.8 % | at once |
//! | cap 67 % | 92.0 %, 2 out, 7.1 peer-s | 88.2 %, 2 out, 20.0 peer-s | 99.9-100 % | 100 % | at once |
//! | no cap (reset when all are open) | 90.9 %, 2 out, 2.9 peer-s | 88.3 %, 3 out, 12.7 peer-s | 100 % | 99.9 % | at once (3 out) |
//! | cap 10 %, all-open fail fast | 92.4 %, 1 out | 88.7 %, 1 out | 100 % | 100 % | at once |
//! | no cap, fail fast, seed breaker (before issues 14 and 19) | 11.2 %, then 53 % after it | 3.0 % | 100 % | 99.8 % | after 8 s |
//! | a bare `Channel::balance_list` | 69.4 % | 70.5 % | 69-100 % | 32.7 % | at once |
//!
//! - With three peers every share below 2/3 ejects one: the measurements
//!   separate "one out" from "two out". Letting two of three out bought no
//!   success in any scenario (a brownout's peers are all equally bad; with
//!   two servers down the choice's preference for non-degraded peers sends
//!   the calls to the healthy one anyway) and cost capacity: 7.1 instead of
//!   4.4 peer-seconds out in the 5 s brownout, 20 instead of 11 in the 20 s
//!   one. So the default is Envoy's 10 % (with one ejection always allowed):
//!   on a 3- to 19-peer fleet one instance at a time, on 20 peers two.
//! - The cap, not the all-open policy, is what keeps a fleet-wide failure
//!   from taking the fleet out: with the cap, fail-fast does as well as
//!   reset; without it, fail-fast (the balancer before issue 14) collapses.
//! - Recovery after a fleet-wide failure is immediate: the peers kept in
//!   rotation serve the first call after the servers recover, and the one
//!   ejected peer is back after its cooldown (1 s with the preset).
//! - Retries: about 1.3 attempts per call in a 5 s brownout and 1.25 in a
//!   20 s one, where the retry budget (20 % of the request rate plus 10 a
//!   second) binds; a retried attempt fails on its second peer as often as
//!   that peer's own calls do, so it counts against the peer like any other
//!   attempt (see `palisade-circuit-breaker`'s docs).
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
//! - [`InMemoryRegistry`]: TTL and heartbeats in one process (or no TTL);
//!   the seed system's defaults (a heartbeat every 10 s, expiry 20 s after
//!   the last one), and an outage switch for tests and demos
//!   ([`InMemoryRegistry::set_reachable`]).
//! - [`StaticRegistry`]: a fixed list.
//! - `EtcdRegistry` (feature `etcd`): keys under a prefix bound to leases,
//!   read-then-watch from the read revision, reconnect with backoff and
//!   re-read; a provider's `shutdown()` retries the lease revocation against
//!   the live members within a bound and says clearly if it finally cannot.
//! - `DnsRegistry` (feature `dns`): periodic re-resolution of a host name
//!   (A/AAAA) or an SRV name through hickory-resolver, or any `Resolve`; an
//!   SRV target that does not resolve is skipped (the health report notes
//!   it) and the others update.
//!
//! When a registry is unreachable its watch reports `Down` and the balancer
//! keeps serving the last known set; on reconnection the set is resynchronised.
//!
//! The registries (the control plane) live in this crate, apart from the
//! balancer (the data path) in their own module: the balancer consumes any
//! `Discover` and never calls a registry, and the heavy backends are behind
//! features, so a user of the balancer alone compiles only the small
//! in-memory and static registries.

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

pub use config::{AllOpenPolicy, DEFAULT_MAX_EJECTED_SHARE, PeerDiscoveryBuilder};
pub use future::{InFlight, ResponseFuture};
pub use health::{Ejections, HealthReport, PeerCounts, PeerHealth, PeerState, Readiness};
pub use layer::PeerDiscoveryLayer;
pub use load::LoadMetric;
pub use peer::{AlwaysAvailable, PeerWeight, Weighted};
#[cfg(feature = "dns")]
pub use registry::dns::{DnsRegistry, HickoryResolver, NoSuchName, Resolve, SrvTarget};
#[cfg(feature = "etcd")]
pub use registry::etcd::{DeregisterFailed, EtcdRegistry, EtcdRegistryBuilder};
pub use registry::{
    InMemoryRegistry, Instance, KeepAlive, MAX_FIELD_LEN, MAX_METADATA, MakePeer, Registration, Registry,
    RegistryDiscover, RegistryState, RegistryStatus, StaticRegistry, WatchEvent, WatchStream,
};
pub use service::PeerDiscovery;
pub use tag::TagPeer;
