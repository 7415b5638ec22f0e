//! The shared vocabulary of Palisade, a family of tower middleware that keeps
//! service clients working while the peers behind them fail, slow down or
//! vanish.
//!
//! This crate holds no middleware. It holds what every Palisade layer agrees
//! on, so that the layers compose without depending on each other:
//!
//! - [`classify`]: was a call a success, a failure or neither, now or at the
//!   end of its stream, and what an abandoned call means
//!   ([`AbandonPolicy`](classify::AbandonPolicy)); [`protocol`]: the [`Plain`](protocol::Plain),
//!   [`Http`](protocol::Http) and [`Grpc`](protocol::Grpc) classifiers and
//!   request inspectors every layer is generic over;
//! - [`options`]: per-call options (timeout, retries, deadline) in request extensions;
//! - [`context`]: the deadline of the request being handled (a task-local),
//!   which every layer reads besides the call's own;
//! - [`peer`]: [`PeerId`](peer::PeerId), the per-call
//!   [`AttemptRecord`](peer::AttemptRecord) and the
//!   [`CheckAvailability`](peer::CheckAvailability) trait a balancer asks;
//! - [`backoff`]: exponential, linear and constant backoff with jitter;
//! - [`keyed`]: the request key of keyed layers ([`KeyOf`](keyed::KeyOf),
//!   [`ByRoute`](keyed::ByRoute), [`KeyFn`](keyed::KeyFn)) and the bounded
//!   per-key map with idle/LRU eviction ([`KeyedMap`](keyed::KeyedMap));
//! - [`time`]: an instant a duration from now, or a far future
//!   ([`time::after`], one horizon: [`FAR_FUTURE`](time::FAR_FUTURE));
//! - [`grpc_timeout`]: the `grpc-timeout` wire format (rounded down), shared
//!   by the layers that tell a server how much time a call has left;
//! - [`retry`]: the retry predicate and the [`Retryable`](retry::Retryable) mark;
//! - [`route`]: [`RouteTable`](route::RouteTable), the per-route override
//!   table every layer with per-route settings uses (exact match on the
//!   route, a duplicate is a `ConfigError` at `build()`);
//! - [`error`]: the failure kinds every layer returns ([`CircuitOpen`](error::CircuitOpen),
//!   [`TimedOut`](error::TimedOut), ...), how to find one behind a
//!   `tonic::Status` or any wrapper ([`PalisadeError`](error::PalisadeError)) with
//!   the gRPC code and http status it stands for, and [`ConfigError`](error::ConfigError);
//! - [`event`]: events, listeners and the tracing field conventions.
//!
//! Time is always tokio's (`tokio::time::Instant`), so that tests run with
//! paused time.
//!
//! # Example
//!
//! A caller gives one gRPC call a 2 s deadline and no retries; every Palisade
//! layer below reads it. A layer classifies the response with [`Grpc`](protocol::Grpc):
//!
//! ```
//! use palisade_core::classify::{Classify, ClassifyEos, Outcome, Verdict};
//! use palisade_core::options::{CallOptionsExt, Deadline};
//! use palisade_core::protocol::{Grpc, Inspect};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut request = http::Request::post("http://peer/echo.Echo/Unary").body(()).unwrap();
//! request
//!     .call_options_mut()
//!     .set_deadline(Deadline::after(Duration::from_secs(2)))
//!     .set_retries(0);
//!
//! let grpc = Grpc::default();
//! assert_eq!(grpc.route(&request), Some("/echo.Echo/Unary"));
//! assert_eq!(grpc.call_options(&request).unwrap().retries(), Some(0));
//!
//! // A 200 whose trailers say UNAVAILABLE is a failure, known at end of stream.
//! let response = http::Response::new(());
//! let Verdict::AtEndOfStream(eos) = Classify::<_, ()>::classify_response(&grpc, &response) else {
//!     unreachable!()
//! };
//! let mut trailers = http::HeaderMap::new();
//! trailers.insert("grpc-status", "14".parse().unwrap());
//! assert_eq!(eos.classify_eos(Some(&trailers)), Outcome::Failure);
//! # }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backoff;
pub mod classify;
pub mod context;
pub mod error;
pub mod event;
pub mod grpc_timeout;
pub mod keyed;
mod macros;
pub mod options;
pub mod peer;
pub mod protocol;
pub mod retry;
pub mod route;
pub mod time;

pub use error::BoxError;
