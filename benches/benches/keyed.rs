//! Per-key state and per-route overrides on the request path: the keyed
//! breaker and the keyed bulkhead finding a call's breaker or bulkhead among
//! 16 routes, and the timeout finding a call's limit among 16 route
//! overrides. Each call goes to route 11 of 16 over a ready http no-op.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_bulkhead::{BulkheadConfig, KeyedBulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer};
use palisade_core::protocol::Http;
use palisade_timeout::TimeoutLayer;
use tower::{Layer, Service};

const ROUTES: usize = 16;

fn route(i: usize) -> String {
    format!("/pkg.Service{i}/Method")
}

/// An http no-op: answers an empty response.
#[derive(Clone, Copy)]
struct HttpNoop;

impl Service<http::Request<()>> for HttpNoop {
    type Response = http::Response<http_body_util::Empty<bytes::Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        ready(Ok(http::Response::new(http_body_util::Empty::new())))
    }
}

#[inline]
fn once<S: Service<http::Request<()>>>(service: &mut S, uri: &http::Uri) -> bool {
    let mut request = http::Request::new(());
    *request.uri_mut() = uri.clone();
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let future = pin!(service.call(request));
    matches!(future.poll(&mut cx), Poll::Ready(Ok(_)))
}

// --- construction: the only lines that differ between API versions --------
fn keyed_breaker() -> KeyedCircuitBreakerLayer<Http> {
    let base = CircuitBreakerConfig::builder().failure_threshold(3).build().unwrap();
    KeyedCircuitBreakerLayer::new(base).protocol(Http::default())
}

fn keyed_bulkhead() -> KeyedBulkheadLayer<Http> {
    let config = BulkheadConfig::builder().max_concurrent(1_000).build().unwrap();
    KeyedBulkheadLayer::new(config).protocol(Http::default())
}

fn routed_timeout() -> TimeoutLayer<Http> {
    let mut builder = TimeoutLayer::builder().http().timeout(Some(Duration::from_secs(30)));
    for i in 0..ROUTES {
        builder = builder.route(route(i), Some(Duration::from_secs(10 + i as u64)));
    }
    builder.build().unwrap()
}
// ---------------------------------------------------------------------------

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let uris: Vec<http::Uri> = (0..ROUTES).map(|i| route(i).parse().unwrap()).collect();
    let target = &uris[11];
    let mut group = c.benchmark_group("keyed");

    group.bench_function("baseline/no-layer", |b| {
        let mut service = HttpNoop;
        b.iter(|| assert!(once(black_box(&mut service), target)));
    });
    group.bench_function("palisade/breaker by route, 16 keys", |b| {
        let mut service = keyed_breaker().layer(HttpNoop);
        for uri in &uris {
            assert!(once(&mut service, uri));
        }
        b.iter(|| assert!(once(black_box(&mut service), target)));
    });
    group.bench_function("palisade/bulkhead by route, 16 keys", |b| {
        let mut service = keyed_bulkhead().layer(HttpNoop);
        for uri in &uris {
            assert!(once(&mut service, uri));
        }
        b.iter(|| assert!(once(black_box(&mut service), target)));
    });
    group.bench_function("palisade/timeout, 16 route overrides", |b| {
        let mut service = routed_timeout().layer(HttpNoop);
        b.iter(|| assert!(once(black_box(&mut service), target)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
