//! A circuit breaker for tower services: stop calling a peer that keeps
//! failing, give it time, then probe it carefully before trusting it again.
//!
//! ```
//! use std::time::Duration;
//! use palisade_circuit_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState};
//! use palisade_core::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), BoxError> {
//! let layer = CircuitBreakerLayer::builder()
//!     .plain() // not http: every `Err` is a failure (over tonic: `.grpc()`)
//!     .peer("10.0.0.7:50051")
//!     .failure_threshold(3) // 3 failures in a row trip it...
//!     .cooldown(Duration::from_secs(10)) // ...for 10 s, doubling per failed probe round
//!     .build()?;
//! let handle = layer.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|fail: bool| async move { if fail { Err::<&str, BoxError>("unavailable".into()) } else { Ok("pong") } });
//!
//! for _ in 0..3 {
//!     let err = svc.ready().await?.call(true).await.unwrap_err();
//!     assert_eq!(err.to_string(), "unavailable"); // inner errors pass through untouched
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//!
//! // Open: refused at once, without calling the inner service.
//! let err = svc.ready().await?.call(false).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("refused by the breaker");
//! assert_eq!(open.retry_in(), Duration::from_secs(10));
//!
//! // After the cooldown, probes decide: two successes close it.
//! tokio::time::advance(Duration::from_secs(10)).await;
//! assert_eq!(svc.ready().await?.call(false).await?, "pong");
//! assert_eq!(handle.state(), CircuitState::HalfOpen);
//! assert_eq!(svc.ready().await?.call(false).await?, "pong");
//! assert_eq!(handle.state(), CircuitState::Closed);
//! # Ok(()) }
//! ```
//!
//! # Trip policies
//!
//! Two policies, usable alone or together (either trips):
//!
//! - **Consecutive** (the default): [`failure_threshold`] (3) failures in a
//!   row, each less than [`failure_window`] (60 s) after the previous one. A
//!   failure that comes `failure_window` or more after the previous one starts
//!   the count again at 1; a success resets it to 0.
//! - **Failure rate**: on when [`failure_rate_threshold`] is set. It trips when
//!   failures / calls reaches the threshold once at least [`min_requests`] (20)
//!   calls lie in a sliding [`rate_window`] (60 s) cut into [`rate_buckets`] (10)
//!   time buckets. The rate is judged after every completed call, so a success
//!   can complete a tripping window. The window slides bucket by bucket: a call
//!   counts for at least `window - window / buckets` and less than `window`
//!   after its outcome. With [`slow_call_duration`], calls that take longer
//!   (success or not) count as slow, and a slow rate reaching
//!   [`slow_call_rate_threshold`] (default 1.0) trips too. A call's duration
//!   runs from admission to its outcome, which for a streamed response is the
//!   end of its body.
//!
//! Ignored outcomes (a business error, the caller's own deadline passing, a
//! cancelled call, a gRPC stream dropped before its trailers) count toward
//! nothing. The policies judge calls admitted while closed; half-open probes
//! are judged by their outcome alone (a slow but successful probe is a
//! success).
//!
//! # Open, half-open, closed
//!
//! An open breaker refuses every call with [`CircuitOpen`], which names the
//! peer and how long until the next probe is allowed. When the cooldown has
//! passed, the breaker becomes half-open *lazily*: when the next call arrives
//! or when a balancer asks [`CheckAvailability::availability`]. No background
//! task or timer is involved.
//!
//! Half-open admits at most [`half_open_max_probes`] (1) calls at a time;
//! [`success_threshold`] (2) probe successes close it; one probe failure opens
//! it again with the cooldown doubled, up to [`max_cooldown`] (120 s), with
//! optional [`jitter`], which never takes a cooldown below half the base
//! cooldown. Closing resets the cooldown to its base. A probe slot
//! comes back on every path: success, failure, ignored outcome, the caller
//! dropping the future, the response body dropped unread, a panic in the
//! inner service. A half-open breaker whose slots are all taken and whose
//! last probe was admitted [`probe_timeout`] ago (default `max(cooldown,
//! 10 s)`) takes the slots back, so a probe whose result never comes cannot
//! wedge it; the late results of those probes are then ignored.
//!
//! Every transition starts a new *generation*. A call remembers the
//! generation that admitted it, and its result moves nothing if the breaker
//! has changed since: a slow call that started while closed and fails after
//! the breaker opened is ignored, as is a probe of an earlier half-open round.
//!
//! # Classification and streaming
//!
//! [`CircuitBreakerLayer::builder`] has no `build()` until a protocol is
//! chosen (`.grpc()`, `.http()`, `.plain()` or `.protocol(p)`): a breaker
//! left on `Plain` over a tonic channel would ignore every gRPC status in the
//! trailers without a word, so the choice is made explicit and checked by
//! the compiler.
//!
//! The breaker is generic over a protocol `P` (default [`Plain`]: every `Err`
//! is a failure). Choose [`Http`] or [`Grpc`] with
//! [`CircuitBreakerLayer::protocol`], or refine any of them with
//! [`ClassifyExt`] closures so that business errors do not count. For http
//! responses the verdict waits for the end of the body through
//! `palisade-body`: a `200` whose trailers carry `grpc-status: 14` is a
//! failure, a body error mid-stream is a failure.
//!
//! ## The caller's deadline
//!
//! A call that ran out of its *caller's* time ([`DeadlineExceeded`], from a
//! timeout layer below, before the call was sent or while the deadline was
//! the tighter limit) is not the peer's fault: the built-in protocols count
//! it as neither, so a caller whose deadline is nearly spent cannot open the
//! breakers of a healthy fleet. A per-attempt [`TimedOut`] still counts as a
//! failure, which is how a peer that hangs trips the breaker: keep the
//! attempt timeout below the deadlines your callers usually give.
//!
//! ## Abandoned calls
//!
//! What a call that ends without a verdict means is the protocol's
//! [`AbandonPolicy`] ([`Http::with_abandon_policy`],
//! [`Grpc::with_abandon_policy`]). By default:
//!
//! - a response whose head is a success and whose body is dropped before its
//!   end is a **success**: a hyper client that checks `status()` and drops
//!   the body records its successes (they reset the consecutive count, and
//!   they close a half-open breaker);
//! - a failure known from the head stays a failure when its body is dropped
//!   (a 503 dropped unread is still a 503);
//! - a gRPC response dropped before its trailers is **neither**;
//! - a response future dropped before its response is **neither**;
//! - a half-open **probe is judged at the end of its stream**, like any call
//!   ([`ProbeVerdict::AtEnd`]), with one exception: a probe whose head was
//!   healthy and whose body is still streaming when [`probe_timeout`] passes
//!   counts as a **success** then (at the first call or availability check
//!   after it), so a long healthy stream neither holds the breaker half-open
//!   nor counts as a failure; its later end is ignored. A probe with no head
//!   by then is reclaimed as nothing. With [`ProbeVerdict::AtHead`] a head
//!   that is not a failure is the probe's success at once and the slot comes
//!   back (an error later in that body is not held against the probe).
//!
//! # Standalone and per peer
//!
//! `poll_ready` only forwards the inner service's readiness: an open breaker
//! never makes the service unready (tower treats a `poll_ready` error as
//! terminal). It answers from `call`, at once, and the inner service is not
//! called. Behind a balancer, the breaker implements [`CheckAvailability`]
//! (on the service, the layer and the [`CircuitBreakerHandle`]), so an open
//! peer is simply not picked. It joins the balancer's fleet
//! (`join_fleet`) and reports, once its lock is released and after its
//! listeners, the availability each transition leaves (open with its
//! cooldown, half-open, closed) and every probe slot that comes back while
//! it stays half-open, so the balancer never has to scan its peers. When
//! every peer is open, a balancer may ask for an early probe
//! (`request_probe`: open moves to half-open now, within the probe limit)
//! or a reset (`reset_open`: open or half-open closes with fresh counters
//! and the base cooldown); a breaker forced open by a handle refuses both.
//!
//! # Inside a balancer: the ejection cap and [`CircuitBreakerConfig::for_balancer`]
//!
//! A breaker that joined a balancer's fleet asks the balancer before a trip
//! opens it ([`FleetMembership::request_ejection`]): the balancer caps how
//! many of its peers may be out of rotation at once (`palisade-discovery`'s
//! `max_ejected_share`, 10 % by default, always one ejectable and one kept).
//! When the cap refuses, the breaker stays **closed, "open but kept"**: calls
//! still pass and outcomes still count; its [`CircuitSnapshot`] says
//! `kept_in_rotation`; it reports [`Availability::Degraded`] to the balancer
//! (which then prefers the other peers); it emits a `StateChange` `closed` ->
//! `degraded` (reason `ejection cap reached: open but kept`, logged at
//! `WARN`); and it asks again on each later outcome that still trips (for
//! the consecutive policy: every further failure of the run), so it leaves
//! rotation as soon as the fleet has room. The first counted outcome that
//! does not trip (a success, for the consecutive policy) makes it plainly
//! closed again (`degraded` -> `closed`, reason `trip condition cleared`).
//! Being kept is not a transition of [`CircuitState`]: the generation does
//! not move, so the results of calls in flight still count. The grant a trip
//! took is held while the breaker is open or half-open and given back when
//! it closes (probes succeeded, reset, `reset_open`) or is forced; the
//! balancer gives it back too when the peer leaves its set. An operator's
//! [`force_open`](CircuitBreakerHandle::force_open) is never refused and
//! not counted. A standalone breaker (no fleet) asks nobody and behaves as
//! it always did. Asking costs two atomics of the balancer, under the
//! breaker's lock, on the trip only.
//!
//! ## Which numbers inside a balancer
//!
//! [`CircuitBreakerConfig::builder`] starts from the seed system's numbers
//! ([`CircuitBreakerConfig::seed`]: 3 consecutive failures within 60 s,
//! cooldown 10 s doubling to 120 s, 1 probe, 2 probe successes), right for
//! one service behind one breaker, where an open breaker is the only
//! protection. Inside a balancer, start from
//! [`CircuitBreakerConfig::for_balancer`]: **5 consecutive failures** (Envoy's
//! `consecutive_5xx` default), **cooldown 1 s doubling to 10 s**, 1 probe, 2
//! probe successes, no failure-rate policy. Why, measured through the stack
//! of DESIGN.md section 3 over three tonic servers at 200 calls/s, each
//! breaker inside a balancer with its default 10 % cap
//! (`tests/tests/fleet_never_worse.rs`, `measure_matrix`): the success of the
//! calls made during a 30 % brownout, the peer-seconds the breakers took out
//! of rotation during it (capacity lost for nothing: every peer is equally
//! bad), and how long after each fault ended every faulted server served
//! again.
//!
//! | breaker | brownout 5 s | brownout 20 s | back after the brownout | one server down 5 s | two down 5 s | every server down 2 s |
//! |---|---|---|---|---|---|---|
//! | seed: 3 in a row, 10 s -> 120 s | 91.8 %, 4.9 peer-s | 88.2 %, 19.7 peer-s | 5.1 s | not within 5 s | not within 5 s | 8.0 s |
//! | 5 in a row, 10 s -> 120 s | 91.9 %, 4.1 peer-s | 88.6 %, 19.1 peer-s | 5.9 s | not within 5 s | not within 5 s | 8.0 s |
//! | 3 in a row, 1 s -> 10 s | 92.5 %, 4.8 peer-s | 88.1 %, 19.0 peer-s | 2.2 s | 2.1 s | 2.0 s | 1.0 s |
//! | **5 in a row, 1 s -> 10 s** | 91.9 %, 4.4 peer-s | 88.7 %, **11.0 peer-s** | 2.6 s | 2.1 s | 2.1 s | 1.0 s |
//! | 5 in a row + 50 % rate (min 20 in 10 s), 1 s -> 10 s | 91.9 %, 4.4 peer-s | 88.6 %, 11.0 peer-s | 2.6 s | 2.0 s | 2.0 s | 1.0 s |
//!
//! (A bare `Channel::balance_list` keeps 69 % through the brownout and 33 %
//! with two servers down.)
//!
//! - Every configuration keeps at least 99.8 % of the calls while one or two
//!   servers fail (each failed attempt is retried on another peer), and the
//!   balancer's cap bounds a brownout whatever the trip policy. What the trip
//!   policy decides is how much capacity a uniformly flaky fleet loses for
//!   nothing, and how soon a recovered server serves again.
//! - **5 in a row** takes a peer of a 30 % flaky fleet out about once in 590
//!   of its calls, where 3 in a row does so once in about 50: in the 20 s
//!   brownout it cost 11 peer-seconds of capacity instead of 19, for 2 more
//!   failed (and retried) attempts per dead instance. It is also Envoy's
//!   `consecutive_5xx` default.
//! - **1 s doubling to 10 s**: a failed probe costs one attempt, which the
//!   retry layer sends to another peer, so a dead instance costs one retried
//!   attempt per cooldown (8 in its first minute, the seed's 2) while a recovered one
//!   serves again about 2 s after a 5 s outage (the seed's 10 s kept it out
//!   for the rest of the run), and 1 s after a fleet-wide 2 s one (8 s with
//!   the seed's). Probing sooner when a peer is no longer the fleet's
//!   outlier, or a slow start, were considered and not built: the short
//!   cooldown already brings a recovered peer back within about two
//!   cooldowns, while outlier detection needs a per-call success rate per
//!   peer in the balancer (a cost on every call).
//! - **No failure-rate policy**: it changed nothing measurable here, and a
//!   rate policy counts every call, which takes the breaker's lock on every
//!   success where the consecutive policy takes none (`circuit_breaker`
//!   bench, `palisade_rate_policy` next to `palisade_for_balancer`).
//! - **Retried attempts count like any other.** A retry goes to a peer the
//!   call has not used (the balancer's attempt record), so one call adds at
//!   most one failure to any peer; measured, a retried attempt failed on its
//!   second peer as often as that peer's own first attempts did (24-33 %
//!   against 27-32 % in the 5 s brownout, 28-30 % against 29-30 % in the
//!   20 s one, across every configuration): a retry carries no extra blame,
//!   and a healthy peer that takes the retries of failing ones is never
//!   blamed for them (two servers down: 0 failures on the third). The retry
//!   budget bounds the volume: 1.30 attempts per call in the 5 s brownout,
//!   1.25 in the 20 s one, where the budget (20 % of the request rate plus 10
//!   a second) binds.
//!
//! [`FleetMembership::request_ejection`]: palisade_core::peer::FleetMembership::request_ejection
//! [`Availability::Degraded`]: palisade_core::peer::Availability::Degraded
//!
//! # Shared state
//!
//! Clones of a [`CircuitBreaker`] share one breaker, and so does every service
//! one [`CircuitBreakerLayer`] value wraps: a framework that calls
//! `Layer::layer` again and again still gets one breaker that trips. Per-peer
//! state is explicit: [`CircuitBreakerLayer::for_peer`] makes a layer with a
//! fresh breaker for one peer, with the same configuration.
//!
//! # Keyed breakers
//!
//! [`KeyedCircuitBreakerLayer`] keeps one breaker per request key: the route
//! ([`ByRoute`]: gRPC method, or the *raw* http path, so for templated http
//! routes such as `/users/{id}` pass a closure to
//! [`key_fn`](KeyedCircuitBreakerLayer::key_fn) that returns the template) or
//! any [`KeyOf`], with per-key configuration. Requests without a key share
//! one unkeyed breaker. Build it with [`KeyedCircuitBreakerLayer::builder`],
//! which, like the plain builder, has no `build()` until a protocol is chosen.
//! The key trait and the map are `palisade-core`'s
//! ([`palisade_core::keyed`]), shared with the keyed bulkhead.
//!
//! The map is bounded by [`max_keys`](KeyedCircuitBreakerLayerBuilder::max_keys)
//! and only scanned when a new key arrives and it is full. Eviction never
//! lifts protection: only breakers that nobody holds (no call in flight, no
//! handle) and that are closed can go (or open ones idle for
//! [`idle_timeout`](KeyedCircuitBreakerLayerBuilder::idle_timeout) whose cooldown
//! has passed), idle ones first, else the least recently used. When nothing
//! can go, the new key shares the unkeyed breaker, and the map is not scanned
//! again for a second.
//!
//! # Handle
//!
//! A [`CircuitBreakerHandle`] reads the state and a [`CircuitSnapshot`] of the
//! counters, and controls the breaker: [`force_open`](CircuitBreakerHandle::force_open)
//! (every call refused until a reset, with `retry_in`
//! [`FORCED_OPEN_RETRY_IN`], one year, rather than `Duration::MAX`, so that
//! adding it to an `Instant` cannot overflow),
//! [`force_closed`](CircuitBreakerHandle::force_closed) ([`CircuitState::ForcedClosed`]: every call
//! passes and nothing is counted) and [`reset`](CircuitBreakerHandle::reset).
//!
//! # Events and metrics
//!
//! Every transition emits a `tracing` event and reaches the configured
//! [`Listener`]s with the peer (or key), `from`, `to`, a reason
//! (`consecutive failures`, `failure rate`, `slow call rate`, `cooldown
//! elapsed`, `probe failed`, `probes succeeded`, `forced open`, `forced
//! closed`, `reset`) and the cooldown that starts. State names are `closed`,
//! `open`, `half_open` and `forced_closed`; a forced-open breaker is reported `open`
//! with the reason `forced open`. Inside a balancer, a trip its ejection cap
//! refuses is reported `closed` -> `degraded` (`ejection cap reached: open
//! but kept`) and its end `degraded` -> `closed` (`trip condition cleared`). Each refused call emits a `rejected` event at
//! `DEBUG`. Listeners are called after the breaker's lock is released (so they
//! may call back into the breaker): two transitions made at nearly the same
//! time on two threads may reach them in either order. The handle's
//! [`snapshot`](CircuitBreakerHandle::snapshot) (with its `generation`) is the
//! authority on the current state.
//!
//! With the `metrics` feature: the counters
//! `palisade_circuit_breaker_transitions_total{peer,from,to}`,
//! `palisade_circuit_breaker_rejected_total{peer}`,
//! `palisade_circuit_breaker_kept_total{peer}` (trips a balancer's ejection
//! cap kept in rotation) and
//! `palisade_circuit_breaker_failures_total{peer}` (failures the breaker
//! counted: not the late results of an earlier state, nothing while forced
//! closed), and the gauge `palisade_circuit_breaker_state{peer}` (0 closed, 1
//! half-open, 2 open). The gauge is set under the breaker's lock, so it
//! always ends at the last transition's state. The handles are registered
//! once, when the breaker is built (a refused call or a failure then costs one
//! handle call, no lookup or allocation): as usual with the `metrics` facade,
//! install the recorder *before* building the breaker, or it will not see
//! them. (Transitions made by the handle, being rare operator actions, are
//! registered when they happen.)
//!
//! # Cost
//!
//! A closed breaker admits a call with one atomic load of a packed state word
//! (generation and state) and allocates nothing per call. The call's guard is
//! two words (the shared state and a packed ticket), so it moves through the
//! response future in registers. A success takes no lock when there are no
//! failures to forget and no rate policy; failures, rate-window updates and
//! half-open accounting take a short `parking_lot::Mutex` critical section,
//! never held across an `.await`. The one per-call shared-memory write is the
//! reference count of the guard that follows the response to its end. With
//! the slow-call policy, each call also reads the clock once at admission and
//! once at its end; its ticket then keeps the start time in microseconds
//! (durations are measured modulo about 12.7 days) and the low 21 bits of the
//! generation.
//!
//! [`failure_threshold`]: CircuitBreakerConfigBuilder::failure_threshold
//! [`failure_window`]: CircuitBreakerConfigBuilder::failure_window
//! [`failure_rate_threshold`]: CircuitBreakerConfigBuilder::failure_rate_threshold
//! [`min_requests`]: CircuitBreakerConfigBuilder::min_requests
//! [`rate_window`]: CircuitBreakerConfigBuilder::rate_window
//! [`rate_buckets`]: CircuitBreakerConfigBuilder::rate_buckets
//! [`slow_call_duration`]: CircuitBreakerConfigBuilder::slow_call_duration
//! [`slow_call_rate_threshold`]: CircuitBreakerConfigBuilder::slow_call_rate_threshold
//! [`half_open_max_probes`]: CircuitBreakerConfigBuilder::half_open_max_probes
//! [`success_threshold`]: CircuitBreakerConfigBuilder::success_threshold
//! [`max_cooldown`]: CircuitBreakerConfigBuilder::max_cooldown
//! [`jitter`]: CircuitBreakerConfigBuilder::jitter
//! [`probe_timeout`]: CircuitBreakerConfigBuilder::probe_timeout
//! [`Plain`]: palisade_core::protocol::Plain
//! [`Http`]: palisade_core::protocol::Http
//! [`Grpc`]: palisade_core::protocol::Grpc
//! [`Http::with_abandon_policy`]: palisade_core::protocol::Http::with_abandon_policy
//! [`Grpc::with_abandon_policy`]: palisade_core::protocol::Grpc::with_abandon_policy
//! [`AbandonPolicy`]: palisade_core::classify::AbandonPolicy
//! [`ProbeVerdict::AtEnd`]: palisade_core::classify::ProbeVerdict::AtEnd
//! [`ProbeVerdict::AtHead`]: palisade_core::classify::ProbeVerdict::AtHead
//! [`DeadlineExceeded`]: palisade_core::error::DeadlineExceeded
//! [`TimedOut`]: palisade_core::error::TimedOut
//! [`ClassifyExt`]: palisade_core::classify::ClassifyExt
//! [`CheckAvailability`]: palisade_core::peer::CheckAvailability
//! [`CheckAvailability::availability`]: palisade_core::peer::CheckAvailability::availability
//! [`Listener`]: palisade_core::event::Listener

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod config;
pub mod error;
mod future;
mod keyed;
mod layer;
mod policy;
mod service;
mod shared;
mod state;

pub use config::{CircuitBreakerConfig, CircuitBreakerConfigBuilder, ConsecutivePolicy, RatePolicy};
pub use error::{CircuitOpen, ConfigError};
pub use future::ResponseFuture;
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreakerLayer, CircuitBreakerLayerBuilder, KeyedCircuitBreakerLayerBuilder};
pub use palisade_core::keyed::{ByRoute, KeyFn, KeyOf};
pub use service::CircuitBreaker;
pub use shared::{CallGuard, CircuitBreakerHandle};
pub use state::{CircuitSnapshot, CircuitState, FORCED_OPEN_RETRY_IN};
