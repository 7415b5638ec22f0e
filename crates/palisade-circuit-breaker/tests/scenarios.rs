//! The scenarios, with paused tokio time.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use futures::FutureExt;
use futures::channel::oneshot;
use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, FORCED_OPEN_RETRY_IN,
};
use palisade_core::classify::{ClassifyExt, Outcome};
use palisade_core::error::BoxError;
use palisade_core::peer::{Availability, CheckAvailability, Unavailable};
use palisade_core::protocol::Plain;
use tower::{Layer, Service, ServiceExt};

fn consecutive(window_ms: u64) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .peer("10.0.0.1:50051")
        .failure_window(ms(window_ms))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn failures_each_within_the_window_trip_and_the_probe_waits_exactly_the_cooldown() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), consecutive(1000));
    let handle = svc.handle();
    clock.at_ms(10_000).await;
    assert!(call(&mut svc, Op::Fail).await.is_err());
    clock.at_ms(10_999).await;
    assert!(call(&mut svc, Op::Fail).await.is_err());
    assert_eq!(handle.state(), CircuitState::Closed);
    clock.at_ms(11_998).await;
    assert!(!is_open(&call(&mut svc, Op::Fail).await));
    assert_eq!(handle.state(), CircuitState::Open);

    clock.at_ms(21_997).await;
    let open = open_err(call(&mut svc, Op::Ok).await);
    assert_eq!(open.retry_in(), ms(1));
    assert_eq!(open.peer().map(|p| p.as_str()), Some("10.0.0.1:50051"));
    assert_eq!(
        open.to_string(),
        "circuit open for peer 10.0.0.1:50051: next probe allowed in 1ms"
    );

    clock.at_ms(21_998).await;
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn failures_a_window_apart_never_trip() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), consecutive(1000));
    for t in [10_000, 11_000, 12_000, 13_000, 14_000] {
        clock.at_ms(t).await;
        assert!(!is_open(&call(&mut svc, Op::Fail).await));
        assert_eq!(svc.handle().snapshot().consecutive_failures, 1);
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_run() {
    let mut svc = CircuitBreaker::new(inner(), consecutive(60_000));
    for op in [Op::Fail, Op::Fail, Op::Ok, Op::Fail, Op::Fail] {
        let _ = call(&mut svc, op).await;
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    assert_eq!(svc.handle().snapshot().consecutive_failures, 2);
    // The third failure in a row trips it: the count really is running.
    let _ = call(&mut svc, Op::Fail).await;
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_double_the_cooldown_up_to_the_cap_and_closing_resets_it() {
    let clock = Clock::start();
    let log = Transitions::default();
    let config = log.config(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .cooldown(ms(100))
            .max_cooldown(ms(1000)),
    );
    let mut svc = CircuitBreaker::new(inner(), config);
    let handle = svc.handle();
    let _ = call(&mut svc, Op::Fail).await;
    let mut cooldowns = vec![];
    for _ in 0..6 {
        let cooldown = handle.snapshot().cooldown.unwrap();
        cooldowns.push(cooldown.as_millis());
        let now = clock.elapsed_ms() as u64;
        // Not a millisecond early.
        clock.at_ms(now + cooldown.as_millis() as u64 - 1).await;
        assert!(is_open(&call(&mut svc, Op::Fail).await));
        clock.at_ms(now + cooldown.as_millis() as u64).await;
        // The probe fails: open again with a longer cooldown.
        let probe = call(&mut svc, Op::Fail).await;
        assert!(!is_open(&probe));
        assert_eq!(handle.state(), CircuitState::Open);
    }
    assert_eq!(cooldowns, [100, 200, 400, 800, 1000, 1000]);

    // Two successful probes close it.
    let cooldown = handle.snapshot().cooldown.unwrap().as_millis() as u64;
    clock.at_ms(clock.elapsed_ms() as u64 + cooldown).await;
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Closed);

    // The next trip starts from the base cooldown again.
    let _ = call(&mut svc, Op::Fail).await;
    assert_eq!(handle.snapshot().cooldown, Some(ms(100)));

    let events = log.take();
    assert_eq!(
        events.first(),
        Some(&("closed", "open", "consecutive failures", Some(ms(100))))
    );
    assert!(events.contains(&("open", "half_open", "cooldown elapsed", None)));
    assert!(events.contains(&("half_open", "open", "probe failed", Some(ms(1000)))));
    assert!(events.contains(&("half_open", "closed", "probes succeeded", None)));
    assert_eq!(
        events.last(),
        Some(&("closed", "open", "consecutive failures", Some(ms(100))))
    );
}

fn rate(min: u32, threshold: f64, window_ms: u64) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .without_consecutive()
        .failure_rate_threshold(threshold)
        .min_requests(min)
        .rate_window(ms(window_ms))
        .rate_buckets(10)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_once_min_requests_are_in_the_window_even_on_a_success() {
    let log = Transitions::default();
    let config = log.config(
        CircuitBreakerConfig::builder()
            .without_consecutive()
            .failure_rate_threshold(0.5)
            .min_requests(5),
    );
    let mut svc = CircuitBreaker::new(inner(), config);
    for op in [Op::Fail, Op::Fail, Op::Fail, Op::Ok] {
        let _ = call(&mut svc, op).await;
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    let snap = svc.handle().snapshot();
    assert_eq!((snap.window_calls, snap.window_failures), (4, 3));
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(svc.handle().state(), CircuitState::Open);
    assert_eq!(log.take()[0].2, "failure rate");
}

#[tokio::test(start_paused = true)]
async fn calls_that_slide_out_of_the_window_stop_counting() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), rate(5, 0.5, 10_000));
    for _ in 0..3 {
        let _ = call(&mut svc, Op::Fail).await;
    }
    // 10 s window in 1 s buckets: the failures at t=0 are gone by t=10 s.
    clock.at_ms(10_000).await;
    assert_eq!(svc.handle().snapshot().window_calls, 0);
    for op in [Op::Fail, Op::Ok, Op::Ok, Op::Ok, Op::Ok] {
        let _ = call(&mut svc, op).await;
    }
    // 1 failure in 5 (the old 3 would make it 4 in 8 = 50%).
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    let snap = svc.handle().snapshot();
    assert_eq!((snap.window_calls, snap.window_failures), (5, 1));

    // Within the window they still count: 9.999 s later nothing has slid out.
    clock.at_ms(19_999).await;
    assert_eq!(svc.handle().snapshot().window_calls, 5);
    let _ = call(&mut svc, Op::Fail).await;
    let _ = call(&mut svc, Op::Fail).await;
    let _ = call(&mut svc, Op::Fail).await;
    assert_eq!(svc.handle().state(), CircuitState::Open, "4 of 8 is 50%");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_slow_call_rate_whether_they_succeed_or_not() {
    let log = Transitions::default();
    let config = log.config(
        CircuitBreakerConfig::builder()
            .without_consecutive()
            .slow_call_duration(ms(500))
            .slow_call_rate_threshold(0.5)
            .min_requests(4),
    );
    let mut svc = CircuitBreaker::new(inner(), config);
    for _ in 0..2 {
        let _ = call(&mut svc, Op::Ok).await;
    }
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        let fut = call(&mut svc, Op::Wait(rx));
        let driver = async {
            tokio::time::sleep(ms(501)).await;
            tx.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(fut, driver);
        assert_eq!(r.unwrap(), "ok");
    }
    assert_eq!(svc.handle().state(), CircuitState::Open);
    assert_eq!(log.take()[0].2, "slow call rate");
}

#[tokio::test(start_paused = true)]
async fn rate_and_consecutive_together_either_trips() {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(3)
        .failure_rate_threshold(0.5)
        .min_requests(100)
        .build()
        .unwrap();
    let mut svc = CircuitBreaker::new(inner(), config);
    for _ in 0..3 {
        let _ = call(&mut svc, Op::Fail).await;
    }
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

async fn trip(svc: &mut impl Service<Op, Response = &'static str, Error = BoxError>, n: usize) {
    for _ in 0..n {
        let _ = call(svc, Op::Fail).await;
    }
}

fn one_probe() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .cooldown(ms(100))
        .max_cooldown(ms(100))
        .success_threshold(2)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn with_a_probe_in_flight_a_second_call_is_refused_and_dropping_the_probe_frees_the_slot() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), one_probe());
    trip(&mut svc, 1).await;
    clock.at_ms(100).await;
    let probe = svc.call(Op::Hang);
    let second = open_err(call(&mut svc, Op::Ok).await);
    assert_eq!(second.retry_in(), Duration::ZERO);
    assert_eq!(second.to_string(), "circuit open: probe slots are all in use");
    assert_eq!(svc.handle().snapshot().probes_in_flight, 1);
    drop(probe);
    assert_eq!(svc.handle().snapshot().probes_in_flight, 0);
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    // The dropped probe counted neither way: one success so far.
    assert_eq!(svc.handle().snapshot().probe_successes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_probe_slot_comes_back_on_every_path() {
    let clock = Clock::start();
    let classifier = Plain.errors_with(|e: &BoxError| {
        if e.is::<NotFound>() {
            Outcome::Ignored
        } else {
            Outcome::Failure
        }
    });
    let mut svc = CircuitBreaker::with_protocol(inner(), one_probe(), classifier);
    let handle = svc.handle();
    trip(&mut svc, 1).await;
    clock.at_ms(100).await;
    // Ignored outcome: a business error.
    assert!(!is_open(&call(&mut svc, Op::NotFound).await));
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // Panic in the inner service.
    let panicked = std::panic::AssertUnwindSafe(svc.call(Op::Panic)).catch_unwind().await;
    assert!(panicked.is_err());
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    // Success.
    assert!(call(&mut svc, Op::Ok).await.is_ok());
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    assert_eq!(handle.snapshot().probe_successes, 1);
    // Failure: reopens, slot back (the state is new anyway).
    assert!(!is_open(&call(&mut svc, Op::Fail).await));
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_result_admitted_under_an_earlier_state_does_not_move_the_current_one() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), one_probe());
    let handle = svc.handle();
    // A slow call starts while closed...
    let (tx, rx) = oneshot::channel();
    let slow = tokio::spawn(svc.call(Op::Wait(rx)));
    // ...the breaker trips and goes half-open...
    trip(&mut svc, 1).await;
    clock.at_ms(100).await;
    assert!(call(&mut svc, Op::Ok).await.is_ok());
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let before = handle.snapshot();
    // ...and the slow call fails now: ignored.
    tx.send(false).unwrap();
    assert!(slow.await.unwrap().is_err());
    assert_eq!(handle.snapshot(), before);
    assert!(call(&mut svc, Op::Ok).await.is_ok());
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_reports_is_reclaimed_after_the_probe_timeout() {
    let clock = Clock::start();
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .cooldown(ms(100))
        .max_cooldown(ms(100))
        .probe_timeout(ms(5_000))
        .success_threshold(1)
        .build()
        .unwrap();
    let mut svc = CircuitBreaker::new(inner(), config);
    trip(&mut svc, 1).await;
    clock.at_ms(100).await;
    let (tx, rx) = oneshot::channel();
    let stuck = tokio::spawn(svc.call(Op::Wait(rx)));
    tokio::task::yield_now().await;
    clock.at_ms(5_099).await;
    assert!(is_open(&call(&mut svc, Op::Ok).await));
    assert_eq!(
        svc.availability(),
        Availability::Unavailable {
            reason: Unavailable::ProbesBusy,
            retry_in: Duration::ZERO
        }
    );
    clock.at_ms(5_100).await;
    assert_eq!(svc.availability(), Availability::Probe);
    // The stuck probe's late failure is ignored: its slot was taken back.
    tx.send(false).unwrap();
    assert!(stuck.await.unwrap().is_err());
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    assert!(call(&mut svc, Op::Ok).await.is_ok());
    assert_eq!(svc.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn availability_moves_open_to_half_open_lazily() {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), one_probe());
    assert_eq!(svc.availability(), Availability::Available);
    trip(&mut svc, 1).await;
    clock.at_ms(40).await;
    assert_eq!(
        svc.availability(),
        Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in: ms(60)
        }
    );
    clock.at_ms(100).await;
    assert_eq!(
        svc.handle().state(),
        CircuitState::Open,
        "nothing moves without a call or a question"
    );
    assert_eq!(svc.handle().availability(), Availability::Probe);
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    let _probe = svc.call(Op::Hang);
    assert!(!svc.availability().is_available());
}

#[tokio::test(start_paused = true)]
async fn poll_ready_never_fails_because_the_breaker_is_open() {
    let mut svc = CircuitBreaker::new(inner(), one_probe());
    trip(&mut svc, 1).await;
    assert_eq!(svc.handle().state(), CircuitState::Open);
    let ready = futures::future::poll_fn(|cx| svc.poll_ready(cx)).now_or_never();
    assert!(matches!(ready, Some(Ok(()))));
}

#[tokio::test(start_paused = true)]
async fn clones_and_every_service_of_one_layer_share_one_breaker_and_for_peer_does_not() {
    let layer = CircuitBreakerLayer::new(one_probe());
    let mut a = layer.layer(inner());
    let mut b = layer.layer(inner());
    let mut a2 = a.clone();
    trip(&mut a2, 1).await;
    assert!(is_open(&call(&mut a, Op::Ok).await));
    assert!(is_open(&call(&mut b, Op::Ok).await));
    assert_eq!(layer.handle().state(), CircuitState::Open);

    let peer_layer = layer.for_peer("10.0.0.2:80");
    let mut c = peer_layer.layer(inner());
    assert_eq!(call(&mut c, Op::Ok).await.unwrap(), "ok");
    assert_eq!(peer_layer.handle().peer().map(|p| p.as_str()), Some("10.0.0.2:80"));
    trip(&mut c, 1).await;
    let err = open_err(call(&mut c, Op::Ok).await);
    assert_eq!(err.peer().map(|p| p.as_str()), Some("10.0.0.2:80"));
}

#[tokio::test(start_paused = true)]
async fn the_handle_forces_open_forces_closed_and_resets() {
    let mut svc = CircuitBreaker::new(inner(), one_probe());
    let handle = svc.handle();
    handle.force_open();
    let err = open_err(call(&mut svc, Op::Ok).await);
    assert_eq!(err.retry_in(), FORCED_OPEN_RETRY_IN);
    assert_eq!(
        err.to_string(),
        "circuit open: next probe allowed in 31536000s",
        "forced open reads as a long wait, not Duration::MAX"
    );
    assert_eq!(handle.retry_in(), Some(FORCED_OPEN_RETRY_IN));
    assert!(tokio::time::Instant::now().checked_add(err.retry_in()).is_some());
    assert_eq!(handle.state(), CircuitState::ForcedOpen);
    assert!(!handle.availability().is_available());
    assert_eq!(handle.rejected(), 1);

    handle.force_closed();
    trip(&mut svc, 5).await;
    assert_eq!(handle.state(), CircuitState::ForcedClosed);
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");

    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    trip(&mut svc, 1).await;
    assert_eq!(handle.state(), CircuitState::Open);
    handle.reset();
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.snapshot().times_opened, 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let mut svc = CircuitBreaker::new(inner(), consecutive(1000));
    let err = call(&mut svc, Op::NotFound).await.unwrap_err();
    assert!(err.is::<NotFound>());
}

/// Runs one call that completes `delay` after admission, with `success`.
async fn timed_call<S>(svc: &mut S, delay: Duration, success: bool) -> Result<&'static str, BoxError>
where
    S: Service<Op, Response = &'static str, Error = BoxError>,
{
    let (tx, rx) = oneshot::channel();
    let fut = call(svc, Op::Wait(rx));
    let driver = async {
        tokio::time::sleep(delay).await;
        let _ = tx.send(success);
    };
    let (r, ()) = tokio::join!(fut, driver);
    r
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_trip_cools_down_and_slow_probes_count_by_their_outcome() {
    let log = Transitions::default();
    let config = log.config(
        CircuitBreakerConfig::builder()
            .without_consecutive()
            .slow_call_duration(ms(500))
            .slow_call_rate_threshold(1.0)
            .min_requests(2)
            .cooldown(ms(1_000))
            .max_cooldown(ms(4_000))
            .success_threshold(2),
    );
    let mut svc = CircuitBreaker::new(inner(), config);
    let handle = svc.handle();
    for _ in 0..2 {
        assert_eq!(timed_call(&mut svc, ms(501), true).await.unwrap(), "ok");
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(log.take(), [("closed", "open", "slow call rate", Some(ms(1_000)))]);

    // After the cooldown, a slow but successful probe is a success...
    tokio::time::advance(ms(1_000)).await;
    assert_eq!(timed_call(&mut svc, ms(2_000), true).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(handle.snapshot().probe_successes, 1);
    // ...and a slow failed one a failure: open again, cooldown doubled.
    assert!(!is_open(&timed_call(&mut svc, ms(2_000), false).await));
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.snapshot().cooldown, Some(ms(2_000)));

    tokio::time::advance(ms(2_000)).await;
    for _ in 0..2 {
        assert_eq!(timed_call(&mut svc, ms(700), true).await.unwrap(), "ok");
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    let events = log.take();
    assert_eq!(events.last(), Some(&("half_open", "closed", "probes succeeded", None)));

    // Closed again with a fresh window: the probes were not counted in it.
    let snap = handle.snapshot();
    assert_eq!((snap.window_calls, snap.window_slow_calls), (0, 0));
    assert_eq!(timed_call(&mut svc, ms(501), true).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Closed, "one call is below min_requests");
    assert_eq!(timed_call(&mut svc, ms(501), true).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(
        handle.snapshot().cooldown,
        Some(ms(1_000)),
        "closing reset the cooldown"
    );
}

/// A call admitted while closed fails after the breaker went open, half-open
/// and closed again: with a threshold of 1 it would reopen it, were it counted.
async fn stale_failure_does_not_reopen(config: CircuitBreakerConfig) {
    let clock = Clock::start();
    let mut svc = CircuitBreaker::new(inner(), config);
    let handle = svc.handle();
    let (tx, rx) = oneshot::channel();
    let slow = tokio::spawn(svc.call(Op::Wait(rx)));
    tokio::task::yield_now().await;
    trip(&mut svc, 1).await;
    assert_eq!(handle.state(), CircuitState::Open);
    clock.at_ms(100).await;
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Closed);
    let before = handle.snapshot();
    tx.send(false).unwrap();
    assert!(slow.await.unwrap().is_err());
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot(), before);
}

#[tokio::test(start_paused = true)]
async fn a_failure_admitted_before_the_last_close_does_not_reopen() {
    let base = || {
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .cooldown(ms(100))
            .max_cooldown(ms(100))
            .success_threshold(1)
    };
    stale_failure_does_not_reopen(base().build().unwrap()).await;
    // The same with timed (compact) tickets.
    stale_failure_does_not_reopen(base().slow_call_duration(ms(10_000)).min_requests(100).build().unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn events_of_a_per_peer_breaker_name_its_peer() {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .listener(std::sync::Arc::new(move |e: &palisade_core::event::Event<'_>| {
            let kind = match e.kind {
                palisade_core::event::EventKind::StateChange { to, .. } => to,
                palisade_core::event::EventKind::Rejected { .. } => "rejected",
                _ => "other",
            };
            log.lock()
                .push((e.peer.map(|p| p.as_str().to_owned()), e.key.is_some(), kind));
        }))
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(config);
    let peer_layer = layer.for_peer("10.0.0.3:8080");
    let mut svc = peer_layer.layer(inner());
    trip(&mut svc, 1).await;
    assert!(is_open(&call(&mut svc, Op::Ok).await));
    let peer = Some("10.0.0.3:8080".to_owned());
    assert_eq!(*seen.lock(), [(peer.clone(), false, "open"), (peer, false, "rejected")]);
    // The original layer's breaker is untouched and unnamed.
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    assert_eq!(layer.handle().peer(), None);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_bucket_by_bucket_and_is_not_reset_wholesale() {
    let clock = Clock::start();
    // 10 s window in 1 s buckets, min 3 calls, 50%.
    let mut svc = CircuitBreaker::new(inner(), rate(3, 0.5, 10_000));
    let handle = svc.handle();
    clock.at_ms(500).await;
    for _ in 0..3 {
        assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    }
    clock.at_ms(9_500).await;
    for _ in 0..2 {
        let _ = call(&mut svc, Op::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed, "2 of 5");
    // At 10.5 s the successes of 0.5 s have slid out; the failures of 9.5 s still count.
    clock.at_ms(10_500).await;
    let snap = handle.snapshot();
    assert_eq!((snap.window_calls, snap.window_failures), (2, 2));
    let _ = call(&mut svc, Op::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open, "3 of 3");
}

#[tokio::test(start_paused = true)]
async fn jitter_never_takes_a_cooldown_below_half_the_base() {
    use palisade_core::backoff::Jitter;
    // A proportional jitter of factor 0 draws a zero cooldown every time;
    // full jitter draws one below half the base about every other time.
    for jitter in [
        Jitter::Proportional { low: 0.0, high: 0.0 },
        Jitter::Proportional { low: 0.1, high: 0.1 },
        Jitter::Full,
    ] {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .success_threshold(1)
            .cooldown(ms(1000))
            .max_cooldown(ms(8000))
            .jitter(jitter)
            .build()
            .unwrap();
        assert_eq!(config.cooldown_floor(), ms(500));
        let mut svc = CircuitBreaker::new(inner(), config);
        let handle = svc.handle();
        for round in 0..40 {
            // Trip (or fail the probe), then check the cooldown that started.
            let _ = call(&mut svc, Op::Fail).await;
            assert_eq!(handle.state(), CircuitState::Open, "{jitter:?} round {round}");
            let cooldown = handle.snapshot().cooldown.unwrap();
            assert!(cooldown >= ms(500), "{jitter:?} round {round}: cooldown {cooldown:?}");
            let open = open_err(call(&mut svc, Op::Ok).await);
            assert!(
                open.retry_in() >= ms(500),
                "{jitter:?}: refused for {:?}",
                open.retry_in()
            );
            tokio::time::advance(cooldown).await;
            if round % 4 == 3 {
                // Close it now and then, so the first round's cooldown is drawn again.
                assert!(call(&mut svc, Op::Ok).await.is_ok());
                assert_eq!(handle.state(), CircuitState::Closed);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_is_not_the_peers_fault_but_an_attempt_timeout_is() {
    use palisade_core::error::{DeadlineExceeded, TimedOut, TimeoutKind};
    let deadline = tower::service_fn(|before_send: bool| async move {
        Err::<&'static str, BoxError>(if before_send {
            DeadlineExceeded::before_send().into()
        } else {
            DeadlineExceeded::in_flight(ms(5)).into()
        })
    });
    let mut svc = CircuitBreaker::new(deadline, consecutive(60_000));
    for before_send in [true, false, true, false, true] {
        let err = svc.ready().await.unwrap().call(before_send).await.unwrap_err();
        assert!(err.is::<DeadlineExceeded>(), "passed through untouched: {err}");
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    assert_eq!(svc.handle().snapshot().consecutive_failures, 0);

    let timed_out = tower::service_fn(|_: ()| async {
        Err::<&'static str, BoxError>(TimedOut::new(TimeoutKind::Attempt, ms(100)).into())
    });
    let mut svc = CircuitBreaker::new(timed_out, consecutive(60_000));
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_future_polled_after_completion_fails_with_the_typed_error() {
    use palisade_core::error::PolledAfterCompletion;
    use palisade_core::event::LayerName;
    use std::pin::pin;
    let mut svc = CircuitBreaker::new(inner(), consecutive(60_000));
    let mut admitted = pin!(svc.call(Op::Ok));
    assert_eq!((&mut admitted).await.unwrap(), "ok");
    let again = admitted.now_or_never().expect("ready at once").unwrap_err();
    let typed = again.downcast_ref::<PolledAfterCompletion>().expect("typed");
    assert_eq!(typed.layer(), LayerName::CircuitBreaker);

    svc.handle().force_open();
    let mut refused = pin!(svc.call(Op::Ok));
    assert!(is_open(&(&mut refused).await));
    let again = refused.now_or_never().expect("ready at once").unwrap_err();
    assert!(again.is::<PolledAfterCompletion>(), "{again}");
}
