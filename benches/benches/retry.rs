//! `palisade-retry` next to `tower::retry::Retry` and tower-resilience's retry,
//! on the no-retry success path (the first attempt succeeds): poll_ready +
//! call + one poll of the response future, inside a tokio runtime context with
//! a no-op waker, so only the layer is measured.
//!
//! - `clone/*`: a small `Req: Clone` request (tower's pattern, no buffering);
//! - `http/*`: an `http::Request<Full<Bytes>>` with a 1 KiB body that the
//!   inner service reads to the end. tower and tower-resilience clone the
//!   request (`Full<Bytes>` is `Clone`); palisade replays the body instead
//!   (it would work for a non-`Clone` body too).
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body::Body;
use http_body_util::{Empty, Full};
use palisade_retry::RetryLayer;
use std::sync::Arc;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

type Req = [u64; 4];

#[derive(Clone, Copy)]
struct Noop;

impl Service<Req> for Noop {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        ready(Ok(req[0]))
    }
}

/// Reads the request body to its end, answers an empty 200.
#[derive(Clone, Copy)]
struct HttpSink;

impl<B: Body + Unpin> Service<http::Request<B>> for HttpSink {
    type Response = http::Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut body = req.into_body();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            black_box(frame);
        }
        ready(Ok(http::Response::new(Empty::new())))
    }
}

/// tower's retry policy: one retry on error, requests cloned.
#[derive(Clone, Copy)]
struct OneRetry(usize);

impl<R: Clone, Res, E> tower::retry::Policy<R, Res, E> for OneRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut R, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &R) -> Option<R> {
        Some(req.clone())
    }
}

/// tower's retry policy with its `TpsBudget` (each request deposits on its
/// result, each retry withdraws), as tower's docs suggest.
#[derive(Clone)]
struct BudgetedRetry(Arc<TpsBudget>);

impl<R: Clone, Res, E> tower::retry::Policy<R, Res, E> for BudgetedRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut R, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &R) -> Option<R> {
        Some(req.clone())
    }
}

#[inline]
fn once<S: Service<R>, R>(service: &mut S, request: R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let future = pin!(service.call(request));
    matches!(future.poll(&mut cx), Poll::Ready(Ok(_)))
}

fn http_request(body: &Bytes) -> http::Request<Full<Bytes>> {
    http::Request::put("http://peer/item")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut group = c.benchmark_group("retry");
    let req: Req = [1, 2, 3, 4];

    group.bench_function("clone/baseline/no-layer", |b| {
        let mut service = Noop;
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });
    group.bench_function("clone/tower/Retry", |b| {
        let mut service = tower::retry::RetryLayer::new(OneRetry(1)).layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });
    group.bench_function("clone/tower/Retry+TpsBudget", |b| {
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        let mut service = tower::retry::RetryLayer::new(BudgetedRetry(budget)).layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });
    group.bench_function("clone/tower-resilience/Retry", |b| {
        let mut service = tower_resilience::retry::RetryLayer::<Req, u64, Infallible>::builder()
            .max_attempts(2)
            .exponential_backoff(Duration::from_millis(100))
            .build()
            .layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });
    group.bench_function("clone/palisade/Retry(default, budget)", |b| {
        let mut service = RetryLayer::new().layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });
    group.bench_function("clone/palisade/Retry(no budget)", |b| {
        let mut service = RetryLayer::builder().plain().no_budget().build().unwrap().layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), black_box(req))));
    });

    let body = Bytes::from(vec![7u8; 1024]);
    group.bench_function("http/baseline/no-layer", |b| {
        let mut service = HttpSink;
        b.iter(|| assert!(once(black_box(&mut service), http_request(&body))));
    });
    group.bench_function("http/tower/Retry(clone)", |b| {
        let mut service = tower::retry::RetryLayer::new(OneRetry(1)).layer(HttpSink);
        b.iter(|| assert!(once(black_box(&mut service), http_request(&body))));
    });
    group.bench_function("http/tower-resilience/Retry(clone)", |b| {
        let mut service = tower_resilience::retry::RetryLayer::<
            http::Request<Full<Bytes>>,
            http::Response<Empty<Bytes>>,
            Infallible,
        >::builder()
        .max_attempts(2)
        .exponential_backoff(Duration::from_millis(100))
        .build()
        .layer(HttpSink);
        b.iter(|| assert!(once(black_box(&mut service), http_request(&body))));
    });
    group.bench_function("http/palisade/Retry(replay)", |b| {
        let mut service = RetryLayer::http().layer(HttpSink);
        b.iter(|| assert!(once(black_box(&mut service), http_request(&body))));
    });
    group.bench_function("http/palisade/Retry(retries 0)", |b| {
        let mut service = RetryLayer::builder().http().retries(0).build().unwrap().layer(HttpSink);
        b.iter(|| assert!(once(black_box(&mut service), http_request(&body))));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
