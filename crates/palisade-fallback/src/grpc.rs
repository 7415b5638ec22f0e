//! Typed gRPC fallbacks (feature `tonic`): answer a failed tonic call with a
//! message of the method's response type, or with a [`Status`], instead of a
//! hand-framed protobuf body.
//!
//! - [`grpc_reply`] makes the response a server would send for one message:
//!   the message in gRPC's length-prefixed framing, then `grpc-status: 0` in
//!   the trailers. A tonic generated client decodes it as the method's reply.
//! - [`grpc_status`] makes a trailers-only response for a [`Status`], which
//!   the client sees as that status.
//! - [`GrpcFallback`] is a [`Source`] from a closure
//!   `Fn(&BoxError) -> Result<M, Status>`: the message or the status the
//!   caller should get for this failure.
//!
//! ```
//! use palisade_fallback::FallbackLayer;
//! use palisade_fallback::grpc::GrpcFallback;
//! use palisade_testkit::echo::EchoReply;
//!
//! let layer = FallbackLayer::builder()
//!     .grpc()
//!     .source(GrpcFallback::new(|_error: &palisade_core::BoxError| {
//!         Ok(EchoReply { message: "cached".into(), server: "fallback".into(), ..Default::default() })
//!     }))
//!     .build()?;
//! # Ok::<(), palisade_core::error::ConfigError>(())
//! ```

use std::fmt;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use palisade_core::BoxError;
use tonic::Status;
use tonic::body::Body;

use crate::source::Source;

/// The response a gRPC server sends for one `message` with status OK.
pub fn grpc_reply<M: prost::Message>(message: &M) -> http::Response<Body> {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0); // not compressed
    // A message longer than u32::MAX cannot be sent in gRPC framing at all.
    let Ok(prefix) = u32::try_from(len) else {
        return grpc_status(Status::internal(format!(
            "fallback message of {len} bytes is too long for gRPC"
        )));
    };
    frame.put_u32(prefix);
    // Encoding into a buffer with the capacity it asked for cannot fail.
    if message.encode(&mut frame).is_err() {
        return grpc_status(Status::internal("fallback message could not be encoded"));
    }
    let mut response = http::Response::new(Body::new(UnaryBody {
        data: Some(frame.freeze()),
        trailers: Some(ok_trailers()),
    }));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The trailers-only response for `status`, as a server that fails the call.
pub fn grpc_status(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// The reply for `answer`: [`grpc_reply`] for a message, [`grpc_status`] for
/// a status.
pub fn grpc_answer<M: prost::Message>(answer: Result<M, Status>) -> http::Response<Body> {
    match answer {
        Ok(message) => grpc_reply(&message),
        Err(status) => grpc_status(status),
    }
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A [`Source`] that answers a failed gRPC call with the message (or the
/// status) its closure gives for the failure.
#[derive(Clone)]
pub struct GrpcFallback<F> {
    answer: F,
}

impl<F> GrpcFallback<F> {
    /// Answers with `answer(error)`: `Ok(message)` is the method's reply,
    /// `Err(status)` the status the caller sees.
    pub fn new<M>(answer: F) -> Self
    where
        F: Fn(&BoxError) -> Result<M, Status>,
        M: prost::Message,
    {
        Self { answer }
    }
}

impl<F> fmt::Debug for GrpcFallback<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcFallback").finish_non_exhaustive()
    }
}

impl<F, M, K> Source<K, http::Response<Body>> for GrpcFallback<F>
where
    F: Fn(&BoxError) -> Result<M, Status>,
    M: prost::Message,
{
    type Future = Ready<Result<http::Response<Body>, BoxError>>;

    fn fall_back(&self, error: &BoxError, _: K) -> Self::Future {
        ready(Ok(grpc_answer((self.answer)(error))))
    }
}

/// One data frame, then the trailers.
struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
