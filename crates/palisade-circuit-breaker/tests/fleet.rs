//! The breaker as a balancer's peer: what it reports through its fleet
//! membership, and the early probe and reset a balancer asks for when every
//! peer is open.
//!
//! The property: after any sequence of calls, outcomes, drops, time steps,
//! handle actions, early probes, resets and changes of the fleet's room for
//! ejections, the last availability the breaker reported agrees with what it
//! answers when asked — so that a balancer that only listens keeps an exact
//! set of available peers and an exact probe queue — and the breaker holds
//! an ejection grant exactly while it is open or half-open after a trip
//! (never leaked, never held by a closed breaker).
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState, FORCED_OPEN_RETRY_IN};
use palisade_core::error::BoxError;
use palisade_core::peer::{Availability, AvailabilitySink, CheckAvailability, FleetMembership, Unavailable};
use parking_lot::Mutex;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::Service;

/// Every report, with the instant it arrived; and a fleet with room for one
/// ejection while `room` is set (a balancer's ejection cap).
struct Reports {
    seen: Mutex<Vec<(Instant, Availability)>>,
    room: AtomicBool,
    held: AtomicBool,
    requests: AtomicUsize,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            seen: Mutex::new(Vec::new()),
            room: AtomicBool::new(true),
            held: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
        }
    }
}

impl AvailabilitySink for Reports {
    fn availability_changed(&self, availability: Availability) {
        self.seen.lock().push((Instant::now(), availability));
    }

    fn request_ejection(&self) -> bool {
        self.requests.fetch_add(1, SeqCst);
        if self.held.load(SeqCst) {
            return true;
        }
        let granted = self.room.load(SeqCst);
        self.held.store(granted, SeqCst);
        granted
    }

    fn release_ejection(&self) {
        self.held.store(false, SeqCst);
    }
}

impl Reports {
    fn last(&self) -> Option<(Instant, Availability)> {
        self.seen.lock().last().copied()
    }

    fn len(&self) -> usize {
        self.seen.lock().len()
    }

    fn held(&self) -> bool {
        self.held.load(SeqCst)
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

fn breaker(
    probes: u32,
    successes: u32,
) -> CircuitBreaker<impl Service<oneshot::Receiver<bool>, Response = &'static str, Error = BoxError, Future: Send>> {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(2)
        .cooldown(Duration::from_millis(100))
        .max_cooldown(Duration::from_millis(800))
        .half_open_max_probes(probes)
        .success_threshold(successes)
        .probe_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let inner = tower::service_fn(|rx: oneshot::Receiver<bool>| async move {
        match rx.await {
            Ok(true) => Ok("ok"),
            _ => Err::<&'static str, BoxError>("boom".into()),
        }
    });
    CircuitBreaker::new(inner, config)
}

#[derive(Clone, Debug)]
enum Step {
    Call(bool),
    Start,
    Complete(usize, bool),
    Drop(usize),
    Advance(u64),
    Ask,
    RequestProbe,
    ResetOpen,
    ForceOpen,
    ForceClosed,
    Reset,
    /// Whether the fleet has room for an ejection.
    Room(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(Step::Call),
        2 => Just(Step::Start),
        3 => (0..4usize, any::<bool>()).prop_map(|(i, ok)| Step::Complete(i, ok)),
        1 => (0..4usize).prop_map(Step::Drop),
        3 => (1..300u64).prop_map(Step::Advance),
        2 => Just(Step::Ask),
        2 => Just(Step::RequestProbe),
        1 => Just(Step::ResetOpen),
        1 => Just(Step::ForceOpen),
        1 => Just(Step::ForceClosed),
        1 => Just(Step::Reset),
        2 => any::<bool>().prop_map(Step::Room),
    ]
}

/// What a balancer that only listened believes, checked against the answer.
fn agrees(reported: Option<(Instant, Availability)>, answer: Availability, now: Instant) -> Result<(), String> {
    let reported_availability = reported.map_or(Availability::Available, |(_, a)| a);
    let ok = match answer {
        Availability::Available => reported_availability == Availability::Available,
        // Kept in rotation by the fleet: reported as such, and back.
        Availability::Degraded => reported_availability == Availability::Degraded,
        // A probe slot free: reported as such (when the breaker went
        // half-open, or when a slot came back).
        Availability::Probe => reported_availability == Availability::Probe,
        // Slots taken: taking one is not reported, so the report says
        // probe (and the balancer looks again at a peer it probed) or busy.
        Availability::Unavailable {
            reason: Unavailable::ProbesBusy,
            ..
        } => matches!(
            reported_availability,
            Availability::Probe
                | Availability::Unavailable {
                    reason: Unavailable::ProbesBusy,
                    ..
                }
        ),
        // Forced open: "not by itself", whenever reported.
        Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in: FORCED_OPEN_RETRY_IN,
        } => reported_availability == answer,
        // Open: reported open, due at the same instant.
        Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in,
        } => match reported {
            Some((
                at,
                Availability::Unavailable {
                    reason: Unavailable::Open,
                    retry_in: reported_in,
                },
            )) => at + reported_in == now + retry_in,
            _ => false,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("answered {answer:?}, last reported {reported:?}"))
    }
}

fn run(probes: u32, successes: u32, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut svc = breaker(probes, successes);
        let handle = svc.handle();
        let reports = Arc::new(Reports::default());
        let membership = FleetMembership::new(reports.clone());
        prop_assert!(svc.join_fleet(membership.clone()));
        // Joining again with the same membership reports once.
        prop_assert!(handle.join_fleet(membership));
        let mut pending: Vec<(Fut, oneshot::Sender<bool>)> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Call(ok) => {
                    let (tx, rx) = oneshot::channel();
                    let fut = svc.call(rx);
                    let _ = tx.send(ok);
                    let _ = fut.await;
                }
                Step::Start => {
                    let (tx, rx) = oneshot::channel();
                    let mut fut: Fut = Box::pin(svc.call(rx));
                    // A refusal is ready at once; a call in flight is not.
                    if (&mut fut).now_or_never().is_none() {
                        pending.push((fut, tx));
                    }
                }
                Step::Complete(k, ok) => {
                    if k < pending.len() {
                        let (fut, tx) = pending.remove(k);
                        let _ = tx.send(ok);
                        let _ = fut.await;
                    }
                }
                Step::Drop(k) => {
                    if k < pending.len() {
                        drop(pending.remove(k));
                    }
                }
                Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Step::Ask => {}
                Step::RequestProbe => {
                    let before = handle.state();
                    let free = svc.request_probe();
                    match before {
                        CircuitState::Open => {
                            prop_assert!(free, "step {i}: an open breaker takes an early probe");
                            prop_assert_eq!(handle.state(), CircuitState::HalfOpen);
                        }
                        CircuitState::ForcedOpen => {
                            prop_assert!(!free, "step {i}: forced open refuses");
                            prop_assert_eq!(handle.state(), CircuitState::ForcedOpen);
                        }
                        CircuitState::Closed | CircuitState::ForcedClosed => prop_assert!(free),
                        CircuitState::HalfOpen => {}
                    }
                }
                Step::ResetOpen => {
                    let before = handle.state();
                    let open_before = handle.snapshot().times_opened;
                    let taken = svc.reset_open();
                    match before {
                        CircuitState::ForcedOpen => {
                            prop_assert!(!taken);
                            prop_assert_eq!(handle.state(), CircuitState::ForcedOpen);
                        }
                        CircuitState::ForcedClosed => prop_assert!(taken),
                        _ => {
                            prop_assert!(taken);
                            prop_assert_eq!(handle.state(), CircuitState::Closed);
                            prop_assert_eq!(handle.snapshot().times_opened, open_before);
                        }
                    }
                }
                Step::ForceOpen => handle.force_open(),
                Step::ForceClosed => handle.force_closed(),
                Step::Reset => handle.reset(),
                Step::Room(room) => reports.room.store(room, SeqCst),
            }
            let answer = handle.availability();
            let result = agrees(reports.last(), answer, Instant::now());
            prop_assert!(result.is_ok(), "step {i} ({step:?}): {}", result.unwrap_err());
            let snapshot = handle.snapshot();
            let out = matches!(snapshot.state, CircuitState::Open | CircuitState::HalfOpen);
            prop_assert_eq!(
                reports.held(),
                out,
                "step {}: the grant is held exactly while out of rotation",
                i
            );
            prop_assert_eq!(
                snapshot.kept_in_rotation,
                answer == Availability::Degraded,
                "step {}: kept in rotation is what a balancer is told",
                i
            );
            prop_assert!(!snapshot.kept_in_rotation || snapshot.state == CircuitState::Closed);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn what_the_breaker_reports_agrees_with_what_it_answers(
        probes in 1..3u32,
        successes in 1..3u32,
        steps in prop::collection::vec(step(), 1..80),
    ) {
        run(probes, successes, steps)?;
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_reports_its_cooldown_and_every_later_transition() {
    let mut svc = breaker(1, 2);
    let reports = Arc::new(Reports::default());
    assert!(svc.join_fleet(FleetMembership::new(reports.clone())));
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        let fut = svc.call(rx);
        let _ = tx.send(false);
        assert!(fut.await.is_err());
    }
    let open = Availability::Unavailable {
        reason: Unavailable::Open,
        retry_in: Duration::from_millis(100),
    };
    assert_eq!(reports.last().map(|r| r.1), Some(open));
    // The balancer asks for an early probe: half-open at once, reported.
    assert!(svc.request_probe());
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Probe));
    // A first probe success (of two): the slot comes back, reported again.
    let (tx, rx) = oneshot::channel();
    let fut = svc.call(rx);
    let _ = tx.send(true);
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(reports.len(), 3);
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Probe));
    // Forced open and reset: reported both ways (the queue of a balancer
    // follows the breaker through an operator's actions too).
    svc.handle().force_open();
    assert!(matches!(
        reports.last().map(|r| r.1),
        Some(Availability::Unavailable {
            reason: Unavailable::Open,
            ..
        })
    ));
    assert!(
        !svc.reset_open(),
        "a forced-open breaker is not the balancer's to reset"
    );
    assert!(!svc.request_probe());
    svc.handle().reset();
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Available));
}

#[tokio::test(start_paused = true)]
async fn a_probe_slot_reclaimed_after_the_probe_timeout_is_reported() {
    let mut svc = breaker(1, 1);
    let reports = Arc::new(Reports::default());
    assert!(svc.join_fleet(FleetMembership::new(reports.clone())));
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        let fut = svc.call(rx);
        let _ = tx.send(false);
        assert!(fut.await.is_err());
    }
    tokio::time::advance(Duration::from_millis(100)).await;
    // The call that finds the cooldown over is the probe: half-open with its
    // one slot taken at once, reported as such.
    let (_tx, rx) = oneshot::channel();
    let mut probe: Fut = Box::pin(svc.call(rx));
    assert!((&mut probe).now_or_never().is_none());
    assert!(matches!(
        reports.last().map(|r| r.1),
        Some(Availability::Unavailable {
            reason: Unavailable::ProbesBusy,
            ..
        })
    ));
    // The probe never answers; after the probe timeout the slot is taken
    // back, and the balancer hears that a probe may go out again.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(svc.availability(), Availability::Probe);
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Probe));
    drop(probe);
}

/// A breaker of 2 consecutive failures whose events land in `events`.
fn breaker_with_events(
    events: Arc<Mutex<Vec<(&'static str, &'static str)>>>,
) -> CircuitBreaker<impl Service<bool, Response = &'static str, Error = BoxError, Future: Send>> {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(2)
        .cooldown(Duration::from_millis(100))
        .success_threshold(1)
        .listener(Arc::new(move |event: &palisade_core::event::Event<'_>| {
            if let palisade_core::event::EventKind::StateChange { from, to, .. } = event.kind {
                events.lock().push((from, to));
            }
        }))
        .build()
        .unwrap();
    let inner = tower::service_fn(|ok: bool| async move {
        if ok {
            Ok("ok")
        } else {
            Err::<&'static str, BoxError>("boom".into())
        }
    });
    CircuitBreaker::new(inner, config)
}

// Issue 19: inside a balancer with its ejection cap taken, a trip does not
// open the breaker: it stays closed and in rotation, tells the balancer it
// is degraded, keeps counting, and asks again on every later trip.
#[tokio::test(start_paused = true)]
async fn a_trip_the_fleet_refuses_keeps_the_breaker_in_rotation_and_it_asks_again() {
    use tower::ServiceExt;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut svc = breaker_with_events(events.clone());
    let handle = svc.handle();
    let reports = Arc::new(Reports::default());
    reports.room.store(false, SeqCst);
    assert!(svc.join_fleet(FleetMembership::new(reports.clone())));
    for _ in 0..2 {
        assert_eq!(
            svc.ready().await.unwrap().call(false).await.unwrap_err().to_string(),
            "boom"
        );
    }
    assert_eq!(reports.requests.load(SeqCst), 1, "the trip asked the fleet");
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert!(snapshot.kept_in_rotation);
    assert_eq!(svc.availability(), Availability::Degraded);
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Degraded));
    assert_eq!(*events.lock(), [("closed", "degraded")]);
    // Kept: calls still reach the peer, and each failure asks again.
    assert_eq!(
        svc.ready().await.unwrap().call(false).await.unwrap_err().to_string(),
        "boom"
    );
    assert_eq!(reports.requests.load(SeqCst), 2);
    assert_eq!(events.lock().len(), 1, "no new event while it stays kept");
    // The fleet has room now: the next failure ejects it.
    reports.room.store(true, SeqCst);
    assert!(svc.ready().await.unwrap().call(false).await.is_err());
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(reports.held());
    assert!(!handle.snapshot().kept_in_rotation);
    // Its probe succeeds: closed, and the grant goes back to the fleet.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(svc.ready().await.unwrap().call(true).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Closed);
    assert!(!reports.held(), "closing gives the grant back");
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Available));
    assert_eq!(
        *events.lock(),
        [
            ("closed", "degraded"),
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_kept_breaker_whose_failures_stop_is_plainly_available_again() {
    use tower::ServiceExt;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut svc = breaker_with_events(events.clone());
    let reports = Arc::new(Reports::default());
    reports.room.store(false, SeqCst);
    assert!(svc.join_fleet(FleetMembership::new(reports.clone())));
    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(false).await.is_err());
    }
    assert_eq!(svc.availability(), Availability::Degraded);
    assert_eq!(svc.ready().await.unwrap().call(true).await.unwrap(), "ok");
    assert_eq!(svc.availability(), Availability::Available);
    assert_eq!(reports.last().map(|r| r.1), Some(Availability::Available));
    assert_eq!(*events.lock(), [("closed", "degraded"), ("degraded", "closed")]);
    assert_eq!(
        svc.handle().snapshot().generation,
        0,
        "kept is no transition: results in flight still count"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standalone_breaker_opens_as_before_and_an_operator_is_never_refused() {
    use tower::ServiceExt;
    let mut standalone = breaker_with_events(Arc::new(Mutex::new(Vec::new())));
    for _ in 0..2 {
        assert!(standalone.ready().await.unwrap().call(false).await.is_err());
    }
    assert_eq!(
        standalone.handle().state(),
        CircuitState::Open,
        "no fleet: nothing to ask"
    );
    // In a fleet without room, an operator still forces it open, and that
    // holds no grant.
    let svc = breaker_with_events(Arc::new(Mutex::new(Vec::new())));
    let reports = Arc::new(Reports::default());
    reports.room.store(false, SeqCst);
    assert!(svc.join_fleet(FleetMembership::new(reports.clone())));
    svc.handle().force_open();
    assert_eq!(svc.handle().state(), CircuitState::ForcedOpen);
    assert_eq!(reports.requests.load(SeqCst), 0);
    assert!(!reports.held());
}
