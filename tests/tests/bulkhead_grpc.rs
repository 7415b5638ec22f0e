//! The bulkhead over a real tonic `Channel`: a server-streaming response holds
//! its permit while the client reads it, and frees it when the stream ends,
//! fails, or is dropped half-read.

use std::time::Duration;

use palisade_bulkhead::{BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_core::protocol::Grpc;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::StreamRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;
use tower::ServiceBuilder;

fn stream_request(count: u32) -> StreamRequest {
    StreamRequest {
        message: "hi".into(),
        count,
        payload: Default::default(),
        interval_ms: 0,
    }
}

async fn setup(
    server: &EchoServer,
    max_queue: usize,
) -> (
    EchoClient<palisade_bulkhead::Bulkhead<tonic::transport::Channel, Grpc>>,
    BulkheadHandle,
) {
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(max_queue)
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config).protocol(Grpc::default());
    let handle = layer.handle();
    let channel = server.endpoint().connect().await.unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(channel);
    (EchoClient::new(svc), handle)
}

async fn wait_for(handle: &BulkheadHandle, in_flight: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.in_flight() != in_flight {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("permit count reached");
}

#[tokio::test]
async fn a_server_stream_holds_its_permit_until_it_ends() {
    let server = EchoServer::start("a").await.unwrap();
    let (mut client, handle) = setup(&server, 0).await;

    let mut stream = client.server_stream(stream_request(3)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.sequence, 0);
    assert_eq!(
        handle.in_flight(),
        1,
        "headers and a message arrived: the stream still holds the permit"
    );

    // The single slot is taken: another call is refused at once.
    let refused = client.clone().server_stream(stream_request(1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("bulkhead full"), "{refused:?}");
    assert_eq!(
        server.stats().requests(),
        1,
        "the refused call never reached the server"
    );

    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 2);
    assert!(stream.message().await.unwrap().is_none());
    wait_for(&handle, 0).await;

    // The slot is free again.
    let mut again = client.server_stream(stream_request(1)).await.unwrap().into_inner();
    assert!(again.message().await.unwrap().is_some());
    assert!(again.message().await.unwrap().is_none());
    wait_for(&handle, 0).await;
}

#[tokio::test]
async fn a_failing_stream_frees_its_permit() {
    let server = EchoServer::start("a").await.unwrap();
    let (mut client, handle) = setup(&server, 0).await;
    server.faults().fail_stream_after(1, Code::Unavailable);

    let mut stream = client.server_stream(stream_request(5)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(handle.in_flight(), 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    wait_for(&handle, 0).await;
}

#[tokio::test]
async fn a_stream_dropped_half_read_frees_its_permit_and_admits_a_waiter() {
    let server = EchoServer::start("a").await.unwrap();
    let (mut client, handle) = setup(&server, 1).await;

    let mut stream = client.server_stream(stream_request(100)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(handle.in_flight(), 1);

    // A second caller queues behind the open stream (the queued path drives a
    // clone of the Channel).
    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move {
        let mut s = waiter_client.server_stream(stream_request(2)).await?.into_inner();
        let mut n = 0;
        while s.message().await?.is_some() {
            n += 1;
        }
        Ok::<_, tonic::Status>(n)
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.queued() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        server.stats().requests(),
        1,
        "the queued call has not reached the server"
    );

    drop(stream);
    assert_eq!(waiter.await.unwrap().unwrap(), 2, "the waiter got the freed slot");
    wait_for(&handle, 0).await;
    assert_eq!(handle.queued(), 0);
}

#[tokio::test]
async fn a_second_stream_waits_for_the_first_under_palisade_while_towers_concurrency_limit_runs_both() {
    // One slot, one queue place: a second stream queues behind an open first
    // stream, and starts only when the first has ended.
    let server = EchoServer::start("a").await.unwrap();
    let (client, handle) = setup(&server, 1).await;
    let mut a = client
        .clone()
        .server_stream(stream_request(2))
        .await
        .unwrap()
        .into_inner();
    assert!(a.message().await.unwrap().is_some());
    let mut second = client.clone();
    let b = tokio::spawn(async move {
        let mut b = second.server_stream(stream_request(2)).await?.into_inner();
        let mut n = 0;
        while b.message().await?.is_some() {
            n += 1;
        }
        Ok::<_, tonic::Status>(n)
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.queued() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        server.stats().requests(),
        1,
        "palisade: the second stream did not reach the server while the first was open"
    );
    assert!(a.message().await.unwrap().is_some());
    assert!(a.message().await.unwrap().is_none());
    assert_eq!(b.await.unwrap().unwrap(), 2, "it ran once the first had ended");
    assert_eq!(server.stats().requests(), 2);
    wait_for(&handle, 0).await;

    // The same under tower's ConcurrencyLimit, which gives its permit back
    // when the response head arrives: both streams run at once.
    let server = EchoServer::start("b").await.unwrap();
    let channel = server.endpoint().connect().await.unwrap();
    let svc = ServiceBuilder::new().concurrency_limit(1).service(channel);
    let mut client = EchoClient::new(svc);
    let mut a = client.server_stream(stream_request(2)).await.unwrap().into_inner();
    assert!(a.message().await.unwrap().is_some());
    let mut b = client.server_stream(stream_request(2)).await.unwrap().into_inner();
    assert!(b.message().await.unwrap().is_some(), "tower let a second stream run");
    assert_eq!(server.stats().requests(), 2);
}

#[tokio::test]
async fn keyed_by_grpc_method_a_busy_stream_does_not_block_unary_calls() {
    use palisade_bulkhead::KeyedBulkheadLayer;
    use palisade_testkit::echo::EchoRequest;

    let server = EchoServer::start("a").await.unwrap();
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(0)
        .build()
        .unwrap();
    let layer = KeyedBulkheadLayer::new(config).protocol(Grpc::default());
    let keys = layer.handle();
    let channel = server.endpoint().connect().await.unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(layer).service(channel));

    let mut stream = client.server_stream(stream_request(3)).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let streams = keys.partition("/palisade.testkit.echo.v1.Echo/ServerStream").unwrap();
    assert_eq!(streams.in_flight(), 1);

    // Another method has its own partition.
    let unary = EchoRequest {
        message: "x".into(),
        payload: Default::default(),
    };
    assert_eq!(client.unary(unary).await.unwrap().into_inner().message, "x");
    // The same method is full.
    let refused = client.server_stream(stream_request(1)).await.unwrap_err();
    assert!(refused.message().contains("bulkhead full"), "{refused:?}");

    drop(stream);
    assert_eq!(streams.in_flight(), 0);
    assert_eq!(keys.len(), 2);
}
