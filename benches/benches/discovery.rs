//! Pick-and-call over 3, 100 and 10,000 ready no-op peers: palisade's
//! `PeerDiscovery` (power of two choices among available peers, pending
//! requests as load) next to `tower::balance::p2c::Balance` over the same
//! services with tower's pending-requests load. One thread.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_benches::Echo;
use palisade_discovery::{AlwaysAvailable, PeerDiscovery};
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};

async fn drive<S>(svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    palisade_benches::drive(svc, iters).await;
    start.elapsed()
}

fn ours(n: usize) -> impl Service<u64, Response = u64, Error = palisade_core::BoxError> {
    let changes = (0..n).map(|i| Ok::<_, Infallible>(Change::Insert(i, AlwaysAvailable::new(Echo))));
    PeerDiscovery::new(futures::stream::iter(changes.collect::<Vec<_>>()))
}

/// A no-op peer whose breaker is open (`open`) or closed.
#[derive(Clone, Copy)]
struct Gated {
    open: bool,
}

impl palisade_core::peer::CheckAvailability for Gated {
    fn availability(&self) -> palisade_core::peer::Availability {
        if self.open {
            palisade_core::peer::Availability::Unavailable {
                reason: palisade_core::peer::Unavailable::Open,
                retry_in: Duration::from_secs(10),
            }
        } else {
            palisade_core::peer::Availability::Available
        }
    }
}

impl palisade_discovery::PeerWeight for Gated {}

impl Service<u64> for Gated {
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

/// 10,000 peers of which 90% have an open breaker.
fn degraded() -> impl Service<u64, Response = u64, Error = palisade_core::BoxError> {
    let changes = (0..10_000usize).map(|i| Ok::<_, Infallible>(Change::Insert(i, Gated { open: i % 10 != 0 })));
    PeerDiscovery::new(futures::stream::iter(changes.collect::<Vec<_>>()))
}

fn towers(n: usize) -> impl Service<u64, Response = u64, Error = tower::BoxError> {
    let list = ServiceList::new(vec![Echo; n]);
    Balance::new(PendingRequestsDiscover::new(list, CompleteOnResponse::default()))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("discovery pick-and-call");
    for n in [3usize, 100, 10_000] {
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
    let mut palisade = degraded();
    rt.block_on(drive(&mut palisade, 1_000));
    group.bench_function(BenchmarkId::new("palisade, 90% open", 10_000), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut palisade, iters)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
