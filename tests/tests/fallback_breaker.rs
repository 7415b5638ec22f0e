//! The fallback layer above the real circuit breaker (palisade-circuit-breaker)
//! in front of a tonic `Channel`: once the breaker is open, the tonic client
//! gets the fallback's answer and the peer sees no call.
//!
//! The breaker wraps response bodies (to count a call by how its body ends),
//! so the stack maps its responses back to `tonic::body::Body` under the
//! fallback: the fallback then builds plain tonic responses.

use std::time::Duration;

use bytes::Bytes;
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
use palisade_core::error::{BoxError, CircuitOpen};
use palisade_core::protocol::Grpc;
use palisade_fallback::{FallbackLayer, FallbackReason, FromFallback};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;
use tonic::body::Body;
use tower::ServiceBuilder;

/// A unary gRPC `EchoReply { message, server }` with status OK.
fn grpc_reply(message: &str, server: &str) -> http::Response<Body> {
    palisade_fallback::grpc::grpc_reply(&palisade_testkit::echo::EchoReply {
        message: message.into(),
        server: server.into(),
        ..Default::default()
    })
}

fn request() -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        payload: Bytes::new(),
    }
}

fn breaker(server: &EchoServer) -> CircuitBreakerLayer<Grpc> {
    let config = CircuitBreakerConfig::builder()
        .peer(server.addr().to_string())
        .failure_threshold(3)
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    CircuitBreakerLayer::new(config).protocol(Grpc::default())
}

fn fallback()
-> FallbackLayer<impl palisade_fallback::source::Source<(), http::Response<Body>> + Send + Sync + 'static, Grpc> {
    FallbackLayer::builder()
        .grpc()
        .on_error::<CircuitOpen>()
        .from_fn(|error: &BoxError, ()| {
            let open = error
                .downcast_ref::<CircuitOpen>()
                .expect("only CircuitOpen is accepted");
            grpc_reply(
                &format!("stale; peer {}", open.peer().map_or("-", |p| p.as_str())),
                "fallback",
            )
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_tonic_client_behind_a_forced_open_breaker_gets_the_fallback() {
    let server = EchoServer::start("peer").await.unwrap();
    let breaker = breaker(&server);
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(fallback())
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(breaker)
        .service(server.channel());
    let mut client = EchoClient::new(stack);

    // Closed: the peer answers, unmarked.
    let response = client.unary(request()).await.unwrap();
    assert!(response.extensions().get::<FromFallback>().is_none());
    assert_eq!(response.into_inner().server, "peer");

    handle.force_open();
    let response = client.unary(request()).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::CircuitOpen)
    );
    let reply = response.into_inner();
    assert_eq!(reply.server, "fallback");
    assert_eq!(reply.message, format!("stale; peer {}", server.addr()));
    assert_eq!(
        server.stats().requests(),
        1,
        "the open breaker kept the call from the peer"
    );
}

#[tokio::test]
async fn a_breaker_tripped_by_refused_connections_hands_over_to_the_fallback() {
    let server = EchoServer::start("down").await.unwrap();
    server.refuse_connections().await;
    let breaker = breaker(&server);
    let handle = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(fallback())
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(breaker)
        .service(server.channel());
    let mut client = EchoClient::new(stack);

    // Transport errors are not CircuitOpen: they pass through, and trip the breaker.
    for _ in 0..3 {
        let status = client.unary(request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(handle.state(), CircuitState::Open);

    let response = client.unary(request()).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::CircuitOpen)
    );
    assert_eq!(response.into_inner().server, "fallback");
}
