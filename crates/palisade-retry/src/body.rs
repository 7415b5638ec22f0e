//! [`RetryBody`]: the response body of the http and gRPC retry paths.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response returned by [`Retry`](crate::Retry) on the
    /// [`Http`](palisade_core::protocol::Http) and
    /// [`Grpc`](palisade_core::protocol::Grpc) paths: the attempt's own body,
    /// passed through untouched, or no body at all.
    ///
    /// It is empty only in one case. When the layer decides to retry a
    /// *response* (a 503, a trailers-only `UNAVAILABLE`), it drops that
    /// response's body before the backoff sleep, so that everything the layers
    /// below tied to the body (a bulkhead permit, a balancer's in-flight
    /// count, a breaker's verdict) is settled at once instead of being held
    /// through the backoff; only the head is kept. Should the next attempt
    /// then not be sent (the deadline passes while waiting for the service,
    /// the request body can no longer be replayed), the call returns that
    /// kept head with an empty body.
    ///
    /// Frames, trailers, size hints and end of stream pass straight through;
    /// the data and error types are the inner body's. A tonic generated
    /// client accepts any body whose `Data` is `Bytes` and whose error
    /// converts into a boxed error, so a tonic client over the retry layer
    /// sees no difference.
    pub struct RetryBody<B> {
        #[pin]
        inner: Option<B>,
    }
}

impl<B> RetryBody<B> {
    /// Wraps the body of an attempt's response.
    #[inline]
    pub fn new(body: B) -> Self {
        Self { inner: Some(body) }
    }

    /// No body: what a retried response's kept head is returned with.
    pub fn empty() -> Self {
        Self { inner: None }
    }

    /// Whether this is the empty body of a kept head (the attempt's own body
    /// was dropped when its retry was decided).
    pub fn is_empty_head(&self) -> bool {
        self.inner.is_none()
    }

    /// The attempt's body, unless this is the empty body of a kept head.
    pub fn into_inner(self) -> Option<B> {
        self.inner
    }
}

impl<B> Default for RetryBody<B> {
    /// The empty body.
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Body> Body for RetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project().inner.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(body) => f.debug_tuple("RetryBody").field(body).finish(),
            None => f.write_str("RetryBody(empty)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn passes_frames_trailers_and_hints_through() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = RetryBody::new(StreamBody::new(futures::stream::iter(frames)));
        assert!(!body.is_empty_head());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "ab");

        let full = RetryBody::new(Full::new(Bytes::from_static(b"xyz")));
        assert_eq!(full.size_hint().exact(), Some(3));
        assert!(!full.is_end_stream());
    }

    #[tokio::test]
    async fn the_empty_body_ends_at_once() {
        let body = RetryBody::<Full<Bytes>>::empty();
        assert!(body.is_empty_head() && body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
