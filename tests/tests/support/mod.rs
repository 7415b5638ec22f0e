//! Helpers shared by the allocation tests.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// How many allocations this thread made while running `f`, and its output.
pub(crate) fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    match out {
        Some(out) => (info.count_total as usize, out),
        None => unreachable!("measure runs the closure"),
    }
}

/// Calls `svc` once and polls the response future to completion: the inner
/// services of these tests are always ready and answer at once.
pub(crate) fn call_once<S, Req>(svc: &mut S, request: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("inner service not ready"),
    }
    let mut future = pin!(svc.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future must answer at once"),
    }
}
