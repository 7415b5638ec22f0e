//! A body adapter that tells every Palisade layer how a streamed response
//! really ended.
//!
//! tower's own middleware sees a response when its head arrives. For a
//! streamed http response that is too early: a concurrency permit released at
//! the head lets streams pile up beyond the limit, and a gRPC call whose
//! status (in the trailers) says `UNAVAILABLE` looks like a success. This
//! crate wraps the body and reports exactly once how it ended — end of stream
//! with its trailers, an error, or dropped before the end — and holds the
//! layer's guards (a permit, a probe slot) until then.
//!
//! - [`CompletionBody`] wraps any `http_body::Body`; [`CompletionStream`]
//!   does the same for a `futures::Stream` of results.
//! - [`OnEnd`] is the hook that hears the [`BodyEnd`]; closures, [`Guard`]
//!   and pairs implement it.
//! - [`BodyLimits`] optionally end a body that takes too long in total or
//!   between frames, with a typed [`TimedOut`](palisade_core::error::TimedOut).
//! - [`track`](track::track) joins a `palisade-core` classifier to a layer's
//!   [`Settle`] guard: the guard learns the call's outcome when
//!   it is known, and a body dropped before its end counts as the
//!   classifier's [`AbandonPolicy`](palisade_core::classify::AbandonPolicy)
//!   says (see the [`track`](mod@track) module).
//! - [`Joined`] is the protocol of a layer above another tracking layer:
//!   its hook joins the body tracked below instead of wrapping it again.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_body::{BodyEnd, CompletionBody};
//! use std::sync::{Arc, Mutex};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let body = CompletionBody::new(Full::new(Bytes::from_static(b"hello")), move |end: BodyEnd<'_>| {
//!     log.lock().unwrap().push(end.as_str());
//! });
//!
//! let bytes = body.collect().await.unwrap().to_bytes();
//! assert_eq!(bytes, "hello");
//! assert_eq!(*seen.lock().unwrap(), ["eos"]); // reported once, at the real end
//! # }
//! ```

//!
//! # One body for a whole stack: [`Joined`]
//!
//! Every tracking layer (breaker, bulkhead, balancer, a timeout with body
//! limits) that speaks [`Http`](palisade_core::protocol::Http) or
//! [`Grpc`](palisade_core::protocol::Grpc) wraps the response body in its own
//! [`CompletionBody`], so a stack of three nests three, each polling the one
//! below and classifying the trailers again. When **the layer sits above
//! another tracking layer over http**, speak `Joined(Grpc::default())` (or
//! `Joined(Http::default())`) in it instead: its hook joins the body that is
//! already there ([`CompletionBody::join`]), and the caller gets one body
//! whose end settles every layer's guard once. The lowest tracking layer
//! keeps the plain protocol (`Joined` over an untracked body does not
//! compile). The reports are those of nesting (see [`Joined`]).
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::{Arc, Mutex};
//!
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_body::{BodyLimits, CompletionBody, Joined, Settle, track};
//! use palisade_core::classify::Outcome;
//! use palisade_core::protocol::Grpc;
//!
//! /// A layer's guard that writes down the outcome it is settled with.
//! struct Record(&'static str, Arc<Mutex<Vec<(&'static str, Outcome)>>>);
//! impl Settle for Record {
//!     fn settle(self, outcome: Outcome) {
//!         self.1.lock().unwrap().push((self.0, outcome));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let log = Arc::new(Mutex::new(Vec::new()));
//! let mut trailers = http::HeaderMap::new();
//! trailers.insert("grpc-status", http::HeaderValue::from_static("14")); // UNAVAILABLE
//! let body = Full::new(Bytes::from_static(b"reply")).with_trailers(async move { Some(Ok(trailers)) });
//!
//! // The lower layer (a breaker) tracks the body; the upper one (a bulkhead) joins it.
//! let lower = track(&Grpc::default(), Ok::<_, Infallible>(http::Response::new(body)), Record("breaker", log.clone()), BodyLimits::NONE);
//! let upper = track(&Joined(Grpc::default()), lower, Record("bulkhead", log.clone()), BodyLimits::NONE);
//! let response: http::Response<CompletionBody<_, _>> = upper.unwrap(); // one adapter, not two
//!
//! response.into_body().collect().await.unwrap();
//! assert_eq!(*log.lock().unwrap(), [("breaker", Outcome::Failure), ("bulkhead", Outcome::Failure)]);
//! # }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod body;
mod end;
mod joined;
mod limits;
mod stream;
pub mod track;

pub use body::CompletionBody;
pub use end::{BodyEnd, Guard, OnEnd};
pub use joined::Joined;
pub use limits::BodyLimits;
pub use stream::CompletionStream;
pub use track::{Settle, TrackResponse, TrackedBody, track};
