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
//! // This call allows only 2 s per attempt: the per-call option overrides a
//! // per-attempt layer (a `Total` layer would keep its own limit).
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
//! A call's per-call `timeout` bounds **each attempt**; its **deadline**
//! bounds the whole call (every attempt and every backoff sleep). So a layer
//! of kind [`Attempt`](TimeoutKind::Attempt) (or
//! [`Headers`](TimeoutKind::Headers)) honours the per-call timeout, and a
//! layer of kind [`Total`](TimeoutKind::Total) ignores it: a call that sets
//! only `set_timeout(50ms)` gets 50 ms per attempt and may be retried, and
//! the total layer keeps its own limit. One table, most specific first; a
//! layer takes the first row that is set as its **timeout**, then the
//! deadline rows bound it:
//!
//! | source | `Attempt` / `Headers` layer | `Total` layer |
//! |---|---|---|
//! | per-call timeout: [`CallOptions::set_attempt_timeout`](palisade_core::options::CallOptions::set_attempt_timeout) (alias `set_timeout`); zero ([`disable_timeout`](palisade_core::options::CallOptions::disable_timeout)) disables the timeout | used | **ignored** |
//! | the layer's route override ([`TimeoutBuilder::route`], matched against the protocol's `Inspect::route`: an http path or a gRPC method); `None` disables | used | used |
//! | the layer's timeout ([`TimeoutBuilder::timeout`], 30 s by default; `None` disables) | used | used |
//! | the call's deadline in its `CallOptions` ([`CallOptions::set_deadline`](palisade_core::options::CallOptions::set_deadline)); a total layer above writes its own end here | bounds the timeout | bounds the timeout |
//! | the inherited deadline of the request being handled ([`DeadlineServerLayer`], [`with_deadline`]) | bounds the timeout | bounds the timeout |
//!
//! The effective limit is the smallest of the timeout and the time left
//! until the earlier of the two deadlines: a nested call never outlives its
//! parent. When the timeout fires the call fails with [`TimedOut`] naming the
//! limit and the layer's [`TimeoutKind`] ([`Attempt`](TimeoutKind::Attempt),
//! retryable, or [`Total`](TimeoutKind::Total)); when a deadline fires it
//! fails with [`DeadlineExceeded::in_flight`], naming the time the call was
//! given. A call whose deadline has already passed fails with
//! [`DeadlineExceeded::before_send`] and the inner service is **never
//! called**. Only requests that carry extensions (protocols
//! [`Http`](palisade_core::protocol::Http) and
//! [`Grpc`](palisade_core::protocol::Grpc)) have per-call options; others get
//! the layer's timeout and the inherited deadline.
//!
//! To bound a whole call from the caller's side, set a deadline (or a total
//! layer's timeout); to bound each try, set the per-call timeout.
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
//! # A timer that fires late: the client stalled
//!
//! When the client's own runtime stalls (the host took its CPU away, a task
//! blocked a worker thread), every timer in it fires late, and each attempt
//! in flight times out although its peer may have answered in time, unread.
//! Counting those as the peer's failures opens the breaker of a healthy peer
//! (of the only peer, over one channel) and the client then fails every call
//! after the stall ends, while a bare client only slowed down.
//!
//! So a timeout whose timer fires more than
//! [`STALL_TOLERANCE`](palisade_core::error::STALL_TOLERANCE) (100 ms) after
//! its deadline is taken for the client's stall: the caller still gets
//! [`TimedOut`] (and a retry may follow), but
//! [`TimedOut::is_client_stall`](palisade_core::error::TimedOut::is_client_stall)
//! is true and the built-in classifiers count the call as
//! [`Outcome::Ignored`](palisade_core::classify::Outcome::Ignored): the
//! breaker and an adaptive bulkhead limit above the timeout do not blame the
//! peer. A `warn` event (`event = "client_stall"`, with `late_ms`) says so.
//! tokio's timers fire within a millisecond of their deadline on a runtime
//! that keeps up, so 100 ms late is never the peer's doing; a classifier of
//! your own ([`ClassifyExt::errors_with`](palisade_core::classify::ClassifyExt::errors_with))
//! can decide otherwise.
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
//! stops there, and a retry layer in between sees how much time is left (a
//! gRPC retry layer rewrites `grpc-timeout` on every attempt it sends with
//! the time left at that moment, so a retry sent after a backoff never
//! carries the first attempt's value, with or without a per-attempt layer
//! below it). When
//! the layer below fails with [`DeadlineExceeded`] at exactly this layer's
//! limit, this layer reports its own error (a total timeout's
//! [`TimedOut`] of kind [`Total`](TimeoutKind::Total)).
//!
//! # Placement
//!
//! - A per-call `timeout` in `CallOptions` applies to every per-attempt
//!   layer the call passes and to none of kind
//!   [`Total`](TimeoutKind::Total) (see the table above); to bound the whole
//!   call, set a deadline.
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
//! Only a layer with a body limit touches the response. The limits are a
//! typestate: a builder starts on [`NoBodyLimits`] and the two body setters
//! move it to [`BodyLimited`], so `TimeoutLayer<P>` (that is,
//! `TimeoutLayer<P, NoBodyLimits>`) returns the inner service's response as
//! it is, like tower's `Timeout`, with no body wrapper and no per-call
//! branch, and `TimeoutLayer<P, BodyLimited>` wraps its body in a
//! [`palisade_body::CompletionBody`]. Route overrides set the timeout only,
//! so the body state is the layer's, for every route. Above another
//! tracking layer, a body-limited timeout can speak
//! [`Joined`](palisade_body::Joined)`(Grpc::default())` to add its limits to
//! the body below instead of wrapping it again.
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

mod body;
mod config;
pub mod error;
mod future;
mod layer;
mod server;
mod service;

pub use body::{BodyLimited, BodyMode, NoBodyLimits, TrackBody};
pub use config::{DEFAULT_TIMEOUT, TimeoutBuilder};
pub use error::{DeadlineExceeded, TimedOut, TimeoutKind};
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
/// The inherited deadline lives in [`palisade_core::context`], where every
/// layer reads it; re-exported here unchanged.
pub use palisade_core::context::{WithDeadline, current_deadline, with_deadline};
/// The `grpc-timeout` wire format; it lives in
/// [`palisade_core::grpc_timeout`] (the retry layer writes the header too) and
/// is re-exported here unchanged.
pub use palisade_core::grpc_timeout;
pub use palisade_core::options::Deadline;
pub use server::{DeadlineBody, DeadlineServer, DeadlineServerLayer, ServerFuture};
pub use service::Timeout;
