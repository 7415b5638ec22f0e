//! A closed circuit breaker over a ready no-op service, next to
//! tower-resilience's circuit breaker and failsafe's: one thread, and two
//! threads sharing one breaker. Every breaker uses a consecutive-failures
//! policy (3 failures), so the comparison is like for like; two more rows
//! measure our balancer preset (5 in a row) and the preset with a
//! failure-rate policy added.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use palisade_benches::Echo;
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use tower::{Layer, Service};

fn palisade()
-> impl Service<u64, Response = u64, Error = palisade_core::BoxError, Future: Send> + Clone + Send + 'static {
    let config = CircuitBreakerConfig::builder().failure_threshold(3).build().unwrap();
    CircuitBreakerLayer::new(config).layer(Echo)
}

/// The balancer preset (5 in a row): the same closed path as `palisade`.
fn palisade_for_balancer()
-> impl Service<u64, Response = u64, Error = palisade_core::BoxError, Future: Send> + Clone + Send + 'static {
    CircuitBreakerLayer::new(CircuitBreakerConfig::for_balancer().build().unwrap()).layer(Echo)
}

/// The preset plus a failure-rate policy, which counts every call (what the
/// crate docs weigh against leaving it out of the preset).
fn palisade_rate_policy()
-> impl Service<u64, Response = u64, Error = palisade_core::BoxError, Future: Send> + Clone + Send + 'static {
    let config = CircuitBreakerConfig::for_balancer()
        .failure_rate_threshold(0.5)
        .min_requests(20)
        .rate_window(Duration::from_secs(10))
        .build()
        .unwrap();
    CircuitBreakerLayer::new(config).layer(Echo)
}

fn resilience() -> impl Service<u64, Response = u64, Error: std::fmt::Debug, Future: Send> + Clone + Send + 'static {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap()
        .layer(Echo)
}

type FailsafeMachine =
    failsafe::StateMachine<failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Exponential>, ()>;

/// failsafe has no tower layer: its synchronous `call` wraps the ready inner call.
#[derive(Clone)]
struct Failsafe {
    breaker: FailsafeMachine,
    inner: Echo,
}

impl Service<u64> for Failsafe {
    type Response = u64;
    type Error = failsafe::Error<Infallible>;
    type Future = Ready<Result<u64, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    #[inline]
    fn call(&mut self, x: u64) -> Self::Future {
        let inner = &mut self.inner;
        ready(self.breaker.call(|| inner.call(x).into_inner()))
    }
}

fn failsafe() -> Failsafe {
    let backoff = failsafe::backoff::exponential(Duration::from_secs(10), Duration::from_secs(120));
    let policy = failsafe::failure_policy::consecutive_failures(3, backoff);
    Failsafe {
        breaker: failsafe::Config::new().failure_policy(policy).build(),
        inner: Echo,
    }
}

fn one_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("circuit_breaker/closed");
    macro_rules! bench {
        ($name:literal, $make:expr) => {
            palisade_benches::one_thread(&mut group, &rt, $name, || $make)
        };
    }
    bench!("bare", Echo);
    bench!("palisade", palisade());
    bench!("palisade_for_balancer", palisade_for_balancer());
    bench!("palisade_rate_policy", palisade_rate_policy());
    bench!("tower_resilience", resilience());
    bench!("failsafe", failsafe());
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("circuit_breaker/closed_2_threads");
    macro_rules! bench {
        ($name:literal, $make:expr) => {
            palisade_benches::two_threads(&mut group, &rt, $name, || $make)
        };
    }
    bench!("bare", Echo);
    bench!("palisade", palisade());
    bench!("palisade_for_balancer", palisade_for_balancer());
    bench!("palisade_rate_policy", palisade_rate_policy());
    bench!("tower_resilience", resilience());
    bench!("failsafe", failsafe());
    group.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
