//! The fallback layer in front of real tonic clients: a peer that refuses
//! connections, a peer behind an open breaker, a trailers-only failure status,
//! and a per-call fallback carried by a `tonic::Request`.
//!
//! Here the open breaker is a stand-in that answers
//! `palisade_core::error::CircuitOpen` without calling its inner channel,
//! exactly what the standalone breaker does when open; `fallback_breaker.rs`
//! runs the same case through the real `palisade-circuit-breaker`.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use palisade_core::error::{BoxError, CircuitOpen};
use palisade_fallback::{CallFallback, FallbackLayer, FallbackReason, FromFallback, Served};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoReply, EchoRequest};
use tonic::Code;
use tonic::body::Body;
use tower::{Service, ServiceBuilder, ServiceExt};

type GrpcResponse = http::Response<Body>;

/// A unary gRPC `EchoReply { message, server }` with status OK, as a server
/// would send it: the typed fallback helper frames the message.
fn grpc_reply(message: &str, server: &str) -> GrpcResponse {
    palisade_fallback::grpc::grpc_reply(&EchoReply {
        message: message.into(),
        server: server.into(),
        ..Default::default()
    })
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: Bytes::new(),
    }
}

async fn refused_server() -> EchoServer {
    let server = EchoServer::start("down").await.unwrap();
    server.refuse_connections().await;
    server
}

#[tokio::test]
async fn tonic_client_whose_only_peer_refuses_connections_gets_the_fallback() {
    let server = refused_server().await;
    let fallback = FallbackLayer::builder()
        .grpc()
        // A refused connection: a tonic transport error caused by an io::Error.
        .on_error::<std::io::Error>()
        .from_fn(|error: &BoxError, ()| grpc_reply(&format!("fallback after: {error}"), "fallback"))
        .build()
        .unwrap();
    let channel = ServiceBuilder::new().layer(fallback).service(server.channel());
    let mut client = EchoClient::new(channel);

    let response = client.unary(request("hello")).await.expect("the fallback answered");
    let from = response.extensions().get::<FromFallback>().copied();
    assert_eq!(
        from,
        Some(FromFallback {
            reason: FallbackReason::Error,
            per_call: false
        })
    );
    let reply = response.into_inner();
    assert_eq!(reply.server, "fallback");
    assert!(reply.message.starts_with("fallback after: "), "{}", reply.message);
    assert_eq!(server.stats().requests(), 0, "the peer never saw a request");
}

#[tokio::test]
async fn tonic_client_without_a_matching_predicate_sees_the_transport_error() {
    let server = refused_server().await;
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<CircuitOpen>()
        .from_fn(|_: &BoxError, ()| grpc_reply("unused", "fallback"))
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(fallback).service(server.channel()));
    let status = client.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Stands in for an open per-peer circuit breaker: refuses every call with
/// `CircuitOpen` and never calls the channel it guards.
#[derive(Clone)]
struct OpenBreaker<S> {
    inner: S,
}

impl<S, Req> Service<Req> for OpenBreaker<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::Ready<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // An open breaker never fails poll_ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        let _ = &self.inner;
        futures::future::ready(Err(CircuitOpen::new(
            Some("10.0.0.9:50051".into()),
            Duration::from_secs(10),
        )
        .into()))
    }
}

#[tokio::test]
async fn tonic_client_behind_an_open_breaker_gets_the_fallback_from_another_backend() {
    let primary = EchoServer::start("primary").await.unwrap();
    let secondary = EchoServer::start("secondary").await.unwrap();
    let breaker = OpenBreaker {
        inner: primary.channel(),
    };

    // At the typed level, the request is a message we can keep (clone) and
    // send to another backend.
    let guarded = EchoClient::new(breaker);
    let primary_call = tower::service_fn(move |req: EchoRequest| {
        let mut client = guarded.clone();
        async move { client.unary(req).await.map(tonic::Response::into_inner) }
    });
    let secondary_client = secondary.client();
    let secondary_call = tower::service_fn(move |req: EchoRequest| {
        let mut client = secondary_client.clone();
        async move { client.unary(req).await.map(tonic::Response::into_inner) }
    });
    let layer = FallbackLayer::builder()
        .plain()
        // tonic turns the breaker's error into a Status whose source is the CircuitOpen.
        .on_error::<CircuitOpen>()
        .keep(|req: &EchoRequest| req.clone())
        .from_service(secondary_call)
        .served()
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(primary_call);

    let Served { value, from_fallback } = svc.ready().await.unwrap().call(request("ping")).await.unwrap();
    assert_eq!(
        value,
        EchoReply {
            message: "ping".into(),
            server: "secondary".into(),
            count: 1,
            ..Default::default()
        }
    );
    assert_eq!(from_fallback.map(|f| f.reason), Some(FallbackReason::CircuitOpen));
    assert_eq!(primary.stats().requests(), 0);
    assert_eq!(secondary.stats().requests(), 1);
}

#[tokio::test]
async fn tonic_client_behind_an_open_breaker_gets_the_fallback_at_the_http_level() {
    let primary = EchoServer::start("primary").await.unwrap();
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<CircuitOpen>()
        .from_fn(|_: &BoxError, ()| grpc_reply("stale", "cache"))
        .build()
        .unwrap();
    let stack = ServiceBuilder::new().layer(fallback).service(OpenBreaker {
        inner: primary.channel(),
    });
    let response = EchoClient::new(stack).unary(request("x")).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::CircuitOpen)
    );
    assert_eq!(response.into_inner().server, "cache");
    assert_eq!(primary.stats().requests(), 0);
}

#[tokio::test]
async fn trailers_only_unavailable_is_answered_by_the_fallback() {
    let server = EchoServer::start("flaky").await.unwrap();
    server.faults().fail_next(1, Code::Unavailable);
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_failed_response()
        .from_fn(|_: &BoxError, ()| grpc_reply("fallback", "fallback"))
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(fallback).service(server.channel()));

    let first = client.unary(request("a")).await.unwrap();
    assert_eq!(
        first.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::FailedResponse)
    );
    assert_eq!(first.into_inner().server, "fallback");
    // The next call succeeds at the peer and passes unmarked.
    let second = client.unary(request("b")).await.unwrap();
    assert!(second.extensions().get::<FromFallback>().is_none());
    assert_eq!(second.into_inner().server, "flaky");
    assert_eq!(server.stats().requests(), 2);
}

#[tokio::test]
async fn a_per_call_fallback_on_a_tonic_request_wins_over_the_layers() {
    let server = refused_server().await;
    let fallback = FallbackLayer::builder()
        .grpc()
        .from_fn(|_: &BoxError, ()| grpc_reply("layer", "layer"))
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(fallback).service(server.channel()));

    let mut call = tonic::Request::new(request("x"));
    call.extensions_mut()
        .insert(CallFallback::<GrpcResponse>::new(|_| grpc_reply("call", "per-call")));
    let response = client.unary(call).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.per_call),
        Some(true)
    );
    assert_eq!(response.into_inner().server, "per-call");

    let response = client.unary(request("y")).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.per_call),
        Some(false)
    );
    assert_eq!(response.into_inner().server, "layer");
}

#[tokio::test]
async fn a_typed_fallback_answers_with_the_methods_message_or_a_status() {
    use palisade_fallback::grpc::GrpcFallback;

    let server = refused_server().await;
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<std::io::Error>()
        .source(GrpcFallback::new(|error: &BoxError| {
            Ok(EchoReply {
                message: format!("cached, because {error}"),
                server: "fallback".into(),
                ..Default::default()
            })
        }))
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(fallback).service(server.channel()));
    let reply = client
        .unary(request("hello"))
        .await
        .expect("the typed fallback answered");
    assert_eq!(reply.get_ref().server, "fallback");
    assert!(
        reply.get_ref().message.starts_with("cached, because"),
        "{:?}",
        reply.get_ref()
    );
    assert_eq!(server.stats().requests(), 0);

    // A status instead of a message: the caller sees that status.
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<std::io::Error>()
        .source(GrpcFallback::new(|_: &BoxError| {
            Err::<EchoReply, _>(tonic::Status::resource_exhausted("shed by the fallback"))
        }))
        .build()
        .unwrap();
    let mut client = EchoClient::new(ServiceBuilder::new().layer(fallback).service(server.channel()));
    let status = client.unary(request("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "shed by the fallback");
}
