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

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod body;
mod end;
mod limits;
mod stream;
pub mod track;

pub use body::CompletionBody;
pub use end::{BodyEnd, Guard, OnEnd};
pub use limits::BodyLimits;
pub use stream::CompletionStream;
pub use track::{Settle, TrackResponse, TrackedBody, track};
