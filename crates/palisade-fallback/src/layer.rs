//! The layer.

use std::fmt;
use std::sync::Arc;

use palisade_core::BoxError;
use palisade_core::event::{Event, EventKind, LayerName, Listeners};
use palisade_core::protocol::{Plain, Unchosen};
use palisade_core::route::RouteTable;
use tower_layer::Layer;

use crate::config::FallbackBuilder;
use crate::extract::KeepNothing;
use crate::mark::{ByTrait, FallbackReason};
use crate::policy::{ErrorPolicy, NoResponseRule, RouteFallback};
use crate::service::Fallback;
use crate::source::{FromAsync, FromFn, FromService, TryFromFn, Value};

/// Answers failures of the inner service from a fallback source.
///
/// Type parameters, most often named first: `Src` the
/// [source](crate::source), `P` the [protocol](palisade_core::protocol), `R`
/// the [response rule](crate::policy), `X` the [extractor](crate::extract),
/// `M` the [marking](crate::mark); so a gRPC fallback with the defaults is
/// `FallbackLayer<Src, Grpc>`, and one that also answers failed responses
/// `FallbackLayer<Src, Grpc, ClassifiedFailure>` (see the crate docs, "Naming
/// the type").
/// Build one with [`FallbackLayer::builder`] or a shortcut such as
/// [`FallbackLayer::value`].
///
/// Every service built by one layer value (and every clone of those services)
/// shares the layer's configuration, source and listeners.
pub struct FallbackLayer<Src, P = Plain, R = NoResponseRule, X = KeepNothing, M = ByTrait> {
    pub(crate) shared: Arc<Config<Src, P, R, X, M>>,
}

/// The configuration of one layer value (its source, extractor, rules,
/// protocol, marking, listeners and route overrides), shared by every
/// service it builds and their clones.
pub(crate) struct Config<Src, P, R, X, M> {
    pub(crate) source: Src,
    pub(crate) extract: X,
    pub(crate) errors: ErrorPolicy,
    pub(crate) rule: R,
    pub(crate) protocol: P,
    pub(crate) mark: M,
    pub(crate) listeners: Listeners,
    pub(crate) routes: RouteTable<RouteFallback>,
    /// Calls to routes not in `routes` pass through untouched.
    pub(crate) only_routes: bool,
}

impl<Src, P, R, X, M> Config<Src, P, R, X, M> {
    /// Reports one fallback answer: tracing, listeners, metrics.
    pub(crate) fn record(&self, reason: FallbackReason) {
        self.listeners.emit(&Event::new(
            LayerName::Fallback,
            EventKind::Fallback {
                reason: reason.as_str(),
            },
        ));
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_fallback_total", "reason" => reason.as_str()).increment(1);
    }

    /// Reports a fallback that failed.
    pub(crate) fn record_failure(&self, reason: FallbackReason, error: &BoxError) {
        tracing::debug!(
            target: "palisade",
            layer = LayerName::Fallback.as_str(),
            event = "fallback_failed",
            reason = reason.as_str(),
            error = %error,
            "fallback failed"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_fallback_failed_total", "reason" => reason.as_str()).increment(1);
    }
}

impl<Src, P, R, X, M> Clone for FallbackLayer<Src, P, R, X, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Src: fmt::Debug, P: fmt::Debug, R: fmt::Debug, X: fmt::Debug, M: fmt::Debug> fmt::Debug
    for FallbackLayer<Src, P, R, X, M>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("FallbackLayer")
            .field("source", &s.source)
            .field("extract", &s.extract)
            .field("errors", &s.errors)
            .field("rule", &s.rule)
            .field("protocol", &s.protocol)
            .field("mark", &s.mark)
            .field("listeners", &s.listeners)
            .field("routes", &s.routes)
            .finish()
    }
}

/// The shortcuts below speak [`Plain`]: a convenience for non-http services.
/// Over http or gRPC use [`FallbackLayer::builder`], which makes the protocol
/// choice explicit.
impl FallbackLayer<crate::source::NoSource> {
    /// The way to build a fallback layer: a protocol chosen with `.grpc()`,
    /// `.http()`, `.plain()` or `.protocol(p)` (without one there is no
    /// `build()`), a source, the rules, then `build()?`. Defaults: every
    /// error triggers the fallback, nothing is kept of the request, responses
    /// pass, responses marked through [`MarkFallback`](crate::MarkFallback).
    ///
    /// ```
    /// use palisade_fallback::FallbackLayer;
    /// let layer = FallbackLayer::builder().plain().value(0u32).build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    pub fn builder() -> FallbackBuilder<crate::source::NoSource, Unchosen> {
        FallbackBuilder::new()
    }

    /// Answers every error with a clone of `value`.
    pub fn value<T: Clone>(value: T) -> FallbackLayer<Value<T>> {
        FallbackBuilder::new().plain().layer_with(Value(value))
    }

    /// Answers every error with `f(&error, ())`.
    pub fn from_fn<F, Res>(f: F) -> FallbackLayer<FromFn<F, (), Res>>
    where
        F: Fn(&BoxError, ()) -> Res,
    {
        FallbackBuilder::new().plain().layer_with(FromFn::new(f))
    }

    /// Answers every error with `f(&error, ())`, which may fail.
    pub fn try_from_fn<F, Res, E>(f: F) -> FallbackLayer<TryFromFn<F, (), Res>>
    where
        F: Fn(&BoxError, ()) -> Result<Res, E>,
    {
        FallbackBuilder::new().plain().layer_with(TryFromFn::new(f))
    }

    /// Answers every error with the future `f(&error, ())`.
    pub fn from_async<F, Fut, Res, E>(f: F) -> FallbackLayer<FromAsync<F, (), Res>>
    where
        F: Fn(&BoxError, ()) -> Fut,
        Fut: Future<Output = Result<Res, E>>,
    {
        FallbackBuilder::new().plain().layer_with(FromAsync::new(f))
    }

    /// Answers every error by calling `service` with `()`; use the builder
    /// with [`keep`](FallbackBuilder::keep) to send it a real request.
    pub fn from_service<S>(service: S) -> FallbackLayer<FromService<S>> {
        FallbackBuilder::new().plain().layer_with(FromService(service))
    }
}

impl<S, Src, P, R, X, M> Layer<S> for FallbackLayer<Src, P, R, X, M> {
    type Service = Fallback<S, Src, P, R, X, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.clone())
    }
}
