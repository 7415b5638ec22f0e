//! Zero heap allocations per call on the breaker's closed path, proved with a
//! counting global allocator (`allocation-counter`, which installs it, so this
//! file needs no unsafe code). It counts the current thread's allocations;
//! every call here is polled on this thread.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::Empty;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
use palisade_core::protocol::{Grpc, Http};
use tower::Service;

/// Allocations made on this thread by `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

fn poll_now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a ready service's call completes at once"),
    }
}

fn drain<B: Body + Unpin>(mut body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(_)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {}
}

/// A zero-sized error: boxing it into a `BoxError` at the boundary allocates nothing,
/// so what is counted is the breaker's own work.
#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

fn plain_calls(config: CircuitBreakerConfig, ok: impl Fn(usize) -> bool) -> u64 {
    let inner = tower::service_fn(|ok: bool| ready(if ok { Ok(()) } else { Err(Boom) }));
    let mut svc = CircuitBreaker::new(inner, config);
    for i in 0..16 {
        let _ = poll_now(svc.call(ok(i)));
    }
    let n = allocations(|| {
        for i in 0..1000 {
            let _ = poll_now(svc.call(ok(i)));
        }
    });
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    n
}

#[test]
fn the_closed_path_allocates_nothing() {
    // Successes only: one atomic load in, no lock out.
    assert_eq!(
        plain_calls(CircuitBreakerConfig::builder().build().unwrap(), |_| true),
        0
    );

    // Failures below the threshold and the successes that reset them (the locked path).
    assert_eq!(
        plain_calls(CircuitBreakerConfig::builder().build().unwrap(), |i| i % 2 == 0),
        0
    );

    // The failure-rate and slow-call policies (every outcome recorded in the window).
    let rate = CircuitBreakerConfig::builder()
        .failure_rate_threshold(0.9)
        .slow_call_duration(Duration::from_secs(1))
        .min_requests(10)
        .build()
        .unwrap();
    assert_eq!(plain_calls(rate, |i| i % 4 != 0), 0);

    // http and gRPC responses, followed to the end of their body. Building a
    // response with a header allocates in the inner service itself, so the
    // breaker is compared with the bare service: it must add nothing.
    let http_inner =
        || tower::service_fn(|_: ()| ready(Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))));
    let grpc_inner = || {
        tower::service_fn(|_: ()| {
            let mut r = http::Response::new(Empty::<Bytes>::new());
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("0"));
            ready(Ok::<_, Infallible>(r))
        })
    };
    let config = || CircuitBreakerConfig::builder().build().unwrap();
    let mut bare_http = http_inner();
    let mut bare_grpc = grpc_inner();
    let mut http = CircuitBreaker::with_protocol(http_inner(), config(), Http::default());
    let mut grpc = CircuitBreaker::with_protocol(grpc_inner(), config(), Grpc::default());
    for _ in 0..16 {
        drain(poll_now(http.call(())).unwrap().into_body());
        drain(poll_now(grpc.call(())).unwrap().into_body());
    }
    let bare = allocations(|| {
        for _ in 0..1000 {
            drain(poll_now(bare_http.call(())).unwrap().into_body());
            drain(poll_now(bare_grpc.call(())).unwrap().into_body());
        }
    });
    let wrapped = allocations(|| {
        for _ in 0..1000 {
            drain(poll_now(http.call(())).unwrap().into_body());
            drain(poll_now(grpc.call(())).unwrap().into_body());
        }
    });
    assert_eq!(wrapped, bare, "the breaker allocated on the http path");
    assert_eq!(http.handle().snapshot().consecutive_failures, 0);

    // The counter works: an allocation is seen.
    assert!(allocations(|| drop(std::hint::black_box(Box::new(1u64)))) >= 1);
}
