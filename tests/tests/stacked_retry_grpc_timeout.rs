//! Every attempt carries the time left when it is sent (issue 13, item 5),
//! over a real tonic server: a total timeout of 1 s above a gRPC retry layer,
//! no per-attempt layer below. The retry, sent after a 306 ms backoff, tells
//! the server it has 694 ms, never the first attempt's 1 s (measured against
//! grpcio before the fix: both attempts sent `grpc-timeout: 1000000u`).
#![allow(clippy::disallowed_types)]

mod stacked;

use std::time::Duration;

use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::TimeoutKind;
use palisade_retry::{Attempts, RetryLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::TimeoutLayer;
use stacked::{ManualClock, RetryEvents, within};
use tokio::time::Instant;
use tonic::Code;
use tower::ServiceBuilder;

#[tokio::test(start_paused = true)]
async fn the_retry_carries_the_time_left_when_it_is_sent() {
    let _clock = ManualClock::hold();
    let server = EchoServer::start("a").await.unwrap();
    let events = RetryEvents::new();
    let backoff = Duration::from_millis(306);
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(1)))
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .backoff(Backoff::constant(backoff).jitter(Jitter::None).build().unwrap())
                .listener(events.clone())
                .build()
                .unwrap(),
        )
        .service(server.channel());
    let mut client = EchoClient::new(stack);

    server.faults().fail_next(1, Code::Unavailable);
    let start = Instant::now();
    let call = tokio::spawn(async move {
        client
            .unary(EchoRequest {
                message: "hi".into(),
                payload: Default::default(),
            })
            .await
    });
    within("the first attempt", server.stats().wait_for_requests(1)).await;
    let first = server
        .stats()
        .last_grpc_timeout()
        .expect("the first attempt's grpc-timeout");
    assert_eq!(first, Duration::from_secs(1), "the whole second at the start");

    events.wait_for(1).await;
    tokio::time::advance(backoff).await;
    within("the retry", server.stats().wait_for_requests(2)).await;
    let sent_at = Instant::now() - start;
    let second = server.stats().last_grpc_timeout().expect("the retry's grpc-timeout");
    let left = Duration::from_secs(1) - sent_at;
    assert_eq!(sent_at, backoff);
    assert!(
        second < first,
        "the retry carried {second:?}, the first attempt {first:?}"
    );
    assert!(
        second <= left,
        "the server was given {second:?}, the client had {left:?}"
    );
    assert_eq!(
        second,
        Duration::from_millis(694),
        "exactly the time left, rounded down"
    );

    let reply = within("the call ends", call).await.unwrap().unwrap();
    assert_eq!(reply.extensions().get::<Attempts>(), Some(&Attempts(2)));
}

/// A caller that set `grpc-timeout` itself (tonic's `Request::set_timeout`)
/// and no deadline: the first attempt carries the header exactly as written
/// (not stripped, not rewritten), and the retry the time left of it, never
/// the stale value (brief fix13, item 4). No timeout layer anywhere.
#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_the_caller_set_is_kept_and_counted_down() {
    let _clock = ManualClock::hold();
    let server = EchoServer::start("a").await.unwrap();
    let events = RetryEvents::new();
    let backoff = Duration::from_millis(100);
    let stack = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .backoff(Backoff::constant(backoff).jitter(Jitter::None).build().unwrap())
                .listener(events.clone())
                .build()
                .unwrap(),
        )
        .service(server.channel());
    let mut client = EchoClient::new(stack);

    server.faults().fail_next(1, Code::Unavailable);
    let call = tokio::spawn(async move {
        let mut request = tonic::Request::new(EchoRequest {
            message: "hi".into(),
            payload: Default::default(),
        });
        request.set_timeout(Duration::from_millis(500));
        client.unary(request).await
    });
    within("the first attempt", server.stats().wait_for_requests(1)).await;
    let first = server
        .stats()
        .last_grpc_timeout_raw()
        .expect("the caller's grpc-timeout");
    let written = {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(500));
        request
            .metadata()
            .get("grpc-timeout")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        first, written,
        "the first attempt carries the header as the caller wrote it"
    );

    events.wait_for(1).await;
    tokio::time::advance(backoff).await;
    within("the retry", server.stats().wait_for_requests(2)).await;
    let second = server.stats().last_grpc_timeout().expect("the retry's grpc-timeout");
    assert_eq!(
        second,
        Duration::from_millis(400),
        "the time left of the caller's 500 ms"
    );
    within("the call ends", call).await.unwrap().unwrap();
}
