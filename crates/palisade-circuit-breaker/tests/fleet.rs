//! The breaker as a balancer's peer: what it reports through its fleet
//! membership, and the early probe and reset a balancer asks for when every
//! peer is open.
//!
//! The property: after any sequence of calls, outcomes, drops, time steps,
//! handle actions, early probes and resets, the last availability the breaker
//! reported agrees with what it answers when asked — so that a balancer that
//! only listens keeps an exact set of available peers and an exact probe
//! queue.
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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

/// Every report, with the instant it arrived.
#[derive(Default)]
struct Reports(Mutex<Vec<(Instant, Availability)>>);

impl AvailabilitySink for Reports {
    fn availability_changed(&self, availability: Availability) {
        self.0.lock().push((Instant::now(), availability));
    }
}

impl Reports {
    fn last(&self) -> Option<(Instant, Availability)> {
        self.0.lock().last().copied()
    }

    fn len(&self) -> usize {
        self.0.lock().len()
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
    ]
}

/// What a balancer that only listened believes, checked against the answer.
fn agrees(reported: Option<(Instant, Availability)>, answer: Availability, now: Instant) -> Result<(), String> {
    let reported_availability = reported.map_or(Availability::Available, |(_, a)| a);
    let ok = match answer {
        Availability::Available => reported_availability == Availability::Available,
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
                        CircuitState::Closed | CircuitState::Disabled => prop_assert!(free),
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
                        CircuitState::Disabled => prop_assert!(taken),
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
            }
            let answer = handle.availability();
            let result = agrees(reports.last(), answer, Instant::now());
            prop_assert!(result.is_ok(), "step {i} ({step:?}): {}", result.unwrap_err());
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
