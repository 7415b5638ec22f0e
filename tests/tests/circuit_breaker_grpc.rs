//! The circuit breaker over a real tonic channel to the testkit's echo server.
#![allow(missing_docs)]

use std::error::Error as _;

use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState};
use palisade_core::protocol::Grpc;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use tonic::Code;
use tower::ServiceBuilder;

fn layer(threshold: u32) -> CircuitBreakerLayer<Grpc> {
    CircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .peer("echo")
            .failure_threshold(threshold)
            .build()
            .unwrap(),
    )
    .protocol(Grpc::default())
}

fn is_circuit_open(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<CircuitOpen>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[tokio::test]
async fn a_server_stream_failing_after_three_messages_is_one_failure_counted_when_it_errors() {
    let server = EchoServer::start("stream").await.unwrap();
    server.faults().fail_stream_after(3, Code::Unavailable);
    let layer = layer(2);
    let handle = layer.handle();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(layer).service(server.channel()));
    let request = || StreamRequest {
        message: "s".into(),
        count: 5,
        ..Default::default()
    };

    let mut stream = client.server_stream(request()).await.unwrap().into_inner();
    // Headers arrived: a 200 without grpc-status yet, nothing counted.
    assert_eq!(handle.snapshot().consecutive_failures, 0);
    for _ in 0..3 {
        assert!(stream.message().await.unwrap().is_some());
        assert_eq!(handle.snapshot().consecutive_failures, 0);
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // Exactly one failure, recorded when the stream errored.
    assert_eq!(handle.snapshot().consecutive_failures, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    drop(stream);
    assert_eq!(handle.snapshot().consecutive_failures, 1);

    // The second failing stream trips the breaker; the next call never reaches the server.
    let mut stream = client.server_stream(request()).await.unwrap().into_inner();
    while stream.message().await.transpose().is_some_and(|m| m.is_ok()) {}
    assert_eq!(handle.state(), CircuitState::Open);
    let before = server.stats().requests();
    let status = client.unary(EchoRequest::default()).await.unwrap_err();
    assert!(is_circuit_open(&status), "{status:?}");
    assert_eq!(server.stats().requests(), before);
}

#[tokio::test]
async fn a_stream_dropped_half_read_counts_neither_way_and_a_complete_stream_succeeds() {
    let server = EchoServer::start("drop").await.unwrap();
    let layer = layer(1);
    let handle = layer.handle();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(layer).service(server.channel()));
    server.faults().fail_stream_after(1, Code::Unavailable);
    let mut stream = client
        .server_stream(StreamRequest {
            count: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 0);

    server.faults().clear_stream_failure();
    let mut stream = client
        .server_stream(StreamRequest {
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test]
async fn cloned_tonic_clients_in_many_tasks_share_one_breaker() {
    let server = EchoServer::start("unary").await.unwrap();
    server.faults().set_status(Some(Code::Unavailable));
    let layer = layer(3);
    let handle = layer.handle();
    let client = EchoClient::new(ServiceBuilder::new().layer(layer).service(server.channel()));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.unary(EchoRequest::default()).await.unwrap_err().code() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Code::Unavailable);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let before = server.stats().requests();
    let status = client.clone().unary(EchoRequest::default()).await.unwrap_err();
    assert!(is_circuit_open(&status), "{status:?}");
    assert_eq!(server.stats().requests(), before);
    // A business status (NOT_FOUND) is not a failure.
    handle.reset();
    server.faults().set_status(Some(Code::NotFound));
    for _ in 0..5 {
        assert_eq!(
            client.clone().unary(EchoRequest::default()).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}
