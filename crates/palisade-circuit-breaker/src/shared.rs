//! The state one breaker's services, handles and guards share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use palisade_body::Settle;
use palisade_core::classify::Outcome;
use palisade_core::error::CircuitOpen;
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, Memberships, PeerId};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::CircuitBreakerConfig;
use crate::state::{CircuitSnapshot, CircuitState, Machine, Refusal, Ticket, Transition};

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

// A call's ticket is one `u64`, so that a guard is two words (passed in
// registers, moved without stalls):
//
// - bit 0: the call is a half-open probe;
// - bits 1..3: what the call counts as if it is dropped before its response
//   (the protocol's `AbandonPolicy::call_dropped`: 0 ignored, 1 success, 2
//   failure), cleared when the response arrives; kept here rather than in the
//   response future, which then needs no drop logic of its own;
// - untimed breakers: bits 3.. hold the generation;
// - timed breakers (slow-call policy): bits 3..24 hold the low 21 bits of the
//   generation and bits 24..64 the call's start, in microseconds since the
//   breaker was made, modulo 2^40 (about 12.7 days). A stale result is then
//   mistaken for a current one only if a multiple of 2^21 transitions happened
//   while it was in flight, and a call's duration is measured modulo 12.7 days.
const PROBE_BIT: u64 = 1;
const CANCEL_SHIFT: u32 = 1;
const CANCEL_MASK: u64 = 0b11 << CANCEL_SHIFT;
/// A probe's cancel bits once its healthy head arrived and its body streams
/// (the value 3, which no call-dropped outcome uses; a dropped guard reads it
/// as ignored).
const STREAMING_BITS: u64 = 0b11 << CANCEL_SHIFT;
const GENERATION_SHIFT: u32 = 3;
const TIMED_GENERATION_MASK: u64 = (1 << 21) - 1;
const START_SHIFT: u32 = 24;
const START_MASK: u64 = (1 << 40) - 1;

/// The ticket bits of a call-dropped outcome.
#[inline]
const fn cancel_bits(outcome: Outcome) -> u64 {
    (match outcome {
        Outcome::Ignored => 0,
        Outcome::Success => 1,
        Outcome::Failure => 2,
    }) << CANCEL_SHIFT
}

/// The call-dropped outcome of a ticket.
fn cancelled(ticket: u64) -> Outcome {
    match (ticket & CANCEL_MASK) >> CANCEL_SHIFT {
        1 => Outcome::Success,
        2 => Outcome::Failure,
        _ => Outcome::Ignored,
    }
}

fn pack(generation: u64, state: CircuitState) -> u64 {
    (generation << TAG_BITS) | state.tag()
}

/// The words read on every call, on a cache line of their own (away from the
/// `Arc`'s reference counts).
#[repr(align(64))]
#[derive(Debug)]
struct Hot {
    /// `generation << 3 | state tag`: one load admits a call when closed.
    word: AtomicU64,
    /// A mirror of the consecutive failure count, so that a success on a
    /// breaker with no failures to forget takes no lock.
    consecutive: AtomicU32,
    /// Whether outcomes other than failures can skip the lock when closed
    /// (no rate policy, which must count every call).
    fast_success: bool,
    /// Whether calls are timed (the slow-call policy).
    timed: bool,
    /// A mirror of [`Machine::kept`]: closed but degraded ("open but kept"),
    /// read by [`Breaker::availability`] without the lock.
    kept: AtomicBool,
}

/// One circuit breaker: its state machine, the words every call reads
/// without the lock, its configuration and listeners. Shared (by `Arc`) by
/// the services, handles and call guards of that breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    hot: Hot,
    machine: Mutex<Machine>,
    /// The origin of call start times (the slow-call policy).
    origin: Instant,
    config: CircuitBreakerConfig,
    name: Option<PeerId>,
    key: Option<Arc<str>>,
    rejected: AtomicU64,
    /// The balancers this breaker reports its transitions to (and asks,
    /// through its machine, before a trip opens it).
    fleet: Arc<Memberships>,
    #[cfg(feature = "metrics")]
    metrics: Metrics,
}

/// The breaker's metric handles, registered once when the breaker is built
/// (with the recorder installed then), so that refusals and failures cost one
/// handle call and no allocation or registry lookup.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Metrics {
    /// The `peer` label.
    peer: String,
    rejected: metrics::Counter,
    failures: metrics::Counter,
    /// Trips its fleet refused (kept in rotation by the ejection cap).
    kept: metrics::Counter,
    state: metrics::Gauge,
    /// `transitions_total` for the transitions the breaker makes by itself,
    /// indexed like [`Metrics::AUTOMATIC`].
    transitions: [metrics::Counter; 4],
}

#[cfg(feature = "metrics")]
impl Metrics {
    /// The transitions a breaker makes by itself; the handle's (forced open,
    /// forced closed, reset) are operator actions, registered when they happen.
    const AUTOMATIC: [(CircuitState, CircuitState); 4] = [
        (CircuitState::Closed, CircuitState::Open),
        (CircuitState::Open, CircuitState::HalfOpen),
        (CircuitState::HalfOpen, CircuitState::Open),
        (CircuitState::HalfOpen, CircuitState::Closed),
    ];

    fn new(name: Option<&PeerId>) -> Self {
        let peer = name.map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned());
        let transitions = Self::AUTOMATIC.map(|(from, to)| Self::transition_counter(&peer, from, to));
        Self {
            rejected: metrics::counter!("palisade_circuit_breaker_rejected_total", "peer" => peer.clone()),
            failures: metrics::counter!("palisade_circuit_breaker_failures_total", "peer" => peer.clone()),
            kept: metrics::counter!("palisade_circuit_breaker_kept_total", "peer" => peer.clone()),
            state: metrics::gauge!("palisade_circuit_breaker_state", "peer" => peer.clone()),
            transitions,
            peer,
        }
    }

    fn transition_counter(peer: &str, from: CircuitState, to: CircuitState) -> metrics::Counter {
        metrics::counter!(
            "palisade_circuit_breaker_transitions_total",
            "peer" => peer.to_owned(),
            "from" => event_state(from),
            "to" => event_state(to)
        )
    }

    fn transition(&self, t: &Transition) {
        match Self::AUTOMATIC
            .iter()
            .position(|&(from, to)| (from, to) == (t.from, t.to))
        {
            Some(i) => self.transitions[i].increment(1),
            None => Self::transition_counter(&self.peer, t.from, t.to).increment(1),
        }
    }
}

impl Breaker {
    pub(crate) fn new(config: CircuitBreakerConfig, key: Option<Arc<str>>) -> Arc<Self> {
        let fleet = Arc::new(Memberships::new());
        let machine = Machine::new(&config, Instant::now()).with_fleet(Arc::clone(&fleet));
        let name = match (&config.peer, &key) {
            (Some(peer), Some(key)) => Some(PeerId::new(format!("{peer} {key}"))),
            (Some(peer), None) => Some(peer.clone()),
            (None, Some(key)) => Some(PeerId::new(key)),
            (None, None) => None,
        };
        #[cfg(feature = "metrics")]
        let metrics = Metrics::new(name.as_ref());
        let shared = Arc::new(Self {
            hot: Hot {
                word: AtomicU64::new(pack(machine.generation(), machine.state())),
                consecutive: AtomicU32::new(0),
                fast_success: config.rate.is_none(),
                timed: config.rate.is_some_and(|r| r.slow_call.is_some()),
                kept: AtomicBool::new(false),
            },
            machine: Mutex::new(machine),
            origin: Instant::now(),
            config,
            name,
            key,
            rejected: AtomicU64::new(0),
            fleet,
            #[cfg(feature = "metrics")]
            metrics,
        });
        #[cfg(feature = "metrics")]
        shared.metrics.state.set(CircuitState::Closed.gauge());
        shared
    }

    pub(crate) fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    pub(crate) fn name(&self) -> Option<&PeerId> {
        self.name.as_ref()
    }

    /// Admits a call, or says why not. One atomic load when closed.
    /// `cancelled` is what the call counts as if it is dropped before its
    /// response.
    #[inline]
    pub(crate) fn acquire(self: &Arc<Self>, cancelled: Outcome) -> Result<CallGuard, CircuitOpen> {
        let word = self.hot.word.load(Ordering::Acquire);
        let tag = word & TAG_MASK;
        if tag == CircuitState::Closed.tag() || tag == CircuitState::ForcedClosed.tag() {
            let ticket = if self.hot.timed && tag == CircuitState::Closed.tag() {
                self.pack_ticket(word >> TAG_BITS, false, Some(Instant::now()))
            } else {
                (word >> TAG_BITS) << GENERATION_SHIFT
            };
            return Ok(CallGuard {
                shared: Some(Arc::clone(self)),
                ticket: ticket | cancel_bits(cancelled),
            });
        }
        self.acquire_slow(cancelled)
    }

    #[cold]
    fn acquire_slow(self: &Arc<Self>, cancelled: Outcome) -> Result<CallGuard, CircuitOpen> {
        let now = Instant::now();
        let result = self.with_machine(|m, now| m.admit(&self.config, now), now);
        match result {
            Ok(ticket) => Ok(CallGuard {
                shared: Some(Arc::clone(self)),
                ticket: self.pack_ticket(ticket.generation, ticket.probe, Some(now)) | cancel_bits(cancelled),
            }),
            Err(refusal) => Err(self.reject(refusal)),
        }
    }

    /// Microseconds since `origin`.
    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Packs a ticket (see the layout above).
    #[inline]
    fn pack_ticket(&self, generation: u64, probe: bool, now: Option<Instant>) -> u64 {
        match now {
            Some(now) if self.hot.timed => {
                ((self.micros(now) & START_MASK) << START_SHIFT)
                    | ((generation & TIMED_GENERATION_MASK) << GENERATION_SHIFT)
                    | u64::from(probe)
            }
            _ => (generation << GENERATION_SHIFT) | u64::from(probe),
        }
    }

    /// Unpacks a ticket, and the call's duration when it was timed.
    fn unpack_ticket(&self, ticket: u64, now: Instant) -> (Ticket, Option<Duration>) {
        let probe = ticket & PROBE_BIT == PROBE_BIT;
        let streaming = probe && ticket & CANCEL_MASK == STREAMING_BITS;
        if self.hot.timed {
            let start = (ticket >> START_SHIFT) & START_MASK;
            let elapsed = self.micros(now).wrapping_sub(start) & START_MASK;
            let ticket = Ticket {
                generation: (ticket >> GENERATION_SHIFT) & TIMED_GENERATION_MASK,
                generation_mask: TIMED_GENERATION_MASK,
                probe,
                streaming,
            };
            (ticket, (!probe).then(|| Duration::from_micros(elapsed)))
        } else {
            let ticket = Ticket {
                generation: ticket >> GENERATION_SHIFT,
                generation_mask: u64::MAX >> GENERATION_SHIFT,
                probe,
                streaming,
            };
            (ticket, None)
        }
    }

    fn reject(&self, refusal: Refusal) -> CircuitOpen {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.config.listeners.emit(
            &Event::new(
                LayerName::CircuitBreaker,
                EventKind::Rejected {
                    reason: match refusal.reason {
                        palisade_core::peer::Unavailable::ProbesBusy => "probe slots busy",
                        _ => "circuit open",
                    },
                },
            )
            .peer(self.name.as_ref())
            .key(self.key.as_deref()),
        );
        #[cfg(feature = "metrics")]
        self.metrics.rejected.increment(1);
        CircuitOpen::new(self.name.clone(), refusal.retry_in)
    }

    fn on_result(&self, ticket: u64, outcome: Outcome) {
        let probe = ticket & PROBE_BIT == PROBE_BIT;
        if !probe && self.hot.fast_success {
            match outcome {
                Outcome::Ignored => return,
                // Nothing to forget: no lock. A failure racing with this
                // success is simply ordered after it.
                Outcome::Success if self.hot.consecutive.load(Ordering::Relaxed) == 0 => return,
                _ => {}
            }
        } else if !probe && outcome == Outcome::Ignored {
            return;
        }
        if !probe && self.hot.word.load(Ordering::Relaxed) & TAG_MASK == CircuitState::ForcedClosed.tag() {
            // Forced closed: nothing is counted (and a call admitted before
            // the breaker was forced closed belongs to an earlier generation).
            return;
        }
        let now = Instant::now();
        let (ticket, elapsed) = self.unpack_ticket(ticket, now);
        let counted = self.with_machine(
            |m, now| {
                let recorded = m.record(&self.config, ticket, outcome, elapsed, now);
                (recorded.counted, recorded.transition)
            },
            now,
        );
        // Only failures the breaker counted: not stale generations, not
        // while forced closed.
        #[cfg(feature = "metrics")]
        if counted && outcome == Outcome::Failure {
            self.metrics.failures.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = counted;
    }

    /// A probe's healthy head arrived and its body streams (see
    /// [`Machine::mark_streaming`](crate::state::Machine::mark_streaming)).
    #[cold]
    fn mark_streaming(&self, ticket: u64) {
        let now = Instant::now();
        let (ticket, _) = self.unpack_ticket(ticket, now);
        self.with_machine(
            |m, _| {
                m.mark_streaming(ticket);
                ((), None)
            },
            now,
        );
    }

    /// A guard dropped unsettled: the call's dropped-call outcome if it was
    /// dropped before its response (else ignored), and a probe's slot back.
    fn on_drop(&self, ticket: u64) {
        if ticket & (PROBE_BIT | CANCEL_MASK) != 0 {
            self.on_result(ticket, cancelled(ticket));
        }
    }

    fn sync(&self, machine: &Machine) {
        self.hot
            .word
            .store(pack(machine.generation(), machine.state()), Ordering::Release);
        self.hot.consecutive.store(machine.consecutive(), Ordering::Relaxed);
        self.hot.kept.store(machine.kept(), Ordering::Relaxed);
    }

    fn emit(&self, t: Transition) {
        self.config.listeners.emit(
            &Event::new(
                LayerName::CircuitBreaker,
                EventKind::StateChange {
                    from: event_state(t.from),
                    to: event_state(t.to),
                    reason: t.reason,
                    cooldown: t.cooldown,
                },
            )
            .peer(self.name.as_ref())
            .key(self.key.as_deref()),
        );
        #[cfg(feature = "metrics")]
        self.metrics.transition(&t);
    }

    /// Runs `f` on the machine under its lock, publishes the new state word,
    /// and reports the transition `f` made, if any, once the lock is released.
    ///
    /// The state gauge is set *under* the lock, from the state the machine is
    /// left in, so that the gauge always ends at the last transition's state.
    /// Listeners (user code, which may call back into the breaker) are called
    /// after the lock is released: two transitions made at nearly the same
    /// time by two threads may reach them in either order.
    ///
    /// The balancers the breaker belongs to ([`CheckAvailability::join_fleet`])
    /// are told the availability the transition left, after the listeners and
    /// outside the lock too, so that a balancer never waits on a breaker's
    /// lock while holding its own, nor the other way round. (The one
    /// question asked of them under the lock, whether a trip may open the
    /// breaker, touches only their atomics.)
    fn with_machine<R>(&self, f: impl FnOnce(&mut Machine, Instant) -> (R, Option<Transition>), now: Instant) -> R {
        let (r, t, kept, after) = {
            let mut machine = self.machine.lock();
            let (r, t) = f(&mut machine, now);
            self.sync(&machine);
            #[cfg(feature = "metrics")]
            if t.is_some() {
                self.metrics.state.set(machine.state().gauge());
            }
            // A transition, a probe slot that came back while the breaker
            // stays half-open (no event: the state did not change), or the
            // breaker kept in rotation by its fleet (or no longer).
            let freed = machine.take_slot_freed();
            let kept_changed = machine.take_kept_changed();
            let kept = (kept_changed && t.is_none()).then(|| machine.kept());
            let after = (t.is_some() || freed || kept_changed).then(|| machine.peek(&self.config, now));
            (r, t, kept, after)
        };
        if let Some(t) = t {
            self.emit(t);
        }
        if let Some(kept) = kept {
            self.emit_kept(kept);
        }
        if let Some(availability) = after {
            self.fleet.notify(availability);
        }
        r
    }

    /// The event of a trip its fleet refused (`closed` to `degraded`: open
    /// but kept), or of a kept breaker whose trip condition cleared
    /// (`degraded` to `closed`). Not a change of [`CircuitState`] (the
    /// breaker stays closed, its generation unchanged), but of what it tells
    /// its balancers.
    fn emit_kept(&self, kept: bool) {
        let (from, to, reason) = if kept {
            ("closed", "degraded", "ejection cap reached: open but kept")
        } else {
            ("degraded", "closed", "trip condition cleared")
        };
        self.config.listeners.emit(
            &Event::new(
                LayerName::CircuitBreaker,
                EventKind::StateChange {
                    from,
                    to,
                    reason,
                    cooldown: None,
                },
            )
            .peer(self.name.as_ref())
            .key(self.key.as_deref()),
        );
        #[cfg(feature = "metrics")]
        if kept {
            self.metrics.kept.increment(1);
        }
    }

    pub(crate) fn availability(&self) -> Availability {
        let word = self.hot.word.load(Ordering::Acquire);
        let tag = word & TAG_MASK;
        if tag == CircuitState::Closed.tag() {
            return if self.hot.kept.load(Ordering::Relaxed) {
                Availability::Degraded
            } else {
                Availability::Available
            };
        }
        if tag == CircuitState::ForcedClosed.tag() {
            return Availability::Available;
        }
        self.with_machine(|m, now| m.availability(&self.config, now), Instant::now())
    }

    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_tag(self.hot.word.load(Ordering::Acquire) & TAG_MASK)
    }

    pub(crate) fn snapshot(&self) -> CircuitSnapshot {
        let now = Instant::now();
        self.machine.lock().snapshot(now)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn force_open(&self) {
        self.with_machine(|m, _| ((), Some(m.force_open())), Instant::now());
    }

    pub(crate) fn force_closed(&self) {
        self.with_machine(|m, _| ((), Some(m.force_closed())), Instant::now());
    }

    pub(crate) fn reset(&self) {
        self.with_machine(|m, now| ((), Some(m.reset(now))), Instant::now());
    }

    /// Reports every later transition to `membership` (see
    /// [`CheckAvailability::join_fleet`]). Joining twice with one membership
    /// reports once.
    pub(crate) fn join_fleet(&self, membership: FleetMembership) -> bool {
        self.fleet.join(membership);
        true
    }

    /// See [`Machine::probe_early`].
    pub(crate) fn request_probe(&self) -> bool {
        self.with_machine(|m, now| m.probe_early(&self.config, now), Instant::now())
    }

    /// See [`Machine::reset_open`].
    pub(crate) fn reset_open(&self) -> bool {
        self.with_machine(|m, now| m.reset_open(now), Instant::now())
    }
}

/// The event name of a state: the core's conventions name an opened breaker `open`.
fn event_state(state: CircuitState) -> &'static str {
    match state {
        CircuitState::ForcedOpen => "open",
        other => other.as_str(),
    }
}

/// Held by one admitted call until its outcome is known.
///
/// Settled (by [`palisade_body::track()`]) with the outcome, which it records
/// against the generation the call was admitted under; dropped unsettled (the
/// caller dropped the future or the body, or the inner service panicked) it
/// gives back its probe slot, if it holds one, and records nothing, unless it
/// was dropped before the response arrived and the protocol's
/// [`AbandonPolicy::call_dropped`](palisade_core::classify::AbandonPolicy::call_dropped)
/// says otherwise.
#[derive(Debug)]
pub struct CallGuard {
    /// `None` once settled (or for a spent placeholder).
    shared: Option<Arc<Breaker>>,
    /// The packed ticket: generation, probe bit, start time when timed.
    ticket: u64,
}

impl CallGuard {
    /// Whether this call is a half-open probe.
    pub(crate) fn is_probe(&self) -> bool {
        self.ticket & PROBE_BIT == PROBE_BIT
    }

    /// A guard that holds nothing, left behind when a future hands its guard on.
    pub(crate) const SPENT: CallGuard = CallGuard {
        shared: None,
        ticket: 0,
    };

    /// Whether this guard holds nothing.
    #[inline]
    pub(crate) fn is_spent(&self) -> bool {
        self.shared.is_none()
    }

    /// The response (or the inner error) arrived: the call can no longer be
    /// dropped before it.
    #[inline]
    pub(crate) fn response_arrived(&mut self) {
        self.ticket &= !CANCEL_MASK;
    }

    /// A probe's head was healthy and its body now streams: should it still
    /// stream when `probe_timeout` passes, it counts as a success then.
    pub(crate) fn mark_streaming(&mut self) {
        if let Some(shared) = &self.shared
            && self.is_probe()
        {
            self.ticket |= STREAMING_BITS;
            shared.mark_streaming(self.ticket);
        }
    }
}

impl Settle for CallGuard {
    #[inline]
    fn settle(mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            shared.on_result(self.ticket, outcome);
        }
    }
}

impl Drop for CallGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.on_drop(self.ticket);
        }
    }
}

/// Reads and controls one breaker. Cheap to clone; every clone, and every
/// service of the breaker, sees the same state.
#[derive(Clone, Debug)]
pub struct CircuitBreakerHandle {
    pub(crate) shared: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    /// The state as last decided. An open breaker whose cooldown has passed
    /// stays `Open` here until a call arrives or
    /// [`availability`](CheckAvailability::availability) is asked.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// The state and the counters behind it.
    pub fn snapshot(&self) -> CircuitSnapshot {
        self.shared.snapshot()
    }

    /// How many calls the breaker has refused.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected()
    }

    /// The peer (or key) the breaker guards.
    pub fn peer(&self) -> Option<&PeerId> {
        self.shared.name()
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        self.shared.config()
    }

    /// Opens the breaker until [`reset`](Self::reset): every call is refused.
    pub fn force_open(&self) {
        self.shared.force_open();
    }

    /// Disables the breaker until [`reset`](Self::reset): every call passes
    /// and no outcome is counted.
    pub fn force_closed(&self) {
        self.shared.force_closed();
    }

    /// Closes the breaker with fresh counters and the base cooldown. Results of
    /// calls admitted before the reset are ignored.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The time until the next probe, when open ([`FORCED_OPEN_RETRY_IN`](crate::FORCED_OPEN_RETRY_IN)
    /// when forced open).
    pub fn retry_in(&self) -> Option<Duration> {
        match self.snapshot() {
            s if s.state == CircuitState::ForcedOpen => Some(crate::state::FORCED_OPEN_RETRY_IN),
            s => s.retry_in,
        }
    }
}

impl CheckAvailability for CircuitBreakerHandle {
    fn availability(&self) -> Availability {
        self.shared.availability()
    }

    fn join_fleet(&self, membership: FleetMembership) -> bool {
        self.shared.join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        self.shared.request_probe()
    }

    fn reset_open(&self) -> bool {
        self.shared.reset_open()
    }
}

impl palisade_core::keyed::Evictable for Breaker {
    /// Whether a keyed map may forget this breaker without lifting any
    /// protection: closed, or (when `idle`) open with its cooldown passed.
    fn evictable(&self, idle: bool) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open if idle => self.machine.lock().cooled_down(Instant::now()),
            _ => false,
        }
    }
}
