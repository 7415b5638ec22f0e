//! `palisade::ServiceBuilderExt` over a real tonic test-kit server: the
//! README's a-la-carte stack written with the extension methods instead of
//! `.layer(..)` behaves as that stack does.
#![allow(missing_docs)]

use std::time::Duration;

use palisade::ServiceBuilderExt;
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::core::backoff::{Backoff, Jitter};
use palisade::core::error::{CircuitOpen, find_error};
use palisade::retry::RetryLayer;
use palisade::timeout::{TimeoutKind, TimeoutLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;
use tower::ServiceBuilder;

/// The README's a-la-carte stack, outermost first, around `$channel`, and a
/// handle on its breaker. A macro, not a function, because the stack's type
/// is too long to be worth writing down in a test.
macro_rules! a_la_carte {
    ($channel:expr) => {{
        let breaker = CircuitBreakerLayer::builder()
            .grpc()
            .failure_threshold(3)
            .build()
            .unwrap();
        let state = breaker.handle();
        let total = TimeoutLayer::builder()
            .grpc()
            .kind(TimeoutKind::Total)
            .timeout(Some(Duration::from_secs(2)))
            .build()
            .unwrap();
        let backoff = Backoff::exponential(Duration::from_millis(20))
            .jitter(Jitter::Full)
            .build()
            .unwrap();
        let retry = RetryLayer::builder()
            .grpc()
            .tonic_body()
            .retries(2)
            .backoff(backoff)
            .build()
            .unwrap();
        let bulkhead = BulkheadLayer::builder()
            .grpc()
            .max_concurrent(16)
            .max_queue(64)
            .build()
            .unwrap();
        let attempt = TimeoutLayer::builder()
            .grpc()
            .timeout(Some(Duration::from_millis(300)))
            .build()
            .unwrap();
        let stack = ServiceBuilder::new()
            .palisade_timeout(total)
            .palisade_retry(retry)
            .bulkhead(bulkhead)
            .circuit_breaker(breaker)
            .palisade_timeout(attempt)
            .service($channel);
        (EchoClient::new(stack), state)
    }};
}

fn hello() -> EchoRequest {
    EchoRequest {
        message: "hello".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn calls_through_the_extension_methods_succeed_and_retries_absorb_unavailable() {
    let server = EchoServer::start("ext-ok").await.unwrap();
    let (mut client, state) = a_la_carte!(server.channel());

    for _ in 0..3 {
        let reply = client.unary(hello()).await.unwrap().into_inner();
        assert_eq!(reply.message, "hello");
    }
    assert_eq!(server.stats().requests(), 3);

    // The retry layer is in the stack: two UNAVAILABLE answers cost the caller nothing.
    server.faults().fail_next(2, Code::Unavailable);
    client.unary(hello()).await.unwrap();
    assert_eq!(server.stats().requests(), 6);
    assert_eq!(state.state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_failing_server_opens_the_breaker_and_the_next_call_never_reaches_it() {
    let server = EchoServer::start("ext-fail").await.unwrap();
    let (mut client, state) = a_la_carte!(server.channel());
    server.faults().set_status(Some(Code::Unavailable));

    // One call makes three attempts (two retries), each a breaker failure
    // (threshold 3): the breaker opens as the call fails.
    let status = client.unary(hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.stats().requests(), 3);
    assert_eq!(state.state(), CircuitState::Open);

    let before = server.stats().requests();
    let status = client.unary(hello()).await.unwrap_err();
    assert!(find_error::<CircuitOpen>(&status).is_some(), "{status:?}");
    assert_eq!(server.stats().requests(), before);
}
