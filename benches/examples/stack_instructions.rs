//! One call through the quickstart stack (total timeout > retry > bulkhead >
//! breaker > attempt timeout) over an in-process service that answers at
//! once with a multi-frame gRPC body (four data frames, then trailers), for
//! counting instructions with callgrind: everything between the two toggles
//! of `measured_calls` is the stack's and the body's work, no socket, no
//! other thread.
//!
//! ```text
//! cargo build --release -p palisade-benches --example stack_instructions
//! valgrind --tool=callgrind --toggle-collect='*measured_calls*' \
//!     target/release/examples/stack_instructions quickstart 1000
//! ```
//!
//! See BENCHMARKS.md for the numbers.
//!
//! The argument picks the stack (`bare`: the service alone, `quickstart`
//! with its bulkhead joining the breaker's body, `nested`: the bulkhead
//! wrapping it again)
//! and the number of calls; one call's instructions are the difference
//! between a run of 2,000 calls and one of 1,000, over 1,000 (that removes
//! the warm-up and the setup).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use palisade_body::Joined;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::TimeoutKind;
use palisade_core::protocol::Grpc;
use palisade_retry::RetryLayer;
use palisade_timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

const FRAMES: u8 = 4;
static PAYLOAD: [u8; 64] = [7; 64];

/// `FRAMES` data frames of 64 bytes, then `grpc-status: 0` trailers.
struct Frames {
    left: u8,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.left {
            0 => Poll::Ready(None),
            1 => {
                self.left = 0;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            _ => {
                self.left -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PAYLOAD)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn answer(_: http::Request<tonic::body::Body>) -> std::future::Ready<Result<http::Response<Frames>, Infallible>> {
    std::future::ready(Ok(http::Response::new(Frames { left: FRAMES + 1 })))
}

fn request() -> http::Request<tonic::body::Body> {
    let mut request = http::Request::new(tonic::body::Body::empty());
    *request.uri_mut() = http::Uri::from_static("/echo.Echo/Unary");
    request
}

#[inline(never)]
fn measured_calls<S, B>(rt: &tokio::runtime::Runtime, service: &mut S, calls: usize) -> usize
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut bytes = 0;
    for _ in 0..calls {
        bytes += rt.block_on(async {
            let response = service.ready().await.unwrap().call(request()).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes().len()
        });
    }
    bytes
}

fn run<S, B>(rt: &tokio::runtime::Runtime, mut service: S, calls: usize)
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    // Warm-up: lazily made state (the runtime's timer wheel, first allocations).
    measured_calls(rt, &mut service, 10);
    let bytes = measured_calls(rt, &mut service, calls);
    assert_eq!(bytes, calls * FRAMES as usize * PAYLOAD.len());
    println!("{calls} calls, {bytes} bytes");
}

/// The quickstart stack over `S`, its bulkhead speaking `P`.
type QuickStack<S, P> = palisade_timeout::Timeout<
    palisade_retry::Retry<
        palisade_bulkhead::Bulkhead<
            palisade_circuit_breaker::CircuitBreaker<palisade_timeout::Timeout<S, Grpc>, Grpc>,
            P,
        >,
        Grpc,
        palisade_retry::DefaultPredicate,
        palisade_retry::TonicBody,
    >,
    Grpc,
>;

/// The quickstart stack over `service`, its bulkhead speaking `protocol`.
fn quickstart<P: Clone, S>(protocol: P, service: S) -> Result<QuickStack<S, P>, BoxError> {
    Ok(ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(2)))
                .build()?,
        )
        .layer(RetryLayer::builder().grpc().tonic_body().retries(1).build()?)
        .layer(
            BulkheadLayer::new(BulkheadConfig::builder().max_concurrent(16).max_queue(64).build()?).protocol(protocol),
        )
        .layer(CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build()?).protocol(Grpc::default()))
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .timeout(Some(Duration::from_millis(300)))
                .build()?,
        )
        .service(service))
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "quickstart".to_owned());
    let calls: usize = args.next().map_or(Ok(1000), |n| n.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = rt.enter();
    let service = tower::service_fn(answer);
    match stack.as_str() {
        "bare" => run(&rt, service, calls),
        "quickstart" => run(&rt, quickstart(Joined(Grpc::default()), service)?, calls),
        // The same with the bulkhead wrapping the breaker's body again.
        "nested" => run(&rt, quickstart(Grpc::default(), service)?, calls),
        other => return Err(format!("unknown stack {other:?}: bare, quickstart or nested").into()),
    }
    Ok(())
}
