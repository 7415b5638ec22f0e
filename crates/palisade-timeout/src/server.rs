//! [`DeadlineServerLayer`]: the server side of deadline propagation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use palisade_core::options::{CallOptionsExt, Deadline};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use palisade_core::context::{self, WithDeadline, current_deadline};
use palisade_core::grpc_timeout;

/// Reads the deadline of incoming requests on a tonic or hyper server and
/// makes it the default deadline of every outgoing call made while handling
/// the request.
///
/// For each request it reads `grpc-timeout` (and, if configured, a plain
/// millisecond header), then
///
/// - puts the [`Deadline`] in the request's extensions, both as a
///   [`Deadline`] and in its [`CallOptions`](palisade_core::options::CallOptions)
///   (a tonic handler reads it with `request.extensions().get::<Deadline>()`);
/// - runs the inner service's call, its response future and the polls of its
///   response body with the deadline current (see [`current_deadline`]): a
///   [`TimeoutLayer`](crate::TimeoutLayer) on a client used from the handler
///   bounds its calls by the deadline and forwards the time left.
///
/// An invalid or oversized value (more than eight digits, unknown unit,
/// garbage) is ignored with a `debug` tracing event; the request is served
/// without a deadline. This layer never rejects a request itself.
///
/// The deadline follows the handler's future, not the tasks it spawns; see
/// [`with_deadline`](crate::with_deadline).
///
/// ```
/// use palisade_timeout::DeadlineServerLayer;
/// # fn build<S>(routes: S) -> impl Sized where S: Clone {
/// // tonic: Server::builder().layer(DeadlineServerLayer::new()).add_service(...)
/// let layer = DeadlineServerLayer::new().header(http::HeaderName::from_static("x-timeout-ms"));
/// tower::ServiceBuilder::new().layer(layer).service(routes)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeadlineServerLayer {
    grpc_timeout: bool,
    header: Option<HeaderName>,
}

impl Default for DeadlineServerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadlineServerLayer {
    /// Reads `grpc-timeout`.
    pub fn new() -> Self {
        Self {
            grpc_timeout: true,
            header: None,
        }
    }

    /// Also reads `header`, a timeout in whole milliseconds (one to eight
    /// digits), as [`TimeoutBuilder::propagate_header`](crate::TimeoutBuilder::propagate_header)
    /// writes it. When both headers are present the shorter wins.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = Some(header);
        self
    }

    /// Whether `grpc-timeout` is read (default `true`).
    pub fn grpc_timeout(mut self, on: bool) -> Self {
        self.grpc_timeout = on;
        self
    }

    /// The deadline that `headers` ask for, if any valid one.
    fn read(&self, headers: &HeaderMap) -> Option<Deadline> {
        let mut timeout = None;
        if self.grpc_timeout
            && let Some(value) = headers.get(grpc_timeout::GRPC_TIMEOUT)
        {
            match grpc_timeout::parse_header(value) {
                Some(t) => timeout = Some(t),
                None => ignored(grpc_timeout::GRPC_TIMEOUT, value),
            }
        }
        if let Some(name) = &self.header
            && let Some(value) = headers.get(name)
        {
            match grpc_timeout::parse_millis(value.as_bytes()) {
                Some(t) => timeout = Some(timeout.map_or(t, |other: std::time::Duration| other.min(t))),
                None => ignored(name.as_str(), value),
            }
        }
        timeout.map(Deadline::after)
    }
}

#[cold]
fn ignored(header: &str, value: &http::HeaderValue) {
    tracing::debug!(
        target: "palisade",
        layer = "timeout",
        event = "invalid_deadline_header",
        header,
        value = ?value,
        "ignoring an invalid or oversized deadline header"
    );
}

impl<S> Layer<S> for DeadlineServerLayer {
    type Service = DeadlineServer<S>;

    fn layer(&self, inner: S) -> DeadlineServer<S> {
        DeadlineServer {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`DeadlineServerLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineServer<S> {
    inner: S,
    layer: DeadlineServerLayer,
}

impl<S, B, ResBody> Service<http::Request<B>> for DeadlineServer<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<DeadlineBody<ResBody>>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let incoming = self.layer.read(request.headers());
        let deadline = match (incoming, current_deadline()) {
            (Some(incoming), Some(current)) => Some(incoming.min(current)),
            (incoming, current) => incoming.or(current),
        };
        let inner = match deadline {
            Some(deadline) => {
                let extensions = request.extensions_mut();
                extensions.call_options_mut().set_deadline(deadline);
                extensions.insert(deadline);
                context::in_scope(Some(deadline), || self.inner.call(request))
            }
            None => self.inner.call(request),
        };
        ServerFuture {
            inner: context::scope(deadline, inner),
            deadline,
        }
    }
}

pin_project! {
    /// The response future of [`DeadlineServer`]: the inner future, polled
    /// with the request's deadline current (the earlier of it and a deadline
    /// already current where this future is polled; with neither, whatever is
    /// current stays so).
    #[must_use = "futures do nothing unless polled"]
    pub struct ServerFuture<F> {
        #[pin]
        inner: WithDeadline<F>,
        deadline: Option<Deadline>,
    }
}

impl<F, ResBody, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<DeadlineBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let deadline = *this.deadline;
        this.inner
            .poll(cx)
            .map(|result| result.map(|response| response.map(|inner| DeadlineBody { inner, deadline })))
    }
}

impl<F> std::fmt::Debug for ServerFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body polled with the request's deadline current, so that a
    /// streaming handler's calls (made while producing the stream) inherit it.
    /// Frames, errors and size hints pass through unchanged.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        deadline: Option<Deadline>,
    }
}

impl<B> DeadlineBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The deadline of the request this body answers.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

impl<B: Body> Body for DeadlineBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let inner = this.inner;
        context::in_scope(*this.deadline, || inner.poll_frame(cx))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for DeadlineBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineBody")
            .field("inner", &self.inner)
            .field("deadline", &self.deadline)
            .finish()
    }
}
