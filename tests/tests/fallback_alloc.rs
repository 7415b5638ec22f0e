//! The fallback layer's success path allocates nothing, proved with a counting
//! global allocator.
//!
//! The counting is done by `allocation-counter`, which installs the global
//! allocator itself, so this file needs no unsafe code. It counts the current
//! thread's allocations; every call here is polled on this thread.

use std::convert::Infallible;

use palisade_core::error::{BoxError, CircuitOpen};
use palisade_fallback::{FallbackLayer, FromFallback};
use tower::{Layer, service_fn};

mod support;
use support::{allocations_during, call_once};

#[test]
fn success_path_allocates_nothing_plain() {
    let layer = FallbackLayer::builder()
        .plain()
        .keep(|n: &u64| *n)
        .from_fn(|_: &BoxError, n: u64| n + 1000)
        .served()
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|n: u64| std::future::ready(Ok::<_, BoxError>(n * 2))));
    call_once(&mut svc, 1).unwrap(); // warm up
    for n in 0..100 {
        let (allocations, served) = allocations_during(|| call_once(&mut svc, n).unwrap());
        assert_eq!(served.value, n * 2);
        assert!(!served.is_fallback());
        assert_eq!(allocations, 0, "success path allocated");
    }
}

#[test]
fn success_path_allocates_nothing_http_with_per_call_lookup_and_response_rule() {
    let layer = FallbackLayer::builder()
        .http()
        .on_error::<CircuitOpen>()
        .on_failed_response()
        .value(http::Response::new("fallback"))
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|_: http::Request<()>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new("peer")))
    }));
    call_once(&mut svc, http::Request::new(())).unwrap();
    for _ in 0..100 {
        let request = http::Request::get("http://peer/path").body(()).unwrap();
        let (allocations, response) = allocations_during(|| call_once(&mut svc, request).unwrap());
        assert_eq!(*response.body(), "peer");
        assert!(response.extensions().get::<FromFallback>().is_none());
        assert_eq!(allocations, 0, "success path allocated");
    }
}

#[test]
fn the_counter_sees_allocations_on_the_fallback_path() {
    // Guards against a counter that never counts: a fallback answer marks the
    // http response (an extension map) and boxes the error.
    let layer = FallbackLayer::value(http::Response::new("fallback"));
    let mut svc = layer.layer(service_fn(|_: ()| {
        std::future::ready(Err::<http::Response<&str>, _>(CircuitOpen::new(
            None,
            std::time::Duration::ZERO,
        )))
    }));
    call_once(&mut svc, ()).unwrap();
    let (allocations, response) = allocations_during(|| call_once(&mut svc, ()).unwrap());
    assert_eq!(*response.body(), "fallback");
    assert!(allocations > 0);
}
