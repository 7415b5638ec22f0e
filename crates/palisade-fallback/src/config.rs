//! The builder of [`FallbackLayer`].

use std::fmt;
use std::sync::Arc;

use palisade_core::BoxError;
use palisade_core::error::ConfigError;
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{IsGrpc, Unchosen};
use palisade_core::route::{RouteTable, RouteTableBuilder};

use crate::extract::{KeepFn, KeepHead, KeepNothing};
use crate::layer::{Config, FallbackLayer};
use crate::mark::{ByTrait, Unmarked, Wrap};
use crate::policy::{AddRule, ClassifiedFailure, ErrorPolicy, NoResponseRule, ResponseWhen, RouteFallback};
use crate::source::{FromAsync, FromFn, FromService, NoSource, TryFromFn, Value};

/// Configures a [`FallbackLayer`]; [`build`](Self::build) validates it.
///
/// Defaults: every error triggers the fallback; no response does; nothing is
/// kept of the request; responses marked through
/// [`MarkFallback`](crate::MarkFallback); no listeners. A source must be
/// chosen, and so must a protocol.
///
/// The builder starts on [`Unchosen`] and has no [`build`](Self::build)
/// until a protocol is chosen with [`grpc`](Self::grpc),
/// [`http`](Self::http), [`plain`](Self::plain) or
/// [`protocol`](Self::protocol). A fallback left on [`Plain`](palisade_core::protocol::Plain) over an http
/// service would silently ignore every [`CallFallback`](crate::CallFallback)
/// and [`route`](Self::route) override and treat every response as a
/// success for [`on_failed_response`](Self::on_failed_response); so
/// forgetting the protocol is a compile error instead:
///
/// ```compile_fail
/// use palisade_fallback::FallbackLayer;
/// let layer = FallbackLayer::builder().value(0u32).build();
/// ```
pub struct FallbackBuilder<Src = NoSource, P = Unchosen, R = NoResponseRule, X = KeepNothing, M = ByTrait> {
    source: Option<Src>,
    extract: X,
    errors: ErrorPolicy,
    rule: R,
    protocol: P,
    mark: M,
    listeners: Listeners,
    routes: RouteTableBuilder<RouteFallback>,
    only_routes: bool,
}

impl<Src, P: fmt::Debug, R: fmt::Debug, X: fmt::Debug, M: fmt::Debug> fmt::Debug for FallbackBuilder<Src, P, R, X, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("source_set", &self.source.is_some())
            .field("extract", &self.extract)
            .field("errors", &self.errors)
            .field("rule", &self.rule)
            .field("protocol", &self.protocol)
            .field("mark", &self.mark)
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .field("only_routes", &self.only_routes)
            .finish()
    }
}

impl Default for FallbackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FallbackBuilder {
    /// The defaults, with no protocol chosen yet (see the type's docs).
    pub fn new() -> Self {
        Self {
            source: None,
            extract: KeepNothing,
            errors: ErrorPolicy::any(),
            rule: NoResponseRule,
            protocol: Unchosen,
            mark: ByTrait,
            listeners: Listeners::new(),
            routes: RouteTableBuilder::new(),
            only_routes: false,
        }
    }
}

impl<Src, P, R, X, M> FallbackBuilder<Src, P, R, X, M> {
    fn map<Src2, P2, R2, X2, M2>(
        self,
        f: impl FnOnce(Option<Src>, X, R, P, M) -> (Option<Src2>, X2, R2, P2, M2),
    ) -> FallbackBuilder<Src2, P2, R2, X2, M2> {
        let (source, extract, rule, protocol, mark) = f(self.source, self.extract, self.rule, self.protocol, self.mark);
        FallbackBuilder {
            source,
            extract,
            errors: self.errors,
            rule,
            protocol,
            mark,
            listeners: self.listeners,
            routes: self.routes,
            only_routes: self.only_routes,
        }
    }

    fn with_source<Src2>(self, source: Src2) -> FallbackBuilder<Src2, P, R, X, M> {
        self.map(|_, x, r, p, m| (Some(source), x, r, p, m))
    }

    /// The layer with `source`, for the shortcuts of [`FallbackLayer`] (whose
    /// builder has no route overrides).
    pub(crate) fn layer_with<Src2>(self, source: Src2) -> FallbackLayer<Src2, P, R, X, M> {
        self.layer_with_routes(source, RouteTable::empty())
    }

    fn layer_with_routes<Src2>(
        self,
        source: Src2,
        routes: RouteTable<RouteFallback>,
    ) -> FallbackLayer<Src2, P, R, X, M> {
        FallbackLayer {
            shared: Arc::new(Config {
                source,
                extract: self.extract,
                errors: self.errors,
                rule: self.rule,
                protocol: self.protocol,
                mark: self.mark,
                listeners: self.listeners,
                routes,
                only_routes: self.only_routes,
            }),
        }
    }

    /// Source: a clone of `value`.
    pub fn value<T: Clone>(self, value: T) -> FallbackBuilder<Value<T>, P, R, X, M> {
        self.with_source(Value(value))
    }

    /// Source: `f(&error, kept)`, which cannot fail.
    pub fn from_fn<F, K, Res>(self, f: F) -> FallbackBuilder<FromFn<F, K, Res>, P, R, X, M>
    where
        F: Fn(&BoxError, K) -> Res,
    {
        self.with_source(FromFn::new(f))
    }

    /// Source: `f(&error, kept)`, which may fail (then the call fails with
    /// [`FallbackFailed`](crate::error::FallbackFailed)).
    pub fn try_from_fn<F, K, Res, E>(self, f: F) -> FallbackBuilder<TryFromFn<F, K, Res>, P, R, X, M>
    where
        F: Fn(&BoxError, K) -> Result<Res, E>,
    {
        self.with_source(TryFromFn::new(f))
    }

    /// Source: the future `f(&error, kept)`. `f` reads the error synchronously;
    /// the future it returns must not borrow it.
    pub fn from_async<F, K, Fut, Res, E>(self, f: F) -> FallbackBuilder<FromAsync<F, K, Res>, P, R, X, M>
    where
        F: Fn(&BoxError, K) -> Fut,
        Fut: Future<Output = Result<Res, E>>,
    {
        self.with_source(FromAsync::new(f))
    }

    /// Source: another service (another backend, a cache), called with the
    /// kept value as its request. Choose an extractor that produces that
    /// request type ([`keep`](Self::keep), [`keep_head`](Self::keep_head)).
    pub fn from_service<S>(self, service: S) -> FallbackBuilder<FromService<S>, P, R, X, M> {
        self.with_source(FromService(service))
    }

    /// Source: a type of yours implementing [`Source`](crate::source::Source).
    /// Its name is then the layer's `Src`, so the layer's and the service's
    /// types can be written in a struct field (a closure's type cannot), as
    /// in `FallbackLayer<Stale, Grpc>`.
    pub fn source<Src2>(self, source: Src2) -> FallbackBuilder<Src2, P, R, X, M> {
        self.with_source(source)
    }

    /// Keeps `f(&request)` before each call and hands it to the fallback.
    /// Runs on every call: keep it cheap.
    pub fn keep<F, Req, K>(self, f: F) -> FallbackBuilder<Src, P, R, KeepFn<F>, M>
    where
        F: Fn(&Req) -> K,
    {
        self.map(|s, _, r, p, m| (s, KeepFn(f), r, p, m))
    }

    /// Keeps the head of each `http::Request` ([`RequestHead`](crate::extract::RequestHead)).
    pub fn keep_head(self) -> FallbackBuilder<Src, P, R, KeepHead, M> {
        self.map(|s, _, r, p, m| (s, KeepHead, r, p, m))
    }

    /// Restricts the fallback to errors that are, or are caused by, a `T`
    /// (for example [`CircuitOpen`](crate::error::CircuitOpen)). Several calls
    /// accept any of the types. Other errors are returned untouched.
    pub fn on_error<T: std::error::Error + 'static>(mut self) -> Self {
        self.errors = self.errors.or_type::<T>();
        self
    }

    /// Restricts the fallback to calls refused by a Palisade layer before
    /// reaching a peer: [`CircuitOpen`](crate::error::CircuitOpen),
    /// [`NoAvailablePeers`](crate::error::NoAvailablePeers) and
    /// [`BulkheadFull`](crate::error::BulkheadFull) (added to any other rule).
    pub fn on_refused(self) -> Self {
        self.on_error::<crate::error::CircuitOpen>()
            .on_error::<crate::error::NoAvailablePeers>()
            .on_error::<crate::error::BulkheadFull>()
    }

    /// Restricts the fallback to timeouts: [`TimedOut`](crate::error::TimedOut)
    /// and [`DeadlineExceeded`](crate::error::DeadlineExceeded) (added to any other rule).
    pub fn on_timeout(self) -> Self {
        self.on_error::<crate::error::TimedOut>()
            .on_error::<crate::error::DeadlineExceeded>()
    }

    /// Restricts the fallback to errors for which `f` returns true (or that
    /// match another rule).
    pub fn on_error_where<F>(mut self, f: F) -> Self
    where
        F: Fn(&BoxError) -> bool + Send + Sync + 'static,
    {
        self.errors = self.errors.or_where(f);
        self
    }

    /// Also answers responses for which `f` returns true (the response is dropped).
    pub fn on_response<F, Res>(self, f: F) -> FallbackBuilder<Src, P, R::Output, X, M>
    where
        F: Fn(&Res) -> bool,
        R: AddRule<ResponseWhen<F>>,
    {
        self.map(|s, x, r, p, m| (s, x, r.add(ResponseWhen(f)), p, m))
    }

    /// Also answers responses that the protocol classifies as failures from
    /// their head: HTTP 5xx with [`http`](Self::http); with [`grpc`](Self::grpc)
    /// a non-200 5xx or a trailers-only response whose `grpc-status` is a
    /// failure code. A gRPC response whose status is in its trailers is handed
    /// on (see the crate docs).
    pub fn on_failed_response(self) -> FallbackBuilder<Src, P, R::Output, X, M>
    where
        R: AddRule<ClassifiedFailure>,
    {
        self.map(|s, x, r, p, m| (s, x, r.add(ClassifiedFailure), p, m))
    }

    palisade_core::protocol_methods! {
        builder: FallbackBuilder<Src, _, R, X, M>,
        rebuild: |self, protocol: P2| self.map(|s, x, r, _, m| (s, x, r, protocol, m)),
        protocol: "It finds per-call fallbacks in requests, the route for per-route rules, and \
            classifies responses for [`on_failed_response`](Self::on_failed_response).",
        grpc: "per-call fallbacks on `tonic::Request`s, routes by gRPC method, a failure status in \
            the head (trailers-only) is a failed response.",
        http: "per-call fallbacks on `http::Request`s, routes by path, a 5xx is a failed response.",
        plain: "no per-call fallbacks or routes, every `Ok` a success (any non-http service).",
    }

    /// Answers [`Served<Res>`](crate::Served) instead of `Res`, saying whether
    /// the fallback produced it. For response types without [`MarkFallback`](crate::MarkFallback).
    pub fn served(self) -> FallbackBuilder<Src, P, R, X, Wrap> {
        self.map(|s, x, r, p, _| (s, x, r, p, Wrap))
    }

    /// Leaves responses unmarked; listeners and metrics still see every fallback.
    pub fn unmarked(self) -> FallbackBuilder<Src, P, R, X, Unmarked> {
        self.map(|s, x, r, p, _| (s, x, r, p, Unmarked))
    }

    /// Adds a listener, told of every fallback ([`EventKind::Fallback`](palisade_core::event::EventKind::Fallback)).
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Overrides the rules for one route: the http path or the gRPC method
    /// `/package.Service/Method`, as
    /// [`Inspect::route`](palisade_core::protocol::Inspect::route) gives it
    /// (so it needs the [`Http`](palisade_core::protocol::Http) or [`Grpc`](palisade_core::protocol::Grpc) protocol). Configuring one
    /// route twice (or an empty route) is an error at [`build`](Self::build).
    /// See [`RouteFallback`].
    pub fn route(mut self, route: impl Into<String>, rule: RouteFallback) -> Self {
        self.routes.push(route, rule);
        self
    }

    /// Only the routes named with [`route`](Self::route) fall back: a call
    /// to any other route passes through untouched, its errors and failed
    /// responses included, as if its rule were [`RouteFallback::Off`]. For a
    /// fallback that answers one method (a typed gRPC reply fits one
    /// method's response type). Without any `route` it is a [`ConfigError`]
    /// at [`build`](Self::build) (nothing would ever fall back).
    pub fn only_routes(mut self) -> Self {
        self.only_routes = true;
        self
    }

    /// Replaces the listeners.
    pub fn listeners(mut self, listeners: Listeners) -> Self {
        self.listeners = listeners;
        self
    }
}

impl<Src, P: IsGrpc, R, X, M> FallbackBuilder<Src, P, R, X, M> {
    /// Validates the configuration: the source must be set, and each
    /// [`route`](Self::route) must be non-empty and configured once (the
    /// error names the route). Exists once a protocol is chosen (every
    /// protocol implements [`IsGrpc`]; [`Unchosen`] does not).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for field `source` when no source was chosen, or for
    /// field `route` naming an empty or duplicate route.
    pub fn build(mut self) -> Result<FallbackLayer<Src, P, R, X, M>, ConfigError> {
        let Some(source) = self.source.take() else {
            return Err(ConfigError::new(
                "fallback",
                "source",
                "is not set: choose value, from_fn, try_from_fn, from_async or from_service",
            ));
        };
        if self.only_routes && self.routes.is_empty() {
            return Err(ConfigError::new(
                "fallback",
                "only_routes",
                "names no route: add at least one with `route`, or leave `only_routes` out",
            ));
        }
        let routes = std::mem::take(&mut self.routes).build("fallback", "route")?;
        Ok(self.layer_with_routes(source, routes))
    }
}
