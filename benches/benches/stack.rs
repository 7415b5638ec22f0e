//! The preset's whole stack over in-process ready services, 3 and 10,000
//! instances, next to tower's nearest stack and tower-resilience's, in one
//! run (issue 16's budget: at most 250 ns over the bare service at 10,000
//! instances, at most 0.6x the overhead of tower's stack).
//!
//! - `palisade`: the layers of `palisade::preset` in its order: total timeout
//!   (off, as the preset's default) > retry (1, default budget) > bulkhead
//!   (1,024, no queue) > balancer (p2c over the instances) > per instance a
//!   breaker (seed numbers) > attempt timeout (30 s) > the service. The
//!   preset itself speaks gRPC over tonic channels; here the same layers
//!   speak `Plain` over `u64` requests, so the row measures the layers and
//!   not http (the http costs are the layer benches' `http` rows).
//! - `tower`: `Retry` (one retry, `TpsBudget`) > `Timeout` (30 s) >
//!   `ConcurrencyLimit` (1,024) > `Buffer` > p2c `Balance` (pending requests)
//!   over the instances: tower's `Retry` needs a `Clone` inner service and
//!   `Balance` is not one, so a tower user puts it behind a `Buffer`.
//! - `tower-resilience`: its retry > time limiter > bulkhead > circuit
//!   breaker around one instance (it has no balancer).
//!
//! One thread, each call after readiness, the inner service answering at once.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_benches::Echo;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::TimeoutKind;
use palisade_discovery::{PeerDiscoveryLayer, Weighted};
use palisade_retry::RetryLayer;
use palisade_timeout::TimeoutLayer;
use tower::balance::p2c::Balance;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceBuilder};

const ATTEMPT: Duration = Duration::from_secs(30);

fn palisade(n: usize) -> impl Service<u64, Response = u64, Error = BoxError> + Clone {
    let breaker = CircuitBreakerLayer::builder()
        .config(CircuitBreakerConfig::seed())
        .plain()
        .build()
        .unwrap();
    let attempt = TimeoutLayer::builder()
        .plain()
        .kind(TimeoutKind::Attempt)
        .timeout(Some(ATTEMPT))
        .build()
        .unwrap();
    let peers: Vec<_> = (0..n)
        .map(|i| {
            let peer = breaker.for_peer(format!("p{i}")).layer(attempt.layer(Echo));
            Ok::<_, Infallible>(Change::Insert(i, Weighted::new(peer, 1)))
        })
        .collect();
    let balancer = PeerDiscoveryLayer::builder()
        .plain()
        .build()
        .unwrap()
        .layer(futures::stream::iter(peers));
    ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .plain()
                .kind(TimeoutKind::Total)
                .timeout(None)
                .build()
                .unwrap(),
        )
        .layer(RetryLayer::builder().plain().retries(1).build().unwrap())
        .layer(
            BulkheadLayer::builder()
                .config(BulkheadConfig::builder().max_concurrent(1024).max_queue(0))
                .plain()
                .build()
                .unwrap(),
        )
        .service(balancer)
}

/// tower's retry policy: one retry under a `TpsBudget`.
#[derive(Clone)]
struct BudgetedRetry(Arc<TpsBudget>);

impl<Res, E> tower::retry::Policy<u64, Res, E> for BudgetedRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn tower_stack(n: usize) -> impl Service<u64, Response = u64, Error = tower::BoxError> + Clone {
    let balance = Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(vec![Echo; n]),
        CompleteOnResponse::default(),
    ));
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    ServiceBuilder::new()
        .retry(BudgetedRetry(budget))
        .timeout(ATTEMPT)
        .concurrency_limit(1024)
        .buffer(1024)
        .service(balance)
}

fn resilience() -> impl Service<u64, Response = u64, Error = BoxError> {
    let breaker = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let bulkhead = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1024)
        .build()
        .unwrap();
    let limiter = tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(ATTEMPT)
        .cancel_running_future(true)
        .build();
    let inner = limiter.layer(bulkhead.layer(breaker.layer(Echo)));
    tower::util::MapErrLayer::new(|e| -> BoxError { format!("{e:?}").into() }).layer(inner)
}

/// Times `iters` calls through `svc` on `rt`'s thread.
fn time<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        palisade_benches::drive(svc, iters).await;
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let mut group = c.benchmark_group("stack");

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter_custom(|iters| time(&rt, &mut bare, iters)));
    for n in [3usize, 10_000] {
        let mut ours = palisade(n);
        rt.block_on(palisade_benches::drive(&mut ours, 1));
        group.bench_function(BenchmarkId::new("palisade", n), |b| {
            b.iter_custom(|iters| time(&rt, &mut ours, iters))
        });
        let mut towers = tower_stack(n);
        rt.block_on(palisade_benches::drive(&mut towers, 1));
        group.bench_function(BenchmarkId::new("tower", n), |b| {
            b.iter_custom(|iters| time(&rt, &mut towers, iters))
        });
    }
    let mut theirs = resilience();
    group.bench_function("tower-resilience/1", |b| {
        b.iter_custom(|iters| time(&rt, &mut theirs, iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
