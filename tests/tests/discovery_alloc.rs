//! Zero heap allocations per pick-and-call, over 3 and 10,000 ready peers,
//! with the plain protocol and with gRPC (the in-flight guard rides on the
//! response body), proved with a counting global allocator
//! (`allocation-counter`). Every call is polled on this thread.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body;
use http_body_util::Empty;
use palisade_discovery::{AlwaysAvailable, PeerDiscovery, PeerDiscoveryLayer};
use tower::discover::Change;
use tower::{Layer, Service};

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

#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

impl Service<http::Request<()>> for Echo {
    type Response = http::Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        let mut response = http::Response::new(Empty::new());
        // A trailers-only gRPC answer: the verdict is known from the head.
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("0"));
        ready(Ok(response))
    }
}

type Discover = futures::stream::Iter<std::vec::IntoIter<Result<Change<usize, AlwaysAvailable<Echo>>, Infallible>>>;

fn discover(n: usize) -> Discover {
    let changes: Vec<_> = (0..n)
        .map(|i| Ok(Change::Insert(i, AlwaysAvailable::new(Echo))))
        .collect();
    futures::stream::iter(changes)
}

#[test]
fn plain_pick_and_call_allocates_nothing() {
    for n in [3, 10_000] {
        let mut lb = PeerDiscovery::new(discover(n));
        let mut cx = Context::from_waker(Waker::noop());
        let mut round = |lb: &mut PeerDiscovery<_>| {
            for i in 0..1_000u64 {
                assert!(Service::<u64>::poll_ready(lb, &mut cx).is_ready());
                assert_eq!(poll_now(lb.call(i)).unwrap(), i);
            }
        };
        round(&mut lb); // warm up: the discover is drained
        assert_eq!(allocations(|| round(&mut lb)), 0, "{n} peers");
    }
}

#[test]
fn grpc_pick_and_call_allocates_nothing_until_the_body_ends() {
    for n in [3, 10_000] {
        let mut lb = PeerDiscoveryLayer::builder().grpc().build().unwrap().layer(discover(n));
        let mut cx = Context::from_waker(Waker::noop());
        let mut round = |lb: &mut PeerDiscovery<_, palisade_core::protocol::Grpc>| {
            for _ in 0..1_000 {
                assert!(Service::<http::Request<()>>::poll_ready(lb, &mut cx).is_ready());
                let response = poll_now(Service::<http::Request<()>>::call(lb, http::Request::new(()))).unwrap();
                let mut body = response.into_body();
                while let Poll::Ready(Some(_)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {}
            }
        };
        round(&mut lb);
        // The no-op peer itself allocates its response's header map: count
        // that alone, and require the balancer to add nothing to it.
        let mut echo = Echo;
        let inner = allocations(|| {
            for _ in 0..1_000 {
                drop(poll_now(Service::<http::Request<()>>::call(
                    &mut echo,
                    http::Request::new(()),
                )));
            }
        });
        assert_eq!(allocations(|| round(&mut lb)), inner, "{n} peers");
        assert!(lb.health().peers.iter().all(|p| p.in_flight == 0));
    }
}
