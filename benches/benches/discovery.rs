//! Pick-and-call, side by side with `tower::balance::p2c::Balance` (pending
//! requests as load), in one run:
//!
//! - `discovery pick-and-call`: 3, 100 and 10,000 ready no-op peers, one
//!   thread (palisade's peers are `AlwaysAvailable`).
//! - `discovery under outage`: 10,000 no-op peers, each behind its own real
//!   circuit breaker, of which 0%, 50%, 99% or 100% are open (forced open,
//!   so that the default all-open policy cannot reset them and 100% is a
//!   steady state of failing fast), on one thread and on two threads calling
//!   through clones. Tower's p2c runs the same fractions as peers that are
//!   never ready (its way of leaving a peer out), on one thread only (its
//!   balancer is not shared by clones); it has no answer at 100% (it waits
//!   for a ready peer forever).
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

fn ours(n: usize) -> impl Service<u64, Response = u64, Error = palisade_core::BoxError> {
    let changes = (0..n).map(|i| Ok::<_, Infallible>(Change::Insert(i, AlwaysAvailable::new(Echo))));
    PeerDiscovery::new(futures::stream::iter(changes.collect::<Vec<_>>()))
}

fn towers(n: usize) -> impl Service<u64, Response = u64, Error = tower::BoxError> {
    let list = ServiceList::new(vec![Echo; n]);
    Balance::new(PendingRequestsDiscover::new(list, CompleteOnResponse::default()))
}

type Breakered = Weighted<CircuitBreaker<Echo>>;
type Fleet = PeerDiscovery<futures::stream::Iter<std::vec::IntoIter<Result<Change<usize, Breakered>, Infallible>>>>;

/// 10,000 peers behind real breakers, `open_percent` of them forced open.
fn fleet(open_percent: usize) -> Fleet {
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap());
    let open = FLEET * open_percent / 100;
    let changes: Vec<_> = (0..FLEET)
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

fn towers_degraded(open_percent: usize) -> impl Service<u64, Response = u64, Error = tower::BoxError> {
    let open = FLEET * open_percent / 100;
    let peers: Vec<Maybe> = (0..FLEET)
        .map(|i| if i < open { Maybe::Never } else { Maybe::Ready })
        .collect();
    Balance::new(PendingRequestsDiscover::new(
        ServiceList::new(peers),
        CompleteOnResponse::default(),
    ))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("discovery pick-and-call");
    for n in [3usize, 100, FLEET] {
        let mut palisade = ours(n);
        rt.block_on(drive(&mut palisade, 1));
        group.bench_function(BenchmarkId::new("palisade", n), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut palisade, iters)))
        });
        let mut tower_p2c = towers(n);
        rt.block_on(drive(&mut tower_p2c, 1));
        group.bench_function(BenchmarkId::new("tower p2c", n), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut tower_p2c, iters)))
        });
    }
    group.finish();

    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("discovery under outage, 10000 peers");
    for open in [0usize, 50, 99, 100] {
        let mut palisade = fleet(open);
        rt.block_on(drive_any(&mut palisade, 1_000));
        group.bench_function(BenchmarkId::new("palisade, 1 thread", format!("{open}% open")), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    drive_any(&mut palisade, iters).await;
                    start.elapsed()
                })
            })
        });
        let shared = palisade.clone();
        group.bench_function(BenchmarkId::new("palisade, 2 threads", format!("{open}% open")), |b| {
            b.iter_custom(|iters| {
                let (mut first, mut second) = (shared.clone(), shared.clone());
                two.block_on(async move {
                    let start = Instant::now();
                    let a = tokio::spawn(async move { drive_any(&mut first, iters / 2).await });
                    let b = tokio::spawn(async move { drive_any(&mut second, iters - iters / 2).await });
                    a.await.unwrap();
                    b.await.unwrap();
                    start.elapsed()
                })
            })
        });
        if open < 100 {
            let mut tower_p2c = towers_degraded(open);
            rt.block_on(drive(&mut tower_p2c, 1_000));
            group.bench_function(BenchmarkId::new("tower p2c, 1 thread", format!("{open}% open")), |b| {
                b.iter_custom(|iters| rt.block_on(drive(&mut tower_p2c, iters)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
