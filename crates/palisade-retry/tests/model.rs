//! Proptest against a reference model: attempts never exceed retries + 1 and
//! the total sleep never passes the call's deadline.
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

fn run(backoff: Backoff, retries: u32, deadline_ms: Option<u64>) -> (Vec<u64>, u64) {
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
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn attempts_and_sleeps_stay_within_bounds(
        (backoff, jittered) in backoff_strategy(),
        retries in 0u32..6,
        deadline_ms in prop::option::of(1u64..3000),
    ) {
        let (at, total) = run(backoff, retries, deadline_ms);
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
