//! The breaker's state machine, free of atomics and of the service: every
//! method takes the current time, so it is driven the same way by the
//! service, the handle, the tests and the reference-model proptest.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::classify::Outcome;
use palisade_core::peer::{Availability, Memberships, Unavailable};
use tokio::time::Instant;

use crate::config::{CircuitBreakerConfig, RatePolicy};
use crate::policy::Window;

/// The `retry_in` a forced-open breaker reports (in [`CircuitOpen`](crate::CircuitOpen)
/// and [`Availability`]): one year. A forced-open breaker stays open until a
/// reset, however long that is; this stands for "not by itself" while staying
/// safe to add to an `Instant` (which `Duration::MAX` is not) and readable in
/// messages.
pub const FORCED_OPEN_RETRY_IN: Duration = Duration::from_secs(365 * 86_400);

/// The state of a breaker, as a handle reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are refused until the cooldown has passed.
    Open,
    /// A few probe calls pass; their outcomes decide whether to close or reopen.
    HalfOpen,
    /// Forced open by a handle: every call is refused until a reset.
    ForcedOpen,
    /// Forced closed by a handle ([`force_closed`](crate::CircuitBreakerHandle::force_closed)):
    /// every call passes and nothing is counted until a reset.
    ForcedClosed,
}

impl CircuitState {
    /// A short lowercase name, as used in events: `closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::ForcedClosed => "forced_closed",
        }
    }

    /// The value of the `palisade_circuit_breaker_state` gauge: 0 closed (or
    /// forced closed), 1 half-open, 2 open (or forced open).
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed | CircuitState::ForcedClosed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open | CircuitState::ForcedOpen => 2.0,
        }
    }

    pub(crate) fn tag(self) -> u64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::ForcedClosed => 1,
            CircuitState::Open => 2,
            CircuitState::HalfOpen => 3,
            CircuitState::ForcedOpen => 4,
        }
    }

    pub(crate) fn from_tag(tag: u64) -> Self {
        match tag {
            0 => CircuitState::Closed,
            1 => CircuitState::ForcedClosed,
            2 => CircuitState::Open,
            3 => CircuitState::HalfOpen,
            _ => CircuitState::ForcedOpen,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
        /// Probes in flight whose head was healthy and whose body still
        /// streams: at `probe_timeout` they count as successes.
        streaming: u32,
        last_admit: Instant,
    },
    ForcedOpen,
    ForcedClosed,
}

/// A call's admission: the generation it was admitted under, and whether it is a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The generation, or its low bits (see `generation_mask`).
    pub(crate) generation: u64,
    /// Which bits of the generation the ticket kept: all of them, except in
    /// the compact tickets of timed calls.
    pub(crate) generation_mask: u64,
    pub(crate) probe: bool,
    /// A probe whose healthy head was reported ([`Machine::mark_streaming`]).
    pub(crate) streaming: bool,
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Unavailable,
    pub(crate) retry_in: Duration,
}

/// A state change, reported as an event once the lock is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: &'static str,
    pub(crate) cooldown: Option<Duration>,
}

/// What recording an outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Whether the outcome was counted: the ticket is of the current
    /// generation and the outcome is not ignored.
    pub(crate) counted: bool,
    /// The transition it caused, if any.
    pub(crate) transition: Option<Transition>,
}

impl Recorded {
    const NOTHING: Recorded = Recorded {
        counted: false,
        transition: None,
    };

    fn counted(transition: Option<Transition>) -> Self {
        Recorded {
            counted: true,
            transition,
        }
    }
}

/// What a handle reads: the state and the counters behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitSnapshot {
    /// The state.
    pub state: CircuitState,
    /// Failures in the current consecutive run.
    pub consecutive_failures: u32,
    /// Calls in the failure-rate window (0 without that policy).
    pub window_calls: u32,
    /// Failures in the window.
    pub window_failures: u32,
    /// Slow calls in the window.
    pub window_slow_calls: u32,
    /// Probes in flight (half-open only).
    pub probes_in_flight: u32,
    /// Probe successes so far in this half-open round.
    pub probe_successes: u32,
    /// The cooldown running (open) or last used.
    pub cooldown: Option<Duration>,
    /// How long until the next probe is allowed, when open.
    pub retry_in: Option<Duration>,
    /// Failed half-open rounds since the breaker last closed.
    pub failed_rounds: u32,
    /// How many times the breaker has opened (trips and failed probes).
    pub times_opened: u64,
    /// The generation: bumped on every transition.
    pub generation: u64,
    /// "Open but kept": closed, because its trip condition held but the
    /// fleet it belongs to refused to let it leave rotation (the
    /// balancer's ejection cap). It keeps counting, reports itself
    /// [`Availability::Degraded`], and asks again on its next trip.
    pub kept_in_rotation: bool,
}

/// The breaker's state machine.
#[derive(Debug)]
pub(crate) struct Machine {
    phase: Phase,
    generation: u64,
    consecutive: u32,
    last_failure: Option<Instant>,
    window: Option<Window>,
    failed_rounds: u32,
    cooldown: Option<Duration>,
    times_opened: u64,
    /// A probe slot came back while the breaker stays half-open (a result
    /// short of closing it, or slots reclaimed): balancers are told, though
    /// the state did not change. Taken by [`Machine::take_slot_freed`].
    slot_freed: bool,
    /// Closed but "open but kept": the trip condition held and the fleet
    /// refused the ejection. Cleared by the next counted outcome that does
    /// not trip, and by every transition.
    kept: bool,
    /// `kept` changed since [`Machine::take_kept_changed`] last looked.
    kept_changed: bool,
    /// Whether the breaker holds an ejection grant of its fleet: from a trip
    /// its fleet granted until it is closed (or forced) again.
    ejected: bool,
    /// The balancers the breaker belongs to, asked before a trip opens it.
    fleet: Arc<Memberships>,
}

impl Machine {
    pub(crate) fn new(config: &CircuitBreakerConfig, now: Instant) -> Self {
        Self {
            phase: Phase::Closed,
            generation: 0,
            consecutive: 0,
            last_failure: None,
            window: config.rate.as_ref().map(|r| Window::new(r, now)),
            failed_rounds: 0,
            cooldown: None,
            times_opened: 0,
            slot_freed: false,
            kept: false,
            kept_changed: false,
            ejected: false,
            fleet: Arc::default(),
        }
    }

    /// The balancers to ask before a trip opens the breaker (the
    /// breaker's memberships, shared with the service that reports to them).
    pub(crate) fn with_fleet(mut self, fleet: Arc<Memberships>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Whether the breaker is "open but kept" (see [`CircuitSnapshot::kept_in_rotation`]).
    pub(crate) fn kept(&self) -> bool {
        self.kept
    }

    /// Whether [`Machine::kept`] changed since the last call; clears the flag.
    pub(crate) fn take_kept_changed(&mut self) -> bool {
        std::mem::take(&mut self.kept_changed)
    }

    fn set_kept(&mut self, kept: bool) {
        if self.kept != kept {
            self.kept = kept;
            self.kept_changed = true;
        }
    }

    /// A trip decided while closed: opens the breaker, unless a fleet it
    /// belongs to refuses the ejection (its balancer's cap on how many peers
    /// may be out at once). Then it stays closed, kept in rotation and
    /// degraded; its counts stand, so its next failure asks again.
    fn trip(&mut self, config: &CircuitBreakerConfig, now: Instant, reason: &'static str) -> Option<Transition> {
        if !self.fleet.request_ejection() {
            self.set_kept(true);
            return None;
        }
        self.ejected = true;
        Some(self.open(config, now, reason))
    }

    /// What every transition does beyond the phase: a kept breaker is no
    /// longer kept, and an ejection grant goes back once the breaker is
    /// neither open nor half-open after its trip (closed, reset, forced: an
    /// operator's forced open is not the balancer's to count).
    fn after_transition(&mut self) {
        self.set_kept(false);
        if self.ejected && !matches!(self.phase, Phase::Open { .. } | Phase::HalfOpen { .. }) {
            self.ejected = false;
            self.fleet.release_ejection();
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
            Phase::ForcedOpen => CircuitState::ForcedOpen,
            Phase::ForcedClosed => CircuitState::ForcedClosed,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn consecutive(&self) -> u32 {
        self.consecutive
    }

    pub(crate) fn snapshot(&self, now: Instant) -> CircuitSnapshot {
        let (calls, failures, slow) = self.window.as_ref().map_or((0, 0, 0), |w| w.totals(now));
        let (probes_in_flight, probe_successes) = match self.phase {
            Phase::HalfOpen {
                in_flight, successes, ..
            } => (in_flight, successes),
            _ => (0, 0),
        };
        CircuitSnapshot {
            state: self.state(),
            consecutive_failures: self.consecutive,
            window_calls: calls,
            window_failures: failures,
            window_slow_calls: slow,
            probes_in_flight,
            probe_successes,
            cooldown: self.cooldown,
            retry_in: match self.phase {
                Phase::Open { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            },
            failed_rounds: self.failed_rounds,
            times_opened: self.times_opened,
            generation: self.generation,
            kept_in_rotation: self.kept,
        }
    }

    /// Whether a probe slot came back since the last call, the breaker
    /// staying half-open; clears the flag.
    pub(crate) fn take_slot_freed(&mut self) -> bool {
        std::mem::take(&mut self.slot_freed)
    }

    /// Whether the breaker is open and its cooldown has passed.
    pub(crate) fn cooled_down(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Open { until } if now >= until)
    }

    fn set(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }

    fn transition(&mut self, phase: Phase, reason: &'static str) -> Transition {
        let from = self.state();
        self.set(phase);
        self.after_transition();
        let cooldown = match phase {
            Phase::Open { .. } => self.cooldown,
            _ => None,
        };
        Transition {
            from,
            to: self.state(),
            reason,
            cooldown,
        }
    }

    fn open(&mut self, config: &CircuitBreakerConfig, now: Instant, reason: &'static str) -> Transition {
        let previous = if self.failed_rounds == 0 { None } else { self.cooldown };
        let cooldown = config
            .backoff
            .delay(self.failed_rounds, previous)
            .max(config.cooldown_floor());
        self.cooldown = Some(cooldown);
        self.times_opened += 1;
        self.consecutive = 0;
        self.last_failure = None;
        let until = palisade_core::time::after(now, cooldown);
        self.transition(Phase::Open { until }, reason)
    }

    fn close(&mut self, now: Instant, reason: &'static str) -> Transition {
        self.failed_rounds = 0;
        self.consecutive = 0;
        self.last_failure = None;
        if let Some(w) = &mut self.window {
            w.clear(now);
        }
        self.transition(Phase::Closed, reason)
    }

    /// Moves an open breaker whose cooldown has passed to half-open, and
    /// reclaims the probe slots of a half-open breaker whose probes are overdue.
    fn advance(&mut self, config: &CircuitBreakerConfig, now: Instant) -> Option<Transition> {
        match self.phase {
            Phase::Open { until } if now >= until => Some(self.transition(
                Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                    streaming: 0,
                    last_admit: now,
                },
                "cooldown elapsed",
            )),
            Phase::HalfOpen {
                in_flight,
                successes,
                streaming,
                last_admit,
            } if in_flight >= config.half_open_max_probes
                && now.saturating_duration_since(last_admit) >= config.probe_timeout =>
            {
                // The probes never reported. Those whose head was healthy and
                // whose body still streams are successes now (a long healthy
                // stream must not hold the breaker half-open, nor count as a
                // failure); the others are nothing. Either way their slots
                // come back under a new generation, so that their late
                // results are ignored.
                tracing::debug!(
                    target: "palisade",
                    layer = "circuit_breaker",
                    peer = %config.peer.as_ref().map_or("-", |p| p.as_str()),
                    event = "probes_reclaimed",
                    in_flight,
                    streaming,
                    "probe slots reclaimed after probe_timeout; healthy streams count as successes"
                );
                let successes = successes.saturating_add(streaming);
                if streaming > 0 && successes >= config.success_threshold {
                    return Some(self.close(now, "probes streamed healthily past probe_timeout"));
                }
                self.set(Phase::HalfOpen {
                    in_flight: 0,
                    successes,
                    streaming: 0,
                    last_admit: now,
                });
                self.slot_freed = true;
                None
            }
            _ => None,
        }
    }

    /// Admits a call or refuses it; may move open to half-open first.
    pub(crate) fn admit(
        &mut self,
        config: &CircuitBreakerConfig,
        now: Instant,
    ) -> (Result<Ticket, Refusal>, Option<Transition>) {
        let transition = self.advance(config, now);
        let result = match &mut self.phase {
            Phase::Closed | Phase::ForcedClosed => Ok(Ticket {
                generation: self.generation,
                generation_mask: u64::MAX,
                probe: false,
                streaming: false,
            }),
            Phase::Open { until } => Err(Refusal {
                reason: Unavailable::Open,
                retry_in: until.saturating_duration_since(now),
            }),
            Phase::ForcedOpen => Err(Refusal {
                reason: Unavailable::Open,
                retry_in: FORCED_OPEN_RETRY_IN,
            }),
            Phase::HalfOpen {
                in_flight, last_admit, ..
            } => {
                if *in_flight < config.half_open_max_probes {
                    *in_flight += 1;
                    *last_admit = now;
                    Ok(Ticket {
                        generation: self.generation,
                        generation_mask: u64::MAX,
                        probe: true,
                        streaming: false,
                    })
                } else {
                    Err(Refusal {
                        reason: Unavailable::ProbesBusy,
                        retry_in: Duration::ZERO,
                    })
                }
            }
        };
        (result, transition)
    }

    /// Whether a call would be admitted now; may move open to half-open.
    pub(crate) fn availability(
        &mut self,
        config: &CircuitBreakerConfig,
        now: Instant,
    ) -> (Availability, Option<Transition>) {
        let transition = self.advance(config, now);
        (self.peek(config, now), transition)
    }

    /// Whether a call would be admitted now, without moving the state: what a
    /// balancer is told after a transition.
    pub(crate) fn peek(&self, config: &CircuitBreakerConfig, now: Instant) -> Availability {
        match self.phase {
            Phase::Closed if self.kept => Availability::Degraded,
            Phase::Closed | Phase::ForcedClosed => Availability::Available,
            Phase::Open { until } => Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in: until.saturating_duration_since(now),
            },
            Phase::ForcedOpen => Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in: FORCED_OPEN_RETRY_IN,
            },
            Phase::HalfOpen { in_flight, .. } => {
                if in_flight < config.half_open_max_probes {
                    Availability::Probe
                } else {
                    Availability::Unavailable {
                        reason: Unavailable::ProbesBusy,
                        retry_in: Duration::ZERO,
                    }
                }
            }
        }
    }

    /// An early probe, asked by a balancer whose peers are all open: an open
    /// breaker moves to half-open now, without waiting for its cooldown.
    /// Returns whether a call would be admitted now (a free probe slot, or
    /// closed). A breaker forced open refuses: an operator's choice is not
    /// the balancer's to undo.
    pub(crate) fn probe_early(&mut self, config: &CircuitBreakerConfig, now: Instant) -> (bool, Option<Transition>) {
        let transition = match self.phase {
            Phase::Open { .. } => Some(self.transition(
                Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                    streaming: 0,
                    last_admit: now,
                },
                "early probe requested",
            )),
            _ => self.advance(config, now),
        };
        (self.peek(config, now).is_available(), transition)
    }

    /// A reset asked by a balancer whose peers are all open: an open or
    /// half-open breaker closes with fresh counters and its base cooldown.
    /// Returns whether calls pass now. A breaker forced open refuses.
    pub(crate) fn reset_open(&mut self, now: Instant) -> (bool, Option<Transition>) {
        match self.phase {
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                self.cooldown = None;
                (true, Some(self.close(now, "reset requested")))
            }
            Phase::Closed | Phase::ForcedClosed => (true, None),
            Phase::ForcedOpen => (false, None),
        }
    }

    /// A probe admitted with `ticket` got a healthy head and its body now
    /// streams: should it still stream at `probe_timeout`, it counts as a
    /// success then. A ticket from an earlier generation changes nothing.
    pub(crate) fn mark_streaming(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation & ticket.generation_mask || !ticket.probe {
            return;
        }
        if let Phase::HalfOpen { streaming, .. } = &mut self.phase {
            *streaming = streaming.saturating_add(1);
        }
    }

    /// Records the outcome of a call admitted with `ticket`. `elapsed` is the
    /// call's duration when the slow-call policy needs it. A ticket from an
    /// earlier generation changes nothing.
    pub(crate) fn record(
        &mut self,
        config: &CircuitBreakerConfig,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Option<Duration>,
        now: Instant,
    ) -> Recorded {
        if ticket.generation != self.generation & ticket.generation_mask {
            return Recorded::NOTHING;
        }
        match &mut self.phase {
            Phase::HalfOpen {
                in_flight,
                successes,
                streaming,
                ..
            } if ticket.probe => {
                *in_flight = in_flight.saturating_sub(1);
                if ticket.streaming {
                    *streaming = streaming.saturating_sub(1);
                }
                match outcome {
                    Outcome::Ignored => {
                        self.slot_freed = true;
                        Recorded::NOTHING
                    }
                    Outcome::Success => {
                        *successes += 1;
                        Recorded::counted(if *successes >= config.success_threshold {
                            Some(self.close(now, "probes succeeded"))
                        } else {
                            self.slot_freed = true;
                            None
                        })
                    }
                    Outcome::Failure => {
                        self.failed_rounds = self.failed_rounds.saturating_add(1);
                        Recorded::counted(Some(self.open(config, now, "probe failed")))
                    }
                }
            }
            Phase::Closed if !ticket.probe && outcome != Outcome::Ignored => {
                Recorded::counted(self.record_closed(config, outcome, elapsed, now))
            }
            _ => Recorded::NOTHING,
        }
    }

    fn record_closed(
        &mut self,
        config: &CircuitBreakerConfig,
        outcome: Outcome,
        elapsed: Option<Duration>,
        now: Instant,
    ) -> Option<Transition> {
        let failed = match outcome {
            Outcome::Ignored => return None,
            Outcome::Success => {
                self.consecutive = 0;
                false
            }
            Outcome::Failure => true,
        };
        let mut trip = None;
        if failed && let Some(policy) = &config.consecutive {
            let continues = self
                .last_failure
                .is_some_and(|last| now.saturating_duration_since(last) < policy.failure_window);
            self.consecutive = if continues {
                self.consecutive.saturating_add(1)
            } else {
                1
            };
            self.last_failure = Some(now);
            if self.consecutive >= policy.failure_threshold {
                trip = Some("consecutive failures");
            }
        }
        if let (Some(window), Some(policy)) = (&mut self.window, &config.rate) {
            let slow = match (policy.slow_call, elapsed) {
                (Some((limit, _)), Some(elapsed)) => elapsed > limit,
                _ => false,
            };
            window.record(now, failed, slow);
            if trip.is_none() {
                trip = rate_trips(policy, window.totals(now));
            }
        }
        match trip {
            Some(reason) => self.trip(config, now, reason),
            None => {
                // The trip condition no longer holds: a kept breaker is back
                // to plain closed.
                self.set_kept(false);
                None
            }
        }
    }

    /// Forces the breaker open until a reset.
    pub(crate) fn force_open(&mut self) -> Transition {
        self.transition(Phase::ForcedOpen, "forced open")
    }

    /// Forces the breaker closed until a reset.
    pub(crate) fn force_closed(&mut self) -> Transition {
        self.transition(Phase::ForcedClosed, "forced closed")
    }

    /// Back to closed with fresh counters and the base cooldown.
    pub(crate) fn reset(&mut self, now: Instant) -> Transition {
        self.cooldown = None;
        self.close(now, "reset")
    }
}

fn rate_trips(policy: &RatePolicy, (calls, failures, slow): (u32, u32, u32)) -> Option<&'static str> {
    if calls < policy.min_requests || calls == 0 {
        return None;
    }
    let calls = f64::from(calls);
    if let Some(threshold) = policy.failure_rate_threshold
        && f64::from(failures) / calls >= threshold
    {
        return Some("failure rate");
    }
    if let Some((_, threshold)) = policy.slow_call
        && f64::from(slow) / calls >= threshold
    {
        return Some("slow call rate");
    }
    None
}
