//! Bulkhead with free slots, next to tower's `ConcurrencyLimit` and
//! tower-resilience's bulkhead: one thread, and two threads sharing one limit.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_benches::Echo;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use tower::{Layer, Service};

const LIMIT: usize = 64;

fn palisade()
-> impl Service<u64, Response = u64, Error = palisade_core::BoxError, Future: Send> + Clone + Send + 'static {
    let config = BulkheadConfig::builder().max_concurrent(LIMIT).build().unwrap();
    BulkheadLayer::new(config).layer(Echo)
}

fn tower_limit() -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + 'static {
    tower::limit::ConcurrencyLimitLayer::new(LIMIT).layer(Echo)
}

fn resilience() -> impl Service<u64, Response = u64, Error: std::fmt::Debug, Future: Send> + Clone + Send + 'static {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT)
        .build()
        .unwrap()
        .layer(Echo)
}

fn one_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("bulkhead/free_slots");
    macro_rules! bench {
        ($name:literal, $make:expr) => {
            palisade_benches::one_thread(&mut group, &rt, $name, || $make)
        };
    }
    bench!("bare", Echo);
    bench!("palisade", palisade());
    bench!("tower_concurrency_limit", tower_limit());
    bench!("tower_resilience", resilience());
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("bulkhead/contention_2_threads");
    macro_rules! bench {
        ($name:literal, $make:expr) => {
            palisade_benches::two_threads(&mut group, &rt, $name, || $make)
        };
    }
    bench!("palisade", palisade());
    bench!("tower_concurrency_limit", tower_limit());
    bench!("tower_resilience", resilience());
    group.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
