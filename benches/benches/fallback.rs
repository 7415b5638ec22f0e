//! The fallback layer next to a bare service and tower-resilience's fallback:
//! the success path (the cost every call pays) and the fallback path.
//!
//! Futures are polled once with a no-op waker (every service here answers at
//! once), so the numbers are the layers' own cost, without a runtime.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::fmt;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_core::BoxError;
use palisade_fallback::FallbackLayer;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
struct Down;

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

/// Answers `x` at once, or fails with `Down` when `fail` is set.
#[derive(Clone, Copy)]
struct Echo {
    fail: bool,
}

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Down;
    type Future = Ready<Result<u64, Down>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Down>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, x: u64) -> Self::Future {
        ready(if self.fail { Err(Down) } else { Ok(x) })
    }
}

#[inline]
fn call_once<S: Service<u64>>(svc: &mut S, x: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Ok(())) = svc.poll_ready(&mut cx) else {
        panic!("not ready")
    };
    let mut future = pin!(svc.call(x));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("pending"),
    }
}

fn bench<S>(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, mut svc: S)
where
    S: Service<u64>,
    S::Response: fmt::Debug,
    S::Error: fmt::Debug,
{
    let mut i = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(call_once(&mut svc, black_box(i)).unwrap())
        })
    });
}

fn palisade_value(fail: bool) -> impl Service<u64, Response = u64, Error = BoxError> {
    FallbackLayer::builder()
        .plain()
        .value(7u64)
        .unmarked()
        .build()
        .unwrap()
        .layer(Echo { fail })
}

fn palisade_served(fail: bool) -> impl Service<u64, Response = palisade_fallback::Served<u64>, Error = BoxError> {
    FallbackLayer::builder()
        .plain()
        .keep(|x: &u64| *x)
        .from_fn(|_: &BoxError, x: u64| x + 1)
        .served()
        .build()
        .unwrap()
        .layer(Echo { fail })
}

fn resilience_value(fail: bool) -> impl Service<u64, Response = u64, Error: fmt::Debug> {
    tower_resilience::fallback::FallbackLayer::<u64, u64, Down>::value(7).layer(Echo { fail })
}

fn success(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback/success");
    bench(&mut group, "bare", Echo { fail: false });
    bench(&mut group, "palisade value unmarked", palisade_value(false));
    bench(&mut group, "palisade fn+keep served", palisade_served(false));
    bench(&mut group, "tower-resilience value", resilience_value(false));
    group.finish();
}

fn failure(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback/answered");
    bench(&mut group, "palisade value unmarked", palisade_value(true));
    bench(&mut group, "palisade fn+keep served", palisade_served(true));
    bench(&mut group, "tower-resilience value", resilience_value(true));
    group.finish();
}

criterion_group!(benches, success, failure);
criterion_main!(benches);
