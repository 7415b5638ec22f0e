//! Where the fallback's answer comes from.
//!
//! | source | made by | gets | may fail |
//! |---|---|---|---|
//! | [`Value`] | [`value`](crate::FallbackBuilder::value) | nothing (the value is cloned) | no |
//! | [`FromFn`] | [`from_fn`](crate::FallbackBuilder::from_fn) | the error and the kept value | no |
//! | [`TryFromFn`] | [`try_from_fn`](crate::FallbackBuilder::try_from_fn) | the error and the kept value | yes |
//! | [`FromAsync`] | [`from_async`](crate::FallbackBuilder::from_async) | the error (synchronously) and the kept value | yes |
//! | [`FromService`] | [`from_service`](crate::FallbackBuilder::from_service) | the kept value, as its request | yes |
//! | your type implementing [`Source`] | [`source`](crate::FallbackBuilder::source) | the error and the kept value | yes |
//!
//! A source that fails makes the call fail with
//! [`FallbackFailed`](crate::error::FallbackFailed).
//!
//! The async function is given `&BoxError` synchronously and returns a future
//! that must not borrow it: read what you need from the error (its kind, its
//! message) before the `async move` block. The layer keeps the error, to put
//! it in `FallbackFailed` should the future fail.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::BoxError;
use palisade_core::error::PolledAfterCompletion;
use palisade_core::event::LayerName;
use pin_project_lite::pin_project;
use tower_service::Service;

/// A fallback source: answers a failed call from the error and the value kept
/// of its request (`K`) with a response `Res`.
pub trait Source<K, Res> {
    /// The fallback's future.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Starts the fallback for a call that failed with `error`.
    fn fall_back(&self, error: &BoxError, kept: K) -> Self::Future;
}

/// No source chosen yet: [`build`](crate::FallbackBuilder::build) refuses it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSource;

/// A fixed value, cloned for every fallback.
#[derive(Clone, Debug)]
pub struct Value<T>(pub(crate) T);

impl<K, T: Clone> Source<K, T> for Value<T> {
    type Future = Ready<Result<T, BoxError>>;

    fn fall_back(&self, _: &BoxError, _: K) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

macro_rules! closure_source {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<F, K, Res> {
            f: F,
            _types: PhantomData<fn(K) -> Res>,
        }

        impl<F, K, Res> $name<F, K, Res> {
            pub(crate) fn new(f: F) -> Self {
                Self { f, _types: PhantomData }
            }
        }

        impl<F: Clone, K, Res> Clone for $name<F, K, Res> {
            fn clone(&self) -> Self {
                Self::new(self.f.clone())
            }
        }

        impl<F, K, Res> fmt::Debug for $name<F, K, Res> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    };
}

closure_source!(
    /// A function of the error and the kept value, that cannot fail.
    FromFn
);
closure_source!(
    /// A function of the error and the kept value, that may fail.
    TryFromFn
);
closure_source!(
    /// An async function of the error and the kept value, that may fail.
    FromAsync
);

impl<F, K, Res> Source<K, Res> for FromFn<F, K, Res>
where
    F: Fn(&BoxError, K) -> Res,
{
    type Future = Ready<Result<Res, BoxError>>;

    fn fall_back(&self, error: &BoxError, kept: K) -> Self::Future {
        ready(Ok((self.f)(error, kept)))
    }
}

impl<F, K, Res, E> Source<K, Res> for TryFromFn<F, K, Res>
where
    F: Fn(&BoxError, K) -> Result<Res, E>,
    E: Into<BoxError>,
{
    type Future = Ready<Result<Res, BoxError>>;

    fn fall_back(&self, error: &BoxError, kept: K) -> Self::Future {
        ready((self.f)(error, kept).map_err(Into::into))
    }
}

impl<F, K, Res, Fut, E> Source<K, Res> for FromAsync<F, K, Res>
where
    F: Fn(&BoxError, K) -> Fut,
    Fut: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Future = ErrInto<Fut>;

    fn fall_back(&self, error: &BoxError, kept: K) -> Self::Future {
        ErrInto {
            future: (self.f)(error, kept),
        }
    }
}

pin_project! {
    /// The future of a [`FromAsync`] source: its error, boxed.
    #[derive(Debug)]
    pub struct ErrInto<Fut> {
        #[pin]
        future: Fut,
    }
}

impl<Fut, Res, E> Future for ErrInto<Fut>
where
    Fut: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map_err(Into::into)
    }
}

/// Another tower service (another backend, a cache), sent the kept value as
/// its request. It is cloned for each fallback call (as `tower::util::Oneshot`
/// does), driven to readiness, then called.
#[derive(Clone, Debug)]
pub struct FromService<S>(pub(crate) S);

impl<S, K> Source<K, S::Response> for FromService<S>
where
    S: Service<K> + Clone,
    S::Error: Into<BoxError>,
{
    type Future = ServiceCall<S, K, S::Future>;

    fn fall_back(&self, _: &BoxError, kept: K) -> Self::Future {
        ServiceCall {
            state: CallState::Ready {
                service: self.0.clone(),
                request: Some(kept),
            },
        }
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<S, Req, F> {
        Ready { service: S, request: Option<Req> },
        Called { #[pin] future: F },
    }
}

pin_project! {
    /// The future of a [`FromService`] source: readiness, then the call.
    pub struct ServiceCall<S, Req, F> {
        #[pin]
        state: CallState<S, Req, F>,
    }
}

impl<S, Req, F> fmt::Debug for ServiceCall<S, Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceCall(..)")
    }
}

impl<S, Req> Future for ServiceCall<S, Req, S::Future>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CallStateProj::Ready { service, request } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion::new(LayerName::Fallback).into()));
                    };
                    let future = service.call(request);
                    this.state.set(CallState::Called { future });
                }
                CallStateProj::Called { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}
