//! The service.

use std::fmt;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use palisade_core::protocol::{Inspect, Plain};
use tower_service::Service;

use crate::extract::{Extract, KeepNothing};
use crate::future::ResponseFuture;
use crate::layer::FallbackLayer;
use crate::mark::{ByTrait, Mark};
use crate::per_call::CallFallback;
use crate::policy::{NoResponseRule, ResponseRule};
use crate::source::Source;

/// A service whose failures are answered by a fallback. Made by [`FallbackLayer`].
///
/// `poll_ready` is the inner service's: an error there is terminal for tower
/// and is returned as it is (boxed), never answered by the fallback; the
/// fallback answers failures of the calls.
pub struct Fallback<S, Src, P = Plain, R = NoResponseRule, X = KeepNothing, M = ByTrait> {
    inner: S,
    layer: FallbackLayer<Src, P, R, X, M>,
}

impl<S, Src, P, R, X, M> Fallback<S, Src, P, R, X, M> {
    /// `inner` with the fallback configured by `layer`.
    pub fn new(inner: S, layer: FallbackLayer<Src, P, R, X, M>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the wrapper.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, Src, P, R, X, M> Clone for Fallback<S, Src, P, R, X, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, Src, P, R, X, M> fmt::Debug for Fallback<S, Src, P, R, X, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Src, P, R, X, M> Service<Req> for Fallback<S, Src, P, R, X, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: 'static,
    X: Extract<Req>,
    Src: Source<X::Kept, S::Response>,
    R: ResponseRule<S::Response, P>,
    P: Inspect<Req>,
    M: Mark<S::Response>,
{
    type Response = M::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Src::Future, X::Kept, S::Response, FallbackLayer<Src, P, R, X, M>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &*self.layer.shared;
        let kept = shared.extract.extract(&request);
        let route = if shared.routes.is_empty() {
            None
        } else {
            shared.protocol.route(&request).and_then(|r| shared.routes.find(r))
        };
        let per_call = shared
            .protocol
            .extensions(&request)
            .and_then(|extensions| extensions.get::<CallFallback<S::Response>>())
            .cloned();
        let future = self.inner.call(request);
        ResponseFuture::new(future, kept, per_call, route, self.layer.clone())
    }
}
