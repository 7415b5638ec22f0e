//! Palisade's errors as a tonic generated client (`EchoClient`) sees them,
//! through the real layers over real tonic servers: each arrives with the
//! gRPC code a gRPC caller expects (never `UNKNOWN`), carrying its message,
//! and the typed error stays reachable through the `Status`'s `source()`.
//!
//! Time is paused: the only timer that can fire is the attempt timeout of the
//! `TimedOut` case, against a server that hangs, so the clock moving on its
//! own while a request is on the wire changes nothing.
#![allow(missing_docs)]

use std::error::Error as _;
use std::time::Duration;

use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::error::{
    BoxError, BulkheadFull, CircuitOpen, DeadlineExceeded, NoAvailablePeers, PalisadeError, TimedOut, find_error,
};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::protocol::{Grpc, GrpcCode};
use palisade_discovery::{InMemoryRegistry, Instance, PeerDiscoveryLayer, RegistryDiscover};
use palisade_fallback::FallbackLayer;
use palisade_fallback::error::FallbackFailed;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use palisade_timeout::TimeoutLayer;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower::{Layer, ServiceBuilder};

fn echo() -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    })
}

/// The status carries `code`, the Palisade error's own message, and the
/// typed error `E` as its source; the helpers find it from the status.
fn assert_arrives_as<E: std::error::Error + 'static>(status: &Status, code: Code) -> &E {
    assert_eq!(status.code(), code, "{status:?}");
    let source = status.source().expect("tonic keeps our error as the source");
    let typed = source
        .downcast_ref::<E>()
        .unwrap_or_else(|| panic!("the source is not a {}: {status:?}", std::any::type_name::<E>()));
    assert!(find_error::<E>(status).is_some(), "found from the status too");
    assert_eq!(status.message(), typed.to_string(), "the message is ours");
    let found = PalisadeError::find(status).expect("found from the status itself");
    assert_eq!(tonic::Code::from(found.grpc_code()), code);
    typed
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_arrives_as_deadline_exceeded() {
    let server = EchoServer::start("a").await.unwrap();
    let layer = TimeoutLayer::builder().grpc().build().unwrap();
    let mut client = EchoClient::new(layer.layer(server.channel()));
    let mut request = echo();
    request.call_options_mut().set_deadline(Deadline::after(Duration::ZERO));
    let status = client.unary(request).await.unwrap_err();
    let deadline: &DeadlineExceeded = assert_arrives_as(&status, Code::DeadlineExceeded);
    assert!(!deadline.was_sent());
    assert_eq!(server.stats().requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_arrives_as_deadline_exceeded() {
    let server = EchoServer::start("a").await.unwrap();
    server.faults().set_hang(true);
    let layer = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(layer.layer(server.channel()));
    let status = client.unary(echo()).await.unwrap_err();
    let timed_out: &TimedOut = assert_arrives_as(&status, Code::DeadlineExceeded);
    assert_eq!(timed_out.limit(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_arrives_as_unavailable() {
    let server = EchoServer::start("a").await.unwrap();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().peer(server.addr()).build().unwrap())
        .protocol(Grpc::default());
    layer.handle().force_open();
    let mut client = EchoClient::new(layer.layer(server.channel()));
    let status = client.unary(echo()).await.unwrap_err();
    let open: &CircuitOpen = assert_arrives_as(&status, Code::Unavailable);
    assert_eq!(
        open.peer().map(|p| p.as_str()),
        Some(server.addr().to_string().as_str())
    );
    assert_eq!(server.stats().requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_arrives_as_resource_exhausted() {
    let server = EchoServer::start("a").await.unwrap();
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(0)
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config).protocol(Grpc::default());
    let client = EchoClient::new(ServiceBuilder::new().layer(layer).service(server.channel()));
    // An open stream holds the only slot.
    let stream = StreamRequest {
        message: "s".into(),
        count: 100,
        payload: Default::default(),
        interval_ms: 0,
    };
    let mut open = client.clone().server_stream(stream).await.unwrap().into_inner();
    assert!(open.message().await.unwrap().is_some());
    let status = client.clone().unary(echo()).await.unwrap_err();
    let full: &BulkheadFull = assert_arrives_as(&status, Code::ResourceExhausted);
    assert_eq!(full.max_concurrent(), 1);
    assert_eq!(
        server.stats().requests(),
        1,
        "the refused call never reached the server"
    );
}

type MakeFn = Box<dyn FnMut(&Instance) -> Result<CircuitBreaker<Channel, Grpc>, BoxError> + Send>;

#[tokio::test(start_paused = true)]
async fn no_available_peer_arrives_as_unavailable() {
    let registry = InMemoryRegistry::without_ttl();
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap()).protocol(Grpc::default());
    let make: MakeFn = Box::new(move |instance: &Instance| {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        Ok(breaker.for_peer(instance.id()).layer(channel))
    });
    let discover = RegistryDiscover::new(&registry, "echo", make);
    let balancer = PeerDiscoveryLayer::builder()
        .grpc()
        .service_name("echo")
        .build()
        .unwrap()
        .layer(discover);
    let mut client = EchoClient::new(balancer);
    let status = client.unary(echo()).await.unwrap_err();
    let none: &NoAvailablePeers = assert_arrives_as(&status, Code::Unavailable);
    assert_eq!(none.known(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_fallback_arrives_with_its_primary_causes_code() {
    let server = EchoServer::start("a").await.unwrap();
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap()).protocol(Grpc::default());
    breaker.handle().force_open();
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<CircuitOpen>()
        .try_from_fn(|_: &BoxError, ()| Err::<http::Response<tonic::body::Body>, BoxError>("cache down".into()))
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(fallback)
        .map_response(|response: http::Response<_>| response.map(tonic::body::Body::new))
        .layer(breaker)
        .service(server.channel());
    let mut client = EchoClient::new(stack);
    let status = client.unary(echo()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "the primary cause's code: {status:?}");
    let source = status.source().unwrap();
    let failed = source
        .downcast_ref::<FallbackFailed>()
        .expect("the combined error is the source");
    assert!(failed.original().is::<CircuitOpen>());
    assert_eq!(failed.fallback().to_string(), "cache down");
    let found = PalisadeError::find(&status).unwrap();
    assert!(matches!(found, PalisadeError::CircuitOpen(_)));
    assert_eq!(found.grpc_code(), GrpcCode::UNAVAILABLE);
}
