//! The retry layer's success path allocates nothing, and a retried call
//! allocates its retry state once however many retries it makes; proved with
//! a counting global allocator.
//!
//! The counting is done by `allocation-counter`, which installs the global
//! allocator itself, so this file needs no unsafe code. It counts the current
//! thread's allocations; every call here is polled on this thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::backoff::Backoff;
use palisade_core::error::BoxError;
use palisade_core::retry::RetryDecision;
use palisade_retry::RetryLayer;
use tower::{Layer, service_fn};

mod support;
use support::{allocations_during, call_once};

/// A zero-sized error: boxing it allocates nothing, so only the layer's own
/// allocations are counted.
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

#[test]
fn success_path_allocates_nothing_with_the_default_budget() {
    let mut svc = RetryLayer::new().layer(service_fn(|n: u64| std::future::ready(Ok::<_, BoxError>(n * 2))));
    call_once(&mut svc, 1).unwrap(); // warm up
    for n in 0..100 {
        let (allocations, answer) = allocations_during(|| call_once(&mut svc, n).unwrap());
        assert_eq!(answer, n * 2);
        assert_eq!(allocations, 0, "success path allocated");
    }
}

#[test]
fn a_retried_call_allocates_its_retry_state_once() {
    // Each call fails `failures` times, then succeeds.
    let failures_left = Arc::new(AtomicU32::new(0));
    let left = failures_left.clone();
    let inner = service_fn(move |n: u64| {
        let failed = left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| f.checked_sub(1))
            .is_ok();
        std::future::ready(if failed {
            Err(Box::new(Refused) as BoxError)
        } else {
            Ok(n)
        })
    });
    let layer = RetryLayer::builder()
        .plain()
        .retries(5)
        .no_budget()
        .backoff(Backoff::constant(Duration::ZERO).build().unwrap())
        .predicate(|_: &u64, result: &Result<u64, BoxError>| {
            if result.is_err() {
                RetryDecision::Retry
            } else {
                RetryDecision::DoNotRetry
            }
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(inner);
    failures_left.store(1, Ordering::Relaxed);
    call_once(&mut svc, 0).unwrap(); // warm up
    for failures in [1, 3, 5] {
        failures_left.store(failures, Ordering::Relaxed);
        let (allocations, answer) = allocations_during(|| call_once(&mut svc, 7).unwrap());
        assert_eq!(answer, 7);
        assert_eq!(failures_left.load(Ordering::Relaxed), 0, "every failure was retried");
        assert_eq!(allocations, 1, "{failures} retries: one allocation for the retry state");
    }
}
