//! Proptest against a reference model: attempts never exceed retries + 1 and
//! the total sleep never passes the call's deadline.
//!
//! The jitter is seeded from the case (`jitter_seed`), so a failure proptest
//! records replays exactly. Run it at `PROPTEST_CASES=20000` after touching
//! the deadline checks: with full jitter a sub-millisecond delay used to end,
//! on tokio's millisecond timer, exactly at the deadline.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::BoxError;
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::retry::Retryable;
use palisade_retry::{ReplayBody, RetryLayer};
use parking_lot::Mutex;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

/// The attempt times (ms from the start) the model expects with no jitter.
fn model(backoff: &Backoff, retries: u32, deadline_ms: Option<u64>) -> Vec<u64> {
    let mut at = vec![0u64];
    let mut now = 0u64;
    for n in 0..retries {
        let delay = backoff.undithered(n).as_millis() as u64;
        if deadline_ms.is_some_and(|d| now + delay >= d) {
            break;
        }
        now += delay;
        at.push(now);
    }
    at
}

fn run(backoff: Backoff, retries: u32, deadline_ms: Option<u64>, seed: u64) -> (Vec<u64>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let inner = service_fn(move |_req: http::Request<ReplayBody<Full<Bytes>>>| {
            log2.lock().push(Instant::now());
            async move { Err::<http::Response<()>, BoxError>(Retryable::yes("down").into()) }
        });
        let layer = RetryLayer::builder()
            .http()
            .retries(retries)
            .backoff(backoff)
            .no_budget()
            .jitter_seed(seed)
            .build()
            .unwrap();
        let svc = layer.layer(inner);
        let mut req = http::Request::get("http://peer/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Some(ms) = deadline_ms {
            req.call_options_mut()
                .set_deadline(Deadline::after(Duration::from_millis(ms)));
        }
        let start = Instant::now();
        let _ = svc.oneshot(req).await;
        let total = (Instant::now() - start).as_millis() as u64;
        let at = log.lock().iter().map(|t| (*t - start).as_millis() as u64).collect();
        (at, total)
    })
}

fn backoff_strategy() -> impl Strategy<Value = (Backoff, bool)> {
    (0u64..400, 0u8..3, prop::bool::ANY).prop_map(|(base, shape, jitter)| {
        let base = Duration::from_millis(base);
        let builder = match shape {
            0 => Backoff::constant(base),
            1 => Backoff::linear(base),
            _ => Backoff::exponential(base).factor(2.0),
        };
        let builder = builder.max_delay(Duration::from_millis(1000).max(base));
        let b = builder
            .jitter(if jitter { Jitter::Full } else { Jitter::None })
            .build()
            .unwrap();
        (b, jitter)
    })
}

proptest! {
    // `PROPTEST_CASES` overrides the count.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200)
    ))]

    #[test]
    fn attempts_and_sleeps_stay_within_bounds(
        (backoff, jittered) in backoff_strategy(),
        retries in 0u32..6,
        deadline_ms in prop::option::of(1u64..3000),
        seed in any::<u64>(),
    ) {
        let (at, total) = run(backoff, retries, deadline_ms, seed);
        prop_assert!(at.len() as u32 <= retries + 1);
        if let Some(d) = deadline_ms {
            prop_assert!(total < d, "slept {} ms past a {} ms deadline", total, d);
            prop_assert!(at.iter().all(|t| *t < d));
        }
        if !jittered {
            prop_assert_eq!(at, model(&backoff, retries, deadline_ms));
        }
    }
}

fn full_jitter_320ms() -> Backoff {
    Backoff::constant(Duration::from_millis(320))
        .jitter(Jitter::Full)
        .build()
        .unwrap()
}

/// The minimal case: constant 320 ms, full jitter, 5 retries, a
/// 662 ms deadline. A jittered delay has sub-millisecond precision and tokio's
/// timer rounds it up to the next millisecond, so a backoff planned to end
/// just before the deadline used to wake exactly at it.
#[test]
fn a_jittered_backoff_never_wakes_at_the_deadline() {
    for seed in 0..500 {
        let (at, total) = run(full_jitter_320ms(), 5, Some(662), seed);
        assert!(
            total < 662,
            "seed {seed}: slept {total} ms past a 662 ms deadline (attempts at {at:?})"
        );
    }
}

#[test]
fn a_seeded_layer_replays_its_jitter() {
    let runs: Vec<_> = (0..2).map(|_| run(full_jitter_320ms(), 5, None, 42)).collect();
    assert_eq!(runs[0], runs[1], "one seed, one run");
    let other = run(full_jitter_320ms(), 5, None, 43);
    assert_ne!(runs[0].0, other.0, "another seed, other delays");
}
