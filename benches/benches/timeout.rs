//! `palisade-timeout` next to `tower::timeout::Timeout` (and tower-resilience's
//! time limiter) over a ready no-op service: poll_ready + call + one poll of the
//! response future, which completes at once. Run inside a tokio runtime
//! context (timers need one) with a no-op waker, so only the layer is measured.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_timeout::TimeoutLayer;
use tower::{Layer, Service};

const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Noop;

impl<R> Service<R> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: R) -> Self::Future {
        ready(Ok(()))
    }
}

/// A no-op whose response is pending on the first poll (so a timeout's timer
/// is armed) and ready on the second.
#[derive(Clone, Copy)]
struct YieldOnce;

struct Yield(bool);

impl Future for Yield {
    type Output = Result<(), Infallible>;

    #[inline]
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Ready(Ok(()))
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

impl<R> Service<R> for YieldOnce {
    type Response = ();
    type Error = Infallible;
    type Future = Yield;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: R) -> Yield {
        Yield(false)
    }
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
fn once<S: Service<R>, R>(service: &mut S, request: R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let future = pin!(service.call(request));
    matches!(future.poll(&mut cx), Poll::Ready(Ok(_)))
}

/// Like [`once`], but the response is pending once before it is ready.
#[inline]
fn twice<S: Service<R>, R>(service: &mut S, request: R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
        return false;
    }
    let mut future = pin!(service.call(request));
    future.as_mut().poll(&mut cx).is_pending() && matches!(future.poll(&mut cx), Poll::Ready(Ok(_)))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut group = c.benchmark_group("timeout");

    group.bench_function("baseline/no-layer", |b| {
        let mut service = Noop;
        b.iter(|| assert!(once(black_box(&mut service), ())));
    });
    group.bench_function("tower/Timeout", |b| {
        let mut service = tower::timeout::TimeoutLayer::new(LIMIT).layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), ())));
    });
    group.bench_function("palisade/Timeout(30s)", |b| {
        let mut service = TimeoutLayer::new(LIMIT).layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), ())));
    });
    group.bench_function("palisade/Timeout(disabled)", |b| {
        let mut service = TimeoutLayer::disabled().layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), ())));
    });
    group.bench_function("tower-resilience/TimeLimiter", |b| {
        let mut service = tower_resilience::timelimiter::TimeLimiterLayer::builder()
            .timeout_duration(LIMIT)
            .cancel_running_future(true)
            .build()
            .layer(Noop);
        b.iter(|| assert!(once(black_box(&mut service), ())));
    });

    // The response is pending once: the timer is armed (registered in tokio's
    // timer wheel) and cancelled.
    group.bench_function("tower/Timeout/pending-once", |b| {
        let mut service = tower::timeout::TimeoutLayer::new(LIMIT).layer(YieldOnce);
        b.iter(|| assert!(twice(black_box(&mut service), ())));
    });
    group.bench_function("palisade/Timeout(30s)/pending-once", |b| {
        let mut service = TimeoutLayer::new(LIMIT).layer(YieldOnce);
        b.iter(|| assert!(twice(black_box(&mut service), ())));
    });

    // http requests: tower's Timeout against ours with the Http protocol
    // (per-call options read, response body wrapped).
    group.bench_function("tower/Timeout/http", |b| {
        let mut service = tower::timeout::TimeoutLayer::new(LIMIT).layer(HttpNoop);
        b.iter(|| assert!(once(black_box(&mut service), http::Request::new(()))));
    });
    group.bench_function("palisade/Timeout/http", |b| {
        let mut service = TimeoutLayer::builder()
            .http()
            .timeout(Some(LIMIT))
            .build()
            .unwrap()
            .layer(HttpNoop);
        b.iter(|| assert!(once(black_box(&mut service), http::Request::new(()))));
    });
    group.bench_function("palisade/Timeout/http+deadline", |b| {
        let mut service = TimeoutLayer::builder()
            .http()
            .timeout(Some(LIMIT))
            .build()
            .unwrap()
            .layer(HttpNoop);
        let deadline = Deadline::after(Duration::from_secs(3_600));
        b.iter(|| {
            let mut request = http::Request::new(());
            request.call_options_mut().set_deadline(deadline);
            assert!(once(black_box(&mut service), request));
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
