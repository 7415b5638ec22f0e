//! Pick-and-call, side by side with `tower::balance::p2c::Balance` (pending
//! requests as load), in one run, each with **1 and 2 caller threads**:
//!
//! - `discovery pick-and-call`: 3, 100 and 10,000 ready no-op peers
//!   (palisade's peers are `AlwaysAvailable`).
//! - `discovery under outage`: no-op peers, each behind its own real circuit
//!   breaker, of which a share is open (forced open, so that the default
//!   all-open policy cannot reset them and 100% is a steady state of failing
//!   fast): 0%, 50%, 99% and 100% of 10,000 peers, and 100% of 3 and of 100
//!   peers. Tower's p2c runs the same shares as peers that are never ready
//!   (its way of leaving a peer out); it has no answer at 100% (it waits for
//!   a ready peer forever), so that row is palisade's alone.
//!
//! Two threads: palisade's balancer is shared by its clones, so two tasks on
//! a two-worker runtime call through two clones (contended selection).
//! Tower's `Balance` is not `Clone`: it is shared the way a tower user shares
//! it, behind a `tower::buffer::Buffer` (one worker task), whose clones the
//! two tasks call through.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_benches::Echo;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_discovery::{AlwaysAvailable, PeerDiscovery, Weighted};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service, ServiceExt};

const FLEET: usize = 10_000;

async fn drive<S>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    palisade_benches::drive(svc, iters).await;
    start.elapsed()
}

/// Calls `iters` times, each after readiness, keeping every answer (a call
/// that no peer can take fails fast: that is what is measured at 100%).
async fn drive_any<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
{
    for i in 0..iters {
        if svc.ready().await.is_err() {
            continue;
        }
        let _ = black_box(svc.call(black_box(i)).await);
    }
}

type Plain =
    PeerDiscovery<futures::stream::Iter<std::vec::IntoIter<Result<Change<usize, AlwaysAvailable<Echo>>, Infallible>>>>;

fn ours(n: usize) -> Plain {
    let changes = (0..n).map(|i| Ok::<_, Infallible>(Change::Insert(i, AlwaysAvailable::new(Echo))));
    PeerDiscovery::new(futures::stream::iter(changes.collect::<Vec<_>>()))
}

fn towers(n: usize) -> impl Service<u64, Response = u64, Error = tower::BoxError, Future: Send> + Send + 'static {
    let list = ServiceList::new(vec![Echo; n]);
    Balance::new(PendingRequestsDiscover::new(list, CompleteOnResponse::default()))
}

type Breakered = Weighted<CircuitBreaker<Echo>>;
type Fleet = PeerDiscovery<futures::stream::Iter<std::vec::IntoIter<Result<Change<usize, Breakered>, Infallible>>>>;

/// `n` peers behind real breakers, `open_percent` of them forced open.
fn fleet(n: usize, open_percent: usize) -> Fleet {
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap());
    let open = n * open_percent / 100;
    let changes: Vec<_> = (0..n)
        .map(|i| {
            let peer = layer.for_peer(format!("p{i}")).layer(Echo);
            if i < open {
                peer.handle().force_open();
            }
            Ok(Change::Insert(i, Weighted::new(peer, 1)))
        })
        .collect();
    PeerDiscovery::new(futures::stream::iter(changes))
}

/// A peer tower's balancer never sees ready.
#[derive(Clone, Copy)]
enum Maybe {
    Ready,
    Never,
}

impl Service<u64> for Maybe {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Maybe::Ready => Poll::Ready(Ok(())),
            Maybe::Never => Poll::Pending,
        }
    }

    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

fn towers_degraded(
    n: usize,
    open_percent: usize,
) -> impl Service<u64, Response = u64, Error = tower::BoxError, Future: Send> + Send + 'static {
    let open = n * open_percent / 100;
    let peers: Vec<Maybe> = (0..n)
        .map(|i| if i < open { Maybe::Never } else { Maybe::Ready })
        .collect();
    Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(peers),
        CompleteOnResponse::default(),
    ))
}

/// Times `iters` calls through `svc` (failures included) on `rt`'s thread.
fn time_one<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
{
    rt.block_on(async {
        let start = Instant::now();
        drive_any(svc, iters).await;
        start.elapsed()
    })
}

/// Times `iters` calls in all, through two clones of `svc` from two tasks on
/// `rt` (two worker threads).
fn time_two<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    let (mut first, mut second) = (svc.clone(), svc.clone());
    rt.block_on(async move {
        let start = Instant::now();
        let a = tokio::spawn(async move { drive_any(&mut first, iters / 2).await });
        let b = tokio::spawn(async move { drive_any(&mut second, iters - iters / 2).await });
        a.await.unwrap();
        b.await.unwrap();
        start.elapsed()
    })
}

/// Tower's balancer behind a `Buffer`, built on `rt` (its worker runs there).
fn buffered<S>(rt: &tokio::runtime::Runtime, make: impl FnOnce() -> S) -> Buffer<u64, <S as Service<u64>>::Future>
where
    S: Service<u64, Response = u64, Error = tower::BoxError> + Send + 'static,
    S::Future: Send,
{
    let _entered = rt.enter();
    Buffer::new(make(), 1024)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    let mut group = c.benchmark_group("discovery pick-and-call");
    for n in [3usize, 100, FLEET] {
        let mut palisade = ours(n);
        rt.block_on(drive(&mut palisade, 1));
        group.bench_function(BenchmarkId::new("palisade, 1 thread", n), |b| {
            b.iter_custom(|iters| time_one(&rt, &mut palisade, iters))
        });
        group.bench_function(BenchmarkId::new("palisade, 2 threads", n), |b| {
            b.iter_custom(|iters| time_two(&two, &palisade, iters))
        });
        let mut tower_p2c = towers(n);
        rt.block_on(drive(&mut tower_p2c, 1));
        group.bench_function(BenchmarkId::new("tower p2c, 1 thread", n), |b| {
            b.iter_custom(|iters| time_one(&rt, &mut tower_p2c, iters))
        });
        let shared = buffered(&two, || towers(n));
        group.bench_function(BenchmarkId::new("tower p2c (Buffer), 2 threads", n), |b| {
            b.iter_custom(|iters| time_two(&two, &shared, iters))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("discovery under outage");
    let cases = [
        (FLEET, 0usize),
        (FLEET, 50),
        (FLEET, 99),
        (FLEET, 100),
        (100, 100),
        (3, 100),
    ];
    for (n, open) in cases {
        let case = format!("{n} peers, {open}% open");
        let mut palisade = fleet(n, open);
        rt.block_on(drive_any(&mut palisade, 1_000));
        group.bench_function(BenchmarkId::new("palisade, 1 thread", &case), |b| {
            b.iter_custom(|iters| time_one(&rt, &mut palisade, iters))
        });
        group.bench_function(BenchmarkId::new("palisade, 2 threads", &case), |b| {
            b.iter_custom(|iters| time_two(&two, &palisade, iters))
        });
        if open < 100 {
            let mut tower_p2c = towers_degraded(n, open);
            rt.block_on(drive(&mut tower_p2c, 1_000));
            group.bench_function(BenchmarkId::new("tower p2c, 1 thread", &case), |b| {
                b.iter_custom(|iters| time_one(&rt, &mut tower_p2c, iters))
            });
            let shared = buffered(&two, || towers_degraded(n, open));
            group.bench_function(BenchmarkId::new("tower p2c (Buffer), 2 threads", &case), |b| {
                b.iter_custom(|iters| time_two(&two, &shared, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
