//! Names for the common client stacks, to put in a struct field or a
//! function signature without boxing.
//!
//! A `ServiceBuilder` stack has a type, but one nobody wants to write: each
//! layer nests the one below it. Boxing it (`BoxCloneService`) hides the type
//! at the cost of an allocation per call, drops `Sync`, and fixes error and
//! body types that tonic's generated client must then accept (where users met
//! tonic's `From` bound failing inside `tokio::spawn`). These aliases are the
//! exact types the layers build, so a stack keeps every auto trait (`Send`,
//! `Sync`, `Clone`) of its parts:
//!
//! | alias | the stack, outermost first |
//! |---|---|
//! | [`PeerStack<S, P>`] | circuit breaker -> per-attempt timeout -> `S` (the preset's per-instance stack) |
//! | [`ClientStack<S, P, A, R>`] | total timeout -> retry -> bulkhead -> [`PeerStack`] (one connection) |
//! | [`GrpcStack<S>`] (feature `tonic`) | [`ClientStack`] over a tonic `Channel`, retry with [`tonic_body`](crate::retry::RetryLayerBuilder::tonic_body) |
//! | [`GrpcFallbackStack<Src, S>`] (features `tonic`, `fallback`) | a gRPC fallback over [`GrpcStack`], the body made tonic's `Body` for the fallback ([`with_fallback`]) |
//!
//! ```no_run
//! # #[cfg(feature = "tonic")] mod grpc {
//! use palisade::BoxError;
//! use palisade::bulkhead::BulkheadLayer;
//! use palisade::circuit_breaker::CircuitBreakerLayer;
//! use palisade::retry::RetryLayer;
//! use palisade::stack::GrpcStack;
//! use palisade::timeout::{TimeoutKind, TimeoutLayer};
//! use palisade_testkit::echo::{EchoRequest, echo_client::EchoClient};
//! use std::time::Duration;
//! use tonic::transport::Channel;
//! use tower::ServiceBuilder;
//!
//! /// A client that holds its stack by name: no box, no type parameter.
//! #[derive(Clone)]
//! struct Echo {
//!     stack: GrpcStack, // GrpcStack<Channel>
//! }
//!
//! fn stack(channel: Channel) -> Result<GrpcStack, BoxError> {
//!     Ok(ServiceBuilder::new()
//!         .layer(TimeoutLayer::builder().grpc().kind(TimeoutKind::Total).timeout(Some(Duration::from_secs(2))).build()?)
//!         .layer(RetryLayer::builder().grpc().tonic_body().retries(2).build()?)
//!         .layer(BulkheadLayer::builder().grpc().max_concurrent(16).build()?)
//!         .layer(CircuitBreakerLayer::builder().grpc().failure_threshold(3).build()?)
//!         .layer(TimeoutLayer::builder().grpc().timeout(Some(Duration::from_millis(300))).build()?)
//!         .service(channel))
//! }
//!
//! async fn run(channel: Channel) -> Result<(), BoxError> {
//!     let echo = Echo { stack: stack(channel)? };
//!     let task = tokio::spawn({
//!         let mut client = EchoClient::new(echo.stack.clone());
//!         async move { client.unary(EchoRequest::default()).await }
//!     });
//!     task.await??;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! The aliases name the layers' protocol and retry parameters and leave the
//! rest at their defaults; a stack configured beyond them (a retry predicate
//! closure, another layer) is named by writing its layers out the same way.

use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
#[cfg(feature = "tonic")]
use crate::core::protocol::Grpc;
#[cfg(feature = "tonic")]
use crate::retry::TonicBody;
use crate::retry::{DefaultPredicate, KeepReplayBody, Retry};
use crate::timeout::Timeout;

/// One peer (or the one connection): a circuit breaker over a per-attempt
/// timeout over `S`, all speaking protocol `P`. The breaker sits outside the
/// timeout so that a timed-out attempt counts as a failure of the peer. Built
/// by `.layer(breaker).layer(attempt_timeout).service(s)`; the preset's
/// per-instance service is a `PeerStack<Channel, Grpc>`.
pub type PeerStack<S, P> = CircuitBreaker<Timeout<S, P>, P>;

/// The client stack over one connection, outermost first: a total timeout
/// over a retry (attempt body `A`, predicate `R`) over a bulkhead over a
/// [`PeerStack`], all speaking protocol `P` (the order is explained in the
/// [crate docs](crate#the-client-stack)).
pub type ClientStack<S, P, A = KeepReplayBody, R = DefaultPredicate> =
    Timeout<Retry<Bulkhead<PeerStack<S, P>, P>, P, R, A>, P>;

/// The README's a-la-carte client stack: a [`ClientStack`] speaking gRPC over
/// a tonic `Channel` (or any `S` that takes `http::Request<tonic::body::Body>`),
/// its retry built with `.grpc().tonic_body()`. A tonic generated client
/// takes it as it is: `EchoClient::new(stack)`.
#[cfg(feature = "tonic")]
pub type GrpcStack<S = tonic::transport::Channel> = ClientStack<S, Grpc, TonicBody>;

/// The response of a [`GrpcStack`] before [`with_fallback`] turns its body
/// into tonic's `Body`: the body each following layer wrapped around the
/// channel's.
#[cfg(all(feature = "tonic", feature = "fallback"))]
pub type GrpcStackResponse<S = tonic::transport::Channel> =
    <GrpcStack<S> as tower::Service<http::Request<tonic::body::Body>>>::Response;

/// A gRPC fallback (source `Src`, the defaults otherwise) over a
/// [`GrpcStack`], made by [`with_fallback`]. Between the two the response
/// body becomes tonic's `Body`, so a fallback source answers
/// `http::Response<tonic::body::Body>`, a response it can build. A closure's
/// type cannot be written, so to name the whole stack give the fallback a
/// source type of your own ([`Source`](crate::fallback::source::Source),
/// set with [`source`](crate::fallback::FallbackBuilder::source)):
/// `GrpcFallbackStack<Stale>`. (A `fn(&BoxError, ()) -> Reply` pointer is
/// nameable too, but rustc cannot prove a spawned task holding it `Send`:
/// the `&BoxError` is higher-ranked.)
#[cfg(all(feature = "tonic", feature = "fallback"))]
pub type GrpcFallbackStack<Src, S = tonic::transport::Channel> = crate::fallback::Fallback<
    tower::util::MapResponse<GrpcStack<S>, fn(GrpcStackResponse<S>) -> http::Response<tonic::body::Body>>,
    Src,
    Grpc,
>;

/// Puts `fallback` over `stack`, with the stack's response body turned into
/// tonic's `Body` in between (see [`GrpcFallbackStack`]).
#[cfg(all(feature = "tonic", feature = "fallback"))]
pub fn with_fallback<Src, S, B>(
    fallback: &crate::fallback::FallbackLayer<Src, Grpc>,
    stack: GrpcStack<S>,
) -> GrpcFallbackStack<Src, S>
where
    GrpcStack<S>: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    use tower::{Layer, ServiceExt};
    let tonic_body: fn(http::Response<B>) -> http::Response<tonic::body::Body> =
        |response| response.map(tonic::body::Body::new);
    fallback.layer(stack.map_response(tonic_body))
}
