//! The quickstart stack with the joined protocol over a real tonic server:
//! every call's response carries one `CompletionBody` (the breaker's, which
//! the bulkhead joins), whose end settles every layer once.
//!
//! ```text
//! TimeoutLayer (total) -> RetryLayer -> BulkheadLayer<Joined<Grpc>>
//!     -> CircuitBreakerLayer<Grpc> -> TimeoutLayer (attempt) -> Channel -> EchoServer
//! ```
//!
//! No timer fires here (the limits are far away), so the tests run in real
//! time and wait for nothing but the server's replies.
#![allow(missing_docs)]

use std::time::Duration;

use palisade_body::{CompletionBody, Joined};
use palisade_bulkhead::{Bulkhead, BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use palisade_core::error::TimeoutKind;
use palisade_core::protocol::Grpc;
use palisade_retry::{DefaultPredicate, Retry, RetryBody, RetryLayer, TonicBody};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::StreamRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::{Timeout, TimeoutLayer};
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceBuilder};

/// Compiles only if `service` answers with one `CompletionBody` directly
/// around the channel's body (no second adapter inside it).
fn one_tracked_body<S, H>(service: &S)
where
    S: Service<http::Request<Body>, Response = http::Response<CompletionBody<Body, H>>>,
    H: palisade_body::OnEnd,
{
    let _ = service;
}

/// The same under the retry layer, whose body wraps the attempt's.
fn one_tracked_body_under_retry<S, H>(service: &S)
where
    S: Service<http::Request<Body>, Response = http::Response<RetryBody<CompletionBody<Body, H>>>>,
    H: palisade_body::OnEnd,
{
    let _ = service;
}

struct Stack<S> {
    client: EchoClient<S>,
    breaker: CircuitBreakerHandle,
    bulkhead: BulkheadHandle,
}

/// The quickstart stack, its type written down: the bulkhead speaks `Joined<Grpc>`.
type QuickStack = Timeout<
    Retry<Bulkhead<CircuitBreaker<Timeout<Channel, Grpc>, Grpc>, Joined<Grpc>>, Grpc, DefaultPredicate, TonicBody>,
    Grpc,
>;

fn stack(channel: Channel) -> Stack<QuickStack> {
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(2).build().unwrap())
        .protocol(Grpc::default());
    let bulkhead = BulkheadLayer::new(BulkheadConfig::builder().max_concurrent(1).build().unwrap())
        .protocol(Joined(Grpc::default()));
    let (breaker_handle, bulkhead_handle) = (breaker.handle(), bulkhead.handle());
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    let below_retry = ServiceBuilder::new()
        .layer(bulkhead)
        .layer(breaker)
        .layer(attempt)
        .service(channel);
    one_tracked_body(&below_retry);
    let whole = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(60)))
                .build()
                .unwrap(),
        )
        .layer(RetryLayer::builder().grpc().tonic_body().retries(1).build().unwrap())
        .service(below_retry);
    one_tracked_body_under_retry(&whole);
    Stack {
        client: EchoClient::new(whole),
        breaker: breaker_handle,
        bulkhead: bulkhead_handle,
    }
}

fn stream_of(count: u32, interval_ms: u32) -> StreamRequest {
    StreamRequest {
        message: "s".into(),
        count,
        payload: Default::default(),
        interval_ms,
    }
}

#[tokio::test]
async fn unavailable_in_the_trailers_is_counted_once_and_the_permit_is_held_to_the_end() {
    let server = EchoServer::start("one-body").await.unwrap();
    server.faults().fail_stream_after(2, Code::Unavailable);
    let Stack {
        mut client,
        breaker,
        bulkhead,
    } = stack(server.channel());

    let mut stream = client.server_stream(stream_of(3, 0)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(bulkhead.in_flight(), 1, "the permit lives while the stream does");
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(bulkhead.in_flight(), 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(bulkhead.in_flight(), 0, "released at the end of the stream");
    let snapshot = breaker.snapshot();
    assert_eq!(snapshot.consecutive_failures, 1, "one failure, counted once");
    assert_eq!(snapshot.state, CircuitState::Closed);
    drop(stream);
    assert_eq!(
        breaker.snapshot().consecutive_failures,
        1,
        "the drop after the end adds nothing"
    );

    // A second such stream reaches the threshold of two: counted once each.
    let mut stream = client.server_stream(stream_of(3, 0)).await.unwrap().into_inner();
    while stream.message().await.is_ok_and(|m| m.is_some()) {}
    assert_eq!(breaker.snapshot().state, CircuitState::Open);
    assert_eq!(bulkhead.in_flight(), 0);
}

#[tokio::test]
async fn a_stream_dropped_midway_releases_the_permit() {
    let server = EchoServer::start("one-body").await.unwrap();
    let Stack {
        mut client,
        breaker,
        bulkhead,
    } = stack(server.channel());

    // 1000 replies 20 ms apart: still streaming when dropped.
    let mut stream = client.server_stream(stream_of(1000, 20)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(bulkhead.in_flight(), 1);
    drop(stream);
    assert_eq!(bulkhead.in_flight(), 0, "the dropped body released the permit");
    // A gRPC verdict that waited for the trailers is ignored when abandoned.
    assert_eq!(breaker.snapshot().consecutive_failures, 0);

    // The one slot is free again: a whole stream goes through.
    let mut stream = client.server_stream(stream_of(3, 0)).await.unwrap().into_inner();
    let mut received = 0;
    while stream.message().await.unwrap().is_some() {
        received += 1;
    }
    assert_eq!((received, bulkhead.in_flight()), (3, 0));
    assert_eq!(breaker.snapshot().state, CircuitState::Closed);
}
