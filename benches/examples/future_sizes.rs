//! Prints the size of each layer's response future in the preset's stack
//! (Plain, over a ready no-op): how many bytes each `call` moves.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use palisade_benches::Echo;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::error::TimeoutKind;
use palisade_discovery::{PeerDiscoveryLayer, Weighted};
use palisade_retry::RetryLayer;
use palisade_timeout::TimeoutLayer;
use tower::discover::Change;
use tower::{Layer, Service};

fn size<S: Service<u64>>(name: &str, service: &mut S) {
    let future = service.call(1);
    println!("{name:<40} {:>5} bytes", std::mem::size_of_val(&future));
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _e = rt.enter();
    let attempt = TimeoutLayer::builder()
        .plain()
        .kind(TimeoutKind::Attempt)
        .timeout(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .config(CircuitBreakerConfig::seed())
        .plain()
        .build()
        .unwrap();
    size("attempt timeout", &mut attempt.layer(Echo));
    size("breaker > attempt timeout", &mut breaker.layer(attempt.layer(Echo)));
    let peers: Vec<_> = (0..3)
        .map(|i| {
            Ok::<_, Infallible>(Change::Insert(
                i,
                Weighted::new(breaker.for_peer(format!("p{i}")).layer(attempt.layer(Echo)), 1),
            ))
        })
        .collect();
    let mut balancer = PeerDiscoveryLayer::builder()
        .plain()
        .build()
        .unwrap()
        .layer(futures::stream::iter(peers));
    rt.block_on(tower::ServiceExt::ready(&mut balancer)).unwrap();
    size("balancer > ...", &mut balancer);
    let bulkhead = BulkheadLayer::builder()
        .config(BulkheadConfig::builder().max_concurrent(1024))
        .plain()
        .build()
        .unwrap();
    let mut b = bulkhead.layer(balancer.clone());
    rt.block_on(tower::ServiceExt::ready(&mut b)).unwrap();
    size("bulkhead > ...", &mut b);
    let mut r = RetryLayer::builder()
        .plain()
        .retries(1)
        .build()
        .unwrap()
        .layer(bulkhead.layer(balancer.clone()));
    rt.block_on(tower::ServiceExt::ready(&mut r)).unwrap();
    size("retry > ...", &mut r);
    let total = TimeoutLayer::builder()
        .plain()
        .kind(TimeoutKind::Total)
        .timeout(None)
        .build()
        .unwrap();
    let mut t = total.layer(
        RetryLayer::builder()
            .plain()
            .retries(1)
            .build()
            .unwrap()
            .layer(bulkhead.layer(balancer)),
    );
    rt.block_on(tower::ServiceExt::ready(&mut t)).unwrap();
    size("total timeout > ...", &mut t);
}
