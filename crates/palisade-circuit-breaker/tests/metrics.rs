//! Counters and the state gauge under the `metrics` feature, read through a
//! small counting recorder installed for the test's thread.
#![cfg(feature = "metrics")]
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use futures::channel::oneshot;
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
use parking_lot::Mutex;
use tower::Service;

/// A counter or a gauge (an `f64` in the bits).
#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some((f64::from_bits(b) + value).to_bits())
        });
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// Keeps every registered metric under `name{label=value,...}` (labels in order).
#[derive(Default)]
struct Counting {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
    registrations: AtomicU64,
}

impl Counting {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        self.registrations.fetch_add(1, Ordering::Relaxed);
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells.lock().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.cells.lock().get(name).map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.cells
            .lock()
            .get(name)
            .map(|c| f64::from_bits(c.0.load(Ordering::Relaxed)))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

const PEER: &str = "10.0.0.9:443";

fn transitions(from: &str, to: &str) -> String {
    format!("palisade_circuit_breaker_transitions_total{{peer={PEER},from={from},to={to}}}")
}

#[tokio::test(start_paused = true)]
async fn counters_and_the_state_gauge_follow_the_breaker() {
    let recorder = Counting::default();
    // Installed before the breaker is built, as the crate docs require.
    let _installed = metrics::set_default_local_recorder(&recorder);
    let clock = Clock::start();
    let config = CircuitBreakerConfig::builder()
        .peer(PEER)
        .failure_threshold(2)
        .cooldown(ms(100))
        .max_cooldown(ms(100))
        .success_threshold(1)
        .build()
        .unwrap();
    let mut svc = CircuitBreaker::new(inner(), config);
    let handle = svc.handle();
    let gauge = format!("palisade_circuit_breaker_state{{peer={PEER}}}");
    let failures = format!("palisade_circuit_breaker_failures_total{{peer={PEER}}}");
    let rejected = format!("palisade_circuit_breaker_rejected_total{{peer={PEER}}}");
    assert_eq!(recorder.gauge(&gauge), Some(0.0));
    let registered = recorder.registrations.load(Ordering::Relaxed);

    // A slow call admitted while closed.
    let (tx, rx) = oneshot::channel();
    let slow = tokio::spawn(svc.call(Op::Wait(rx)));
    for _ in 0..2 {
        assert!(!is_open(&call(&mut svc, Op::Fail).await));
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(recorder.counter(&transitions("closed", "open")), 1);
    assert_eq!(recorder.gauge(&gauge), Some(2.0));
    assert_eq!(recorder.counter(&failures), 2);

    // Refused calls count, and the slow call's late failure does not.
    for _ in 0..3 {
        assert!(is_open(&call(&mut svc, Op::Ok).await));
    }
    assert_eq!(recorder.counter(&rejected), 3);
    tx.send(false).unwrap();
    assert!(slow.await.unwrap().is_err());
    assert_eq!(recorder.counter(&failures), 2, "a stale failure is not counted");

    // Cooldown, a successful probe: half-open, then closed.
    clock.at_ms(100).await;
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(recorder.counter(&transitions("open", "half_open")), 1);
    assert_eq!(recorder.counter(&transitions("half_open", "closed")), 1);
    assert_eq!(recorder.gauge(&gauge), Some(0.0));
    // Nothing on the request path registered anything since the breaker was built.
    assert_eq!(recorder.registrations.load(Ordering::Relaxed), registered);

    // Forced closed: failures pass and are not counted.
    handle.force_closed();
    for _ in 0..3 {
        assert!(!is_open(&call(&mut svc, Op::Fail).await));
    }
    assert_eq!(recorder.counter(&failures), 2, "nothing counted while forced closed");
    assert_eq!(recorder.counter(&transitions("closed", "forced_closed")), 1);

    // Forced open: reported open.
    handle.force_open();
    assert_eq!(recorder.gauge(&gauge), Some(2.0));
    assert_eq!(recorder.counter(&transitions("forced_closed", "open")), 1);
    handle.reset();
    assert_eq!(recorder.gauge(&gauge), Some(0.0));
}

#[test]
fn handles_registered_at_build_time_count_on_any_thread() {
    let recorder = Counting::default();
    let svc = {
        let _installed = metrics::set_default_local_recorder(&recorder);
        CircuitBreaker::new(
            inner(),
            CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap(),
        )
    };
    // The recorder is no longer installed on this thread, and the calls run on another.
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut svc = svc;
                let _ = call(&mut svc, Op::Fail).await;
                assert!(is_open(&call(&mut svc, Op::Ok).await));
            });
        });
    });
    assert_eq!(recorder.counter("palisade_circuit_breaker_failures_total{peer=-}"), 1);
    assert_eq!(recorder.counter("palisade_circuit_breaker_rejected_total{peer=-}"), 1);
    assert_eq!(
        recorder.counter("palisade_circuit_breaker_transitions_total{peer=-,from=closed,to=open}"),
        1
    );
    assert_eq!(recorder.gauge("palisade_circuit_breaker_state{peer=-}"), Some(2.0));
}

/// Threads change the state at the same time; after each round the gauge
/// shows the state the breaker is in (not the last transition to be reported).
#[test]
fn the_state_gauge_ends_at_the_current_state_under_contention() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 1_000;
    let recorder = Counting::default();
    let handle = {
        let _installed = metrics::set_default_local_recorder(&recorder);
        CircuitBreaker::new(inner(), CircuitBreakerConfig::builder().build().unwrap()).handle()
    };
    let gauge = "palisade_circuit_breaker_state{peer=-}";
    let barrier = std::sync::Barrier::new(THREADS);
    let mismatches = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (handle, barrier, recorder, mismatches) = (handle.clone(), &barrier, &recorder, &mismatches);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    match (t + round) % 3 {
                        0 => handle.force_open(),
                        1 => handle.reset(),
                        _ => handle.force_closed(),
                    }
                    barrier.wait();
                    if t == 0 && recorder.gauge(gauge) != Some(handle.state().gauge()) {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    barrier.wait();
                }
            });
        }
    });
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
}
