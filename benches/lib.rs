//! Criterion benchmarks of Palisade live in `benches/benches/`; run them with
//! `cargo bench -p palisade-benches`. This library holds what they share: a
//! ready no-op service and the loop that drives a service.

// Benchmarks measure wall time: the std clock is the right one here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

/// A service that is always ready and answers its request at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

/// Calls `svc` `iters` times, each after waiting for readiness.
///
/// # Panics
///
/// If the service fails: a benchmark of a failing service measures nothing.
pub async fn drive<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..iters {
        #[allow(clippy::unwrap_used)]
        svc.ready().await.unwrap();
        #[allow(clippy::unwrap_used)]
        black_box(svc.call(black_box(i)).await.unwrap());
    }
}

/// Benchmarks `make()`'s service on one thread of `rt`: `iters` calls in a row.
pub fn one_thread<S, F>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    make: F,
) where
    F: Fn() -> S,
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut svc = make();
            rt.block_on(async move {
                let start = std::time::Instant::now();
                drive(&mut svc, iters).await;
                start.elapsed()
            })
        })
    });
}

/// Benchmarks `make()`'s service shared by two tasks on `rt` (two worker
/// threads): clones contend for its state, `iters` calls in all.
pub fn two_threads<S, F>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    make: F,
) where
    F: Fn() -> S,
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let svc = make();
            rt.block_on(async move {
                let start = std::time::Instant::now();
                let mut first = svc.clone();
                let mut second = svc;
                let a = tokio::spawn(async move { drive(&mut first, iters / 2).await });
                let b = tokio::spawn(async move { drive(&mut second, iters - iters / 2).await });
                #[allow(clippy::unwrap_used)]
                a.await.unwrap();
                #[allow(clippy::unwrap_used)]
                b.await.unwrap();
                start.elapsed()
            })
        })
    });
}
