//! A tower layer that answers a failed call from a fallback: a fixed value, a
//! function, an async function, or another service.
//!
//! Put it outermost in a client stack (above timeouts, retries, the bulkhead
//! and the balancer, see the `palisade` facade): it then sees the *final*
//! failure of a call, including [`NoAvailablePeers`](error::NoAvailablePeers)
//! and [`CircuitOpen`](error::CircuitOpen), and turns it into a response.
//!
//! # Example
//!
//! ```
//! use palisade_fallback::error::{BoxError, CircuitOpen, FallbackFailed};
//! use palisade_fallback::{FallbackLayer, FromFallback, Served};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A backend whose breaker is open for user 7.
//! let backend = service_fn(|user: u32| async move {
//!     if user == 7 {
//!         Err::<String, BoxError>(CircuitOpen::new(None, Duration::from_secs(5)).into())
//!     } else {
//!         Ok(format!("profile of {user}"))
//!     }
//! });
//!
//! let layer = FallbackLayer::builder()
//!     .plain() // a non-http service; `.grpc()` over a tonic `Channel`, `.http()` over hyper
//!     .on_error::<CircuitOpen>() // only this kind; other errors pass untouched
//!     .keep(|user: &u32| *user) // what the fallback needs of the request
//!     .from_fn(|_error: &BoxError, user: u32| format!("cached profile of {user}"))
//!     .served() // `String` has no room for a mark: answer `Served<String>`
//!     .build()
//!     .unwrap();
//! let client = ServiceBuilder::new().layer(layer).service(backend);
//!
//! let fresh = client.clone().oneshot(1).await.unwrap();
//! assert_eq!(fresh.value, "profile of 1");
//! assert!(!fresh.is_fallback());
//!
//! let Served { value, from_fallback } = client.oneshot(7).await.unwrap();
//! assert_eq!(value, "cached profile of 7");
//! assert_eq!(from_fallback.map(|f: FromFallback| f.reason.as_str()), Some("circuit open"));
//! # }
//! ```
//!
//! # Behaviour
//!
//! - **When.** The inner call's error goes through the [predicate](policy):
//!   by default every error triggers the fallback; with
//!   [`on_error::<T>()`](FallbackBuilder::on_error) /
//!   [`on_error_where`](FallbackBuilder::on_error_where) only the named kinds do
//!   (matched in the error's source chain too). An error the predicate does not
//!   accept is returned as it is: the same value, downcastable to its type.
//!   Responses pass unless a response rule says they failed
//!   ([`on_response`](FallbackBuilder::on_response),
//!   [`on_failed_response`](FallbackBuilder::on_failed_response) with the
//!   [`Http`](palisade_core::protocol::Http) or
//!   [`Grpc`](palisade_core::protocol::Grpc) protocol).
//!   An error from the inner service's `poll_ready` is not a call's failure: it
//!   is terminal for tower and is returned untouched.
//! - **Sources** ([`source`]): [`value`](FallbackBuilder::value) (cloned),
//!   [`from_fn`](FallbackBuilder::from_fn) /
//!   [`try_from_fn`](FallbackBuilder::try_from_fn) (given the error and what
//!   the [extractor](extract) kept of the request),
//!   [`from_async`](FallbackBuilder::from_async), and
//!   [`from_service`](FallbackBuilder::from_service) (another backend or a
//!   cache, sent the kept value as its request; with
//!   [`keep_head`](FallbackBuilder::keep_head) an http service gets a request
//!   rebuilt from the original head via
//!   [`RequestHead::into_request`](extract::RequestHead::into_request)). The
//!   extractor runs on `&Req` before the call, so request bodies are never
//!   cloned.
//! - **Per call.** A [`CallFallback`] in the request's extensions answers
//!   instead of the layer's source (see [`per_call`]).
//! - **Per route.** [`route`](FallbackBuilder::route) turns the fallback off
//!   on one http path or gRPC method ([`RouteFallback::Off`], say for calls
//!   that must not be answered by a stand-in), or gives that route its own
//!   error rules ([`RouteFallback::OnErrors`]).
//! - **Marked.** A fallback response says so ([`mark`]): a [`FromFallback`]
//!   response extension on `http::Response` (visible through
//!   `tonic::Response::extensions()`), or [`Served`] for other types.
//! - **Failing fallback.** If the source fails, the call fails with
//!   [`FallbackFailed`], which carries the original error and the fallback's.
//! - **Events.** Each fallback emits
//!   [`EventKind::Fallback`](palisade_core::event::EventKind::Fallback) to
//!   `tracing` (target `palisade`, `layer = "fallback"`, `reason`) and to the
//!   [listeners](FallbackBuilder::listener); a failing fallback logs a
//!   `fallback_failed` debug event. With the `metrics` feature, the counters
//!   `palisade_fallback_total` and `palisade_fallback_failed_total` (label
//!   `reason`, a [`FallbackReason`]) count them.
//!
//! # Response types in a stack
//!
//! A source answers with the response type of the service directly under the
//! layer. Over a tonic `Channel` that is `http::Response<tonic::body::Body>`,
//! which a function can build (a unary reply is one length-prefixed message
//! and a `grpc-status: 0` trailer). Layers that follow a body to its end (the
//! circuit breaker, the bulkhead) wrap it in a type of their own; put a
//! `map_response(|r: http::Response<_>| r.map(tonic::body::Body::new))` (or
//! hyper's boxed body) between them and the fallback so that the fallback
//! builds a plain body (the facade's `palisade::stack::with_fallback` does
//! this over its named gRPC stack). Alternatively, apply the layer at the typed level (a
//! `Service<EchoRequest, Response = EchoReply>` made with `service_fn` over a
//! generated client): requests are then messages that can be kept (cloned)
//! and sent to another backend with [`from_service`](FallbackBuilder::from_service).
//! A gRPC request body cannot be kept at the http level: it is a stream.
//!
//! At the typed level tonic returns `tonic::Status` errors whose
//! [`source`](std::error::Error::source) is the error of the stack (a
//! `CircuitOpen`, a transport error), so [`on_error::<T>()`](FallbackBuilder::on_error)
//! still matches; to match a status code, use
//! [`on_error_where`](FallbackBuilder::on_error_where) with
//! `e.downcast_ref::<tonic::Status>()`.
//!
//! # Streamed responses
//!
//! The layer answers a call once, when the call's result arrives. For an http
//! response that is when its head arrives: the body is handed to the caller,
//! who reads it afterwards. A failure that is only known at the end of the
//! body — a gRPC stream whose trailers say `UNAVAILABLE`, a body that breaks
//! half-way — cannot be answered by a fallback: the response already belongs
//! to the caller, and part of it may have been read. The layer therefore offers
//! the fallback only where the verdict is known before the body starts:
//! errors (connection refused, breaker open, no peers, timeouts), response
//! heads (HTTP 5xx), and trailers-only gRPC responses (a `grpc-status` in the
//! headers, which is how servers answer a unary call that fails before
//! sending a message). Such a response with a later failure passes through;
//! the breaker and the other Palisade layers still count it by how it ended.
//!
//! # Naming the type
//!
//! `Fallback<S, Src, P = Plain, R = NoResponseRule, X = KeepNothing, M = ByTrait>`
//! (and [`FallbackLayer`] without `S`): the parameters come in the order a
//! user changes them, so a type with the defaults stops early. The protocol
//! comes first because every http or gRPC fallback sets it; then the
//! response rule, the knob of a fallback over http or gRPC (whose request
//! bodies are streams, so the extractor usually stays [`KeepNothing`](extract::KeepNothing)
//! and the marking [`ByTrait`](mark::ByTrait)); one rule is its own type
//! ([`AddRule`](policy::AddRule)):
//!
//! ```
//! use palisade_core::error::ConfigError;
//! use palisade_core::protocol::Grpc;
//! use palisade_fallback::FallbackLayer;
//! use palisade_fallback::policy::ClassifiedFailure;
//! use palisade_fallback::source::Value;
//!
//! type Answer = http::Response<String>;
//!
//! /// A gRPC fallback that also answers trailers-only failures.
//! fn guarded(answer: Answer) -> Result<FallbackLayer<Value<Answer>, Grpc, ClassifiedFailure>, ConfigError> {
//!     FallbackLayer::builder().grpc().on_failed_response().value(answer).build()
//! }
//! # guarded(http::Response::new(String::new())).unwrap();
//! ```
//!
//! The extractor, the rule and the marking are not folded into one policy
//! parameter: with the defaults both spellings are `Fallback<S, Src, Grpc>`,
//! and with any one of them changed a folded policy would still spell the
//! same parameters inside a wrapper type, so it would be longer, never
//! shorter.
//!
//! # Cost
//!
//! On the success path the layer adds no allocation: the extractor (`()` by
//! default), a lookup of [`CallFallback`] in the request's extensions (only
//! with a protocol that has extensions), a lookup of the route's override
//! (only when the layer has some), one reference-count increment (the
//! response future holds the layer's shared state, which it needs to call the
//! fallback), and the response rule (none by default). Errors are boxed into
//! [`BoxError`](error::BoxError), as everywhere in tower; a fallback answer
//! allocates what its source allocates, and its mark.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod error;
pub mod extract;
pub mod future;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod layer;
pub mod mark;
pub mod per_call;
pub mod policy;
pub mod service;
pub mod source;

pub use config::FallbackBuilder;
pub use error::{FailedResponse, FallbackFailed};
pub use layer::FallbackLayer;
pub use mark::{FallbackReason, FromFallback, MarkFallback, Served};
pub use per_call::CallFallback;
pub use policy::RouteFallback;
pub use service::Fallback;
