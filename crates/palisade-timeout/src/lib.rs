//! Timeouts and deadlines for tower services: one [`TimeoutLayer`] serves as
//! the per-attempt timeout (inside retry, per peer) and as the total timeout
//! (outside retry); per-call overrides; deadlines that bound every timeout
//! below them and travel to the next service over gRPC; and real
//! cancellation of the work that timed out.
//!
//! # Example
//!
//! ```
//! use palisade_core::options::{CallOptionsExt, Deadline};
//! use palisade_timeout::{DeadlineExceeded, TimedOut, TimeoutKind, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A slow http service behind a 5 s per-attempt timeout.
//! let mut service = ServiceBuilder::new()
//!     .layer(TimeoutLayer::builder().http().timeout(Some(Duration::from_secs(5))).build().unwrap())
//!     .service_fn(|_req: http::Request<String>| async {
//!         tokio::time::sleep(Duration::from_secs(10)).await;
//!         Ok::<_, std::io::Error>(http::Response::new(String::new()))
//!     });
//!
//! // This call allows only 2 s: the per-call option overrides the layer.
//! let mut request = http::Request::new(String::new());
//! request.call_options_mut().set_timeout(Duration::from_secs(2));
//! let err = service.ready().await.unwrap().call(request).await.unwrap_err();
//! let timed_out = err.downcast_ref::<TimedOut>().unwrap();
//! assert_eq!((timed_out.kind(), timed_out.limit()), (TimeoutKind::Attempt, Duration::from_secs(2)));
//!
//! // A call whose deadline has passed is never sent.
//! let mut request = http::Request::new(String::new());
//! request.call_options_mut().set_deadline(Deadline::after(Duration::ZERO));
//! let err = service.ready().await.unwrap().call(request).await.unwrap_err();
//! assert!(!err.downcast_ref::<DeadlineExceeded>().unwrap().was_sent());
//! # }
//! ```
//!
//! # The limit of a call
//!
//! The timeout of a call is, from the most specific to the least:
//!
//! 1. the per-call timeout in the request's
//!    [`CallOptions`](palisade_core::options::CallOptions)
//!    (`Some(Duration::ZERO)`, set by `disable_timeout`, disables it);
//! 2. the layer's override for the request's route
//!    ([`TimeoutBuilder::route`], matched against the protocol's
//!    `Inspect::route`: an http path or a gRPC method);
//! 3. the layer's timeout, 30 s by default ([`TimeoutBuilder::timeout`];
//!    `None` disables it).
//!
//! The call's **deadline** then bounds it: the effective limit is the smaller
//! of the timeout and the time left until the deadline. The deadline is the
//! earlier of the one in the request's `CallOptions` and the deadline of the
//! request being handled (see below): a nested call never outlives its parent. When the timeout fires the call fails with
//! [`TimedOut`] naming the limit and the layer's [`TimeoutKind`]
//! ([`Attempt`](TimeoutKind::Attempt), retryable, or
//! [`Total`](TimeoutKind::Total)); when the deadline fires it fails with
//! [`DeadlineExceeded::in_flight`], naming the time the call was given. A
//! call whose deadline has already passed fails with
//! [`DeadlineExceeded::before_send`] and the inner service is **never
//! called**. Only requests that carry extensions (protocols
//! [`Http`](palisade_core::protocol::Http) and
//! [`Grpc`](palisade_core::protocol::Grpc)) have per-call options; others get
//! the layer's timeout and the inherited deadline.
//!
//! A timer is created only when a limit applies: with the timeout disabled and
//! no deadline, a call costs a few branches.
//!
//! # Cancellation
//!
//! When a limit fires, the inner future is dropped at once, before the error
//! is returned. Over HTTP/2 (tonic, hyper) dropping the response future resets
//! the stream, so the server's handler is cancelled; this crate's integration
//! tests prove it against a real tonic server, for unary and for
//! server-streaming calls.
//!
//! # Propagation over gRPC and http
//!
//! With a gRPC protocol ([`TimeoutBuilder::grpc`]) every outgoing request
//! carries `grpc-timeout` with the effective limit, in the wire format of
//! [`grpc_timeout`]: at most eight digits and a unit, rounded **down** so that
//! the server never gets more time than the client has. A shorter
//! `grpc-timeout` already on the request (tonic's `Request::set_timeout`) is
//! kept. A tonic `Channel` enforces that header itself and fails with a
//! `Cancelled` status at the same moment as this layer's timer; so when this
//! call wrote the header, was pending until the limit and then got an inner
//! error with the limit due (within the timer's 1 ms resolution), the error
//! is reported as this layer's typed [`TimedOut`] / [`DeadlineExceeded`]
//! (tonic keeps it as the status' `source()`), so that retry and breaker
//! policies see what happened. Every other inner error (any http or plain
//! service, an error before the call was ever pending, an error well before
//! the limit) passes through untouched.
//! For hyper services, [`TimeoutBuilder::propagate_header`] writes the
//! limit in whole milliseconds in a header of your choice.
//!
//! On the server, [`DeadlineServerLayer`] (for `tonic::transport::Server::layer`
//! or any `Service<http::Request<_>>`) reads that header and makes the
//! deadline current while the request is handled: every [`TimeoutLayer`] on
//! a client called from the handler bounds its call by it and forwards the
//! time left, with no user code, so a deadline set at the edge flows through a
//! whole chain of services.
//!
//! # Layers below see the limit
//!
//! For requests with extensions ([`Http`](palisade_core::protocol::Http),
//! [`Grpc`](palisade_core::protocol::Grpc)) the layer writes the instant its
//! call must end into the request's `CallOptions` as its deadline (keeping an
//! earlier one): the inherited deadline, and this layer's own timeout as
//! `now + limit`, whatever its [`TimeoutKind`]. So a per-attempt layer below a
//! total one sends a `grpc-timeout` no longer than the total's time left and
//! stops there, and a retry layer in between sees how much time is left. When
//! the layer below fails with [`DeadlineExceeded`] at exactly this layer's
//! limit, this layer reports its own error (a total timeout's
//! [`TimedOut`] of kind [`Total`](TimeoutKind::Total)).
//!
//! # Placement
//!
//! - A per-call `timeout` in `CallOptions` applies to **every**
//!   [`TimeoutLayer`] the call passes (per attempt and total alike); to bound
//!   the whole call only, set a deadline instead.
//! - The current deadline of a handler is task-local (it follows the future
//!   being polled). A `TimeoutLayer` must sit **above** any
//!   `tower::buffer::Buffer` (or anything that moves the call to another
//!   task): below it, the inherited deadline is not seen. A deadline already
//!   in the request's `CallOptions` travels with the request and is not
//!   affected.
//!
//! The deadline follows the handler's future (and a streaming response's
//! body), **not** tasks the handler spawns: carry it with [`current_deadline`]
//! and [`with_deadline`].
//!
//! # Streaming responses
//!
//! For http responses the layer's timeout bounds the time to the response
//! headers; the response future ends there. The body is bounded separately,
//! by [`TimeoutBuilder::body_timeout`] (total time, from the headers) and
//! [`TimeoutBuilder::body_idle_timeout`] (time between frames), through
//! [`palisade_body`]: exceeding them ends the body with a typed [`TimedOut`]
//! error (kind [`Body`](TimeoutKind::Body) or
//! [`BodyIdle`](TimeoutKind::BodyIdle)), which every classifier counts as a
//! failure. A deadline does not bound the body on the client: over gRPC the
//! server enforces it (its status then says `DEADLINE_EXCEEDED`); set a body
//! limit to bound a stream locally.
//!
//! # Events and metrics
//!
//! Every fired limit emits [`EventKind::TimedOut`](palisade_core::event::EventKind::TimedOut)
//! (kind `attempt`, `total` or `deadline`), and a call refused before send
//! emits [`EventKind::Rejected`](palisade_core::event::EventKind::Rejected),
//! to `tracing` (target `palisade`, `layer = "timeout"`) and to the
//! listeners of [`TimeoutBuilder::listener`]. With the `metrics` feature,
//! counters `palisade_timeout_timed_out_total{kind}` and
//! `palisade_timeout_deadline_exceeded_total{sent}` count them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod config;
mod context;
pub mod error;
mod future;
pub mod grpc_timeout;
mod layer;
mod server;
mod service;

pub use config::{DEFAULT_TIMEOUT, TimeoutBuilder};
pub use context::{WithDeadline, current_deadline, with_deadline};
pub use error::{DeadlineExceeded, TimedOut, TimeoutKind};
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use palisade_core::options::Deadline;
pub use server::{DeadlineBody, DeadlineServer, DeadlineServerLayer, ServerFuture};
pub use service::Timeout;
