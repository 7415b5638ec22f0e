//! Threads hammer a half-open breaker: the probe limit holds.
#![allow(missing_docs, clippy::disallowed_types, clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
use palisade_core::classify::{Outcome, classify_fn};
use palisade_core::peer::CheckAvailability;
use tower::Service;

/// Counts calls admitted past the breaker and still in flight.
struct InFlight {
    now: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Counting {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

/// Ready at once; the call stops being in flight when the future completes
/// (before the breaker hears the outcome) or is dropped.
struct CallFuture {
    outcome: Outcome,
    in_flight: Option<InFlight>,
}

impl Future for CallFuture {
    type Output = Result<Outcome, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        self.in_flight = None;
        Poll::Ready(Ok(self.outcome))
    }
}

impl Service<Outcome> for Counting {
    type Response = Outcome;
    type Error = std::convert::Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outcome: Outcome) -> Self::Future {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        CallFuture {
            outcome,
            in_flight: Some(InFlight { now: self.now.clone() }),
        }
    }
}

#[test]
fn the_half_open_probe_limit_holds_under_contention() {
    const PROBES: u32 = 3;
    const THREADS: usize = 4;
    const ITERATIONS: usize = 100_000;
    let counting = Counting {
        now: Arc::new(AtomicUsize::new(0)),
        max: Arc::new(AtomicUsize::new(0)),
    };
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .cooldown(Duration::from_millis(1))
        .max_cooldown(Duration::from_millis(1))
        .half_open_max_probes(PROBES)
        // Never closes, never reclaims: every admitted call is a probe.
        .success_threshold(u32::MAX)
        .probe_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let classify = classify_fn(|r: Result<&Outcome, &std::convert::Infallible>| match r {
        Ok(o) => *o,
        Err(never) => match *never {},
    });
    let svc = CircuitBreaker::with_protocol(counting.clone(), config, classify);
    let handle = svc.handle();
    // Trip it, then the first question after the 1 ms cooldown makes it half-open.
    assert!(svc.clone().call(Outcome::Failure).now_or_never().unwrap().is_ok());
    assert_eq!(handle.state(), CircuitState::Open);
    // Real time (no tokio runtime here): wait out the cooldown.
    std::thread::sleep(Duration::from_millis(2));
    assert!(handle.availability().is_available());
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    let admitted = Arc::new(AtomicUsize::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let mut svc = svc.clone();
            let admitted = admitted.clone();
            let handle = handle.clone();
            s.spawn(move || {
                let mut rng = fastrand_seed(t as u64 + 1);
                let mut held = Vec::new();
                for i in 0..ITERATIONS {
                    if i % 1024 == 0 && std::time::Instant::now() > deadline {
                        break;
                    }
                    let outcome = if next(&mut rng).is_multiple_of(3) {
                        Outcome::Ignored
                    } else {
                        Outcome::Success
                    };
                    let fut = svc.call(outcome);
                    match next(&mut rng) % 4 {
                        // Hold the future a while (a probe in flight), then finish or drop it.
                        0 => held.push(fut),
                        1 => drop(fut),
                        _ => {
                            if fut.now_or_never().unwrap().is_ok() {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if held.len() > 2 || next(&mut rng).is_multiple_of(5) {
                        for f in held.drain(..) {
                            if next(&mut rng).is_multiple_of(2) {
                                let _ = f.now_or_never();
                            }
                        }
                    }
                    assert!(handle.snapshot().probes_in_flight <= PROBES);
                }
            });
        }
    });
    assert!(
        counting.max.load(Ordering::SeqCst) <= PROBES as usize,
        "max {}",
        counting.max.load(Ordering::SeqCst)
    );
    assert_eq!(
        counting.max.load(Ordering::SeqCst),
        PROBES as usize,
        "the limit was reached"
    );
    assert!(admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(counting.now.load(Ordering::SeqCst), 0);
    assert_eq!(handle.snapshot().probes_in_flight, 0, "every slot came back");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

fn fastrand_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

fn next(state: &mut u64) -> u64 {
    // xorshift64
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
