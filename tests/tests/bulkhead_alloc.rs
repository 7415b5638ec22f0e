//! Zero heap allocations per call through a bulkhead with free slots, proved
//! with a counting global allocator.
//!
//! The counting is done by `allocation-counter`, which installs the global
//! allocator itself, so this file needs no unsafe code. It counts the current
//! thread's allocations; every call here is polled on this thread.

use std::convert::Infallible;

use futures::FutureExt;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_core::protocol::Http;
use tower::{Layer, Service, ServiceExt, service_fn};

fn allocations_during(f: impl FnOnce()) -> usize {
    allocation_counter::measure(f).count_total as usize
}

#[test]
fn no_allocation_per_call_with_free_slots() {
    let config = BulkheadConfig::builder().max_concurrent(4).build().unwrap();

    // Plain protocol: any request and response.
    let mut plain =
        BulkheadLayer::new(config.clone()).layer(service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x))));
    let n = allocations_during(|| {
        for i in 0..1_000 {
            plain.ready().now_or_never().unwrap().unwrap();
            assert_eq!(plain.call(i).now_or_never().unwrap().unwrap(), i);
        }
    });
    assert_eq!(n, 0, "plain calls allocated");

    // Http protocol: the permit rides in the response body until it ends.
    let mut http = BulkheadLayer::new(config)
        .protocol(Http::default())
        .layer(service_fn(|_: http::Request<()>| {
            std::future::ready(Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new())))
        }));
    let n = allocations_during(|| {
        for _ in 0..1_000 {
            http.ready().now_or_never().unwrap().unwrap();
            // An empty `http::Request` allocates nothing (no headers, no extensions).
            let response = http.call(http::Request::new(())).now_or_never().unwrap().unwrap();
            drop(response);
        }
    });
    assert_eq!(n, 0, "http calls allocated");
}
