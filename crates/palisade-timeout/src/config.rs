//! The builder of a [`TimeoutLayer`](crate::TimeoutLayer).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use palisade_core::error::{ConfigError, TimeoutKind};
use palisade_core::event::{Listener, Listeners};
use palisade_core::protocol::{IsGrpc, Unchosen};
use palisade_core::route::{RouteTable, RouteTableBuilder};

use crate::body::{BodyLimited, BodyMode, NoBodyLimits};
use crate::layer::TimeoutLayer;

const LAYER: &str = "timeout";

/// The default timeout: 30 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration shared by every service one [`TimeoutLayer`] builds.
#[derive(Debug)]
pub(crate) struct Config {
    /// The layer's timeout; `None` disables it.
    pub(crate) timeout: Option<Duration>,
    pub(crate) kind: TimeoutKind,
    /// Per-route overrides (`None`: no timeout on that route).
    pub(crate) routes: RouteTable<Option<Duration>>,
    /// Write `grpc-timeout` on outgoing requests.
    pub(crate) grpc_timeout: bool,
    /// Write this header, in milliseconds, on outgoing requests.
    pub(crate) header: Option<HeaderName>,
    pub(crate) listeners: Listeners,
}

impl Config {
    /// The limit for a call to `route` (looked up only when routes are
    /// configured) before the per-call option.
    #[inline]
    pub(crate) fn limit_for<'r>(&self, route: impl FnOnce() -> Option<&'r str>) -> Option<Duration> {
        if !self.routes.is_empty()
            && let Some(route) = route()
            && let Some(limit) = self.routes.get(route)
        {
            return *limit;
        }
        self.timeout
    }

    /// Whether anything is written on outgoing requests.
    #[inline]
    pub(crate) fn propagates(&self) -> bool {
        self.grpc_timeout || self.header.is_some()
    }
}

/// Builds a [`TimeoutLayer`] speaking protocol `P`; made by
/// [`TimeoutLayer::builder`].
///
/// Defaults: a 30 s [`Attempt`](TimeoutKind::Attempt) timeout, no route
/// overrides, no body limits, `grpc-timeout` written when the protocol is
/// gRPC, no listeners.
///
/// `L` records whether a body limit was set: [`NoBodyLimits`] until
/// [`body_timeout`](Self::body_timeout) or
/// [`body_idle_timeout`](Self::body_idle_timeout) move the builder to
/// [`BodyLimited`]. Only a `BodyLimited` layer wraps response bodies; one
/// without limits returns the inner response untouched. Routes override
/// the timeout only, never the body limits, so one layer has one body
/// state for every route.
///
/// The builder starts on [`Unchosen`] and has no [`build`](Self::build)
/// until a protocol is chosen with [`grpc`](Self::grpc),
/// [`http`](Self::http), [`plain`](Self::plain) or
/// [`protocol`](Self::protocol). A timeout left on [`Plain`](palisade_core::protocol::Plain) over a tonic
/// `Channel` would silently write no `grpc-timeout`, read no per-call
/// timeout or route and apply no body limit, so forgetting the protocol is a
/// compile error instead:
///
/// ```compile_fail
/// use palisade_timeout::TimeoutLayer;
/// use std::time::Duration;
/// let layer = TimeoutLayer::builder().timeout(Some(Duration::from_secs(5))).build();
/// ```
///
/// ```
/// use palisade_timeout::{TimeoutLayer, TimeoutKind};
/// use std::time::Duration;
///
/// let layer = TimeoutLayer::builder()
///     .grpc()
///     .timeout(Some(Duration::from_secs(5)))
///     .kind(TimeoutKind::Total)
///     .route("/echo.Echo/Slow", Some(Duration::from_secs(20)))
///     .body_idle_timeout(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// # let _ = layer;
///
/// let err = TimeoutLayer::builder().http().body_timeout(Duration::ZERO).build().unwrap_err();
/// assert_eq!(err.field(), "body_timeout");
/// ```
pub struct TimeoutBuilder<P = Unchosen, L = NoBodyLimits> {
    protocol: P,
    timeout: Option<Duration>,
    kind: TimeoutKind,
    routes: RouteTableBuilder<Option<Duration>>,
    grpc_timeout: bool,
    header: Option<HeaderName>,
    body: L,
    listeners: Listeners,
}

impl Default for TimeoutBuilder<Unchosen> {
    /// The defaults, with no protocol chosen yet.
    fn default() -> Self {
        Self {
            protocol: Unchosen,
            timeout: Some(DEFAULT_TIMEOUT),
            kind: TimeoutKind::Attempt,
            routes: RouteTableBuilder::new(),
            grpc_timeout: false,
            header: None,
            body: NoBodyLimits,
            listeners: Listeners::new(),
        }
    }
}

impl<P: fmt::Debug, L: fmt::Debug> fmt::Debug for TimeoutBuilder<P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBuilder")
            .field("protocol", &self.protocol)
            .field("timeout", &self.timeout)
            .field("kind", &self.kind)
            .field("routes", &self.routes)
            .field("grpc_timeout", &self.grpc_timeout)
            .field("header", &self.header)
            .field("body", &self.body)
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl<P, L> TimeoutBuilder<P, L> {
    palisade_core::protocol_methods! {
        builder: TimeoutBuilder<_, L>,
        bound: IsGrpc,
        rebuild: |self, protocol: Q| {
            let mut builder = self.retype(|_| protocol, |body| body);
            builder.grpc_timeout = Q::IS_GRPC;
            builder
        },
        protocol: "It decides where per-call options and the route are read. `grpc-timeout` is written \
            when the protocol is gRPC ([`IsGrpc::IS_GRPC`]); change it with \
            [`propagate_grpc_timeout`](Self::propagate_grpc_timeout) afterwards.",
        grpc: "per-call options, routes by gRPC method, `grpc-timeout` on every outgoing request.",
        http: "per-call options, routes by path (a hyper client).",
        plain: "no per-call options, no routes (any non-http service).",
    }

    /// The same settings with another protocol or body state.
    fn retype<Q, M>(self, protocol: impl FnOnce(P) -> Q, body: impl FnOnce(L) -> M) -> TimeoutBuilder<Q, M> {
        TimeoutBuilder {
            protocol: protocol(self.protocol),
            timeout: self.timeout,
            kind: self.kind,
            routes: self.routes,
            grpc_timeout: self.grpc_timeout,
            header: self.header,
            body: body(self.body),
            listeners: self.listeners,
        }
    }

    /// The layer's timeout. `None` (or zero) disables it: only a per-call
    /// timeout (on a per-attempt layer) or a deadline then bounds a call.
    /// Default 30 s.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Which limit this layer is, as [`TimedOut::kind`](crate::TimedOut::kind)
    /// reports it: [`Attempt`](TimeoutKind::Attempt) (the default: inside
    /// retry, per peer; retryable; a call's per-call timeout overrides its
    /// limit) or [`Total`](TimeoutKind::Total) (outside retry; not
    /// retryable; per-call timeouts, which bound each attempt, do not apply
    /// to it: the call's deadline bounds it). See the precedence table in the
    /// [crate docs](crate#the-limit-of-a-call).
    pub fn kind(mut self, kind: TimeoutKind) -> Self {
        self.kind = kind;
        self
    }

    /// Overrides the layer's timeout for calls to `route` (an http path or a
    /// gRPC method `/package.Service/Method`, exactly as the protocol's
    /// `Inspect::route` reports it). `None` disables the timeout on that
    /// route. A per-call timeout still overrides it on a per-attempt layer
    /// (a [`Total`](TimeoutKind::Total) layer ignores per-call timeouts).
    /// Configuring one route twice is an error at [`build`](Self::build)
    /// (see [`palisade_core::route`]).
    pub fn route(mut self, route: impl Into<String>, timeout: Option<Duration>) -> Self {
        self.routes.push(route, timeout.filter(|t| !t.is_zero()));
        self
    }

    /// Whether outgoing requests carry `grpc-timeout` with the time left.
    /// On by default for gRPC protocols, off otherwise.
    pub fn propagate_grpc_timeout(mut self, on: bool) -> Self {
        self.grpc_timeout = on;
        self
    }

    /// Also writes the time left, in whole milliseconds rounded down, in
    /// this header on outgoing requests (for hyper services; read it on the
    /// server with [`DeadlineServerLayer::header`](crate::DeadlineServerLayer::header)).
    pub fn propagate_header(mut self, header: HeaderName) -> Self {
        self.header = Some(header);
        self
    }

    /// Registers a listener for this layer's events (a timeout fired, a call
    /// rejected because its deadline had passed). With listeners registered,
    /// each call's response future holds a reference to them (one reference
    /// count increment per call); without, it holds nothing.
    pub fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }
}

impl<P, L: BodyMode> TimeoutBuilder<P, L> {
    /// Ends a response body that takes longer than `limit` in total (counted
    /// from when the response headers arrived) with
    /// [`TimedOut`](crate::TimedOut) of kind [`Body`](TimeoutKind::Body).
    /// Only http responses (protocols [`Http`](palisade_core::protocol::Http), [`Grpc`](palisade_core::protocol::Grpc)) have bodies. Moves
    /// the builder to [`BodyLimited`]: the layer wraps response bodies.
    pub fn body_timeout(self, limit: Duration) -> TimeoutBuilder<P, BodyLimited> {
        let mut limits = self.body.limits();
        limits.total = Some(limit);
        self.retype(|p| p, |_| BodyLimited::new(limits))
    }

    /// Ends a response body that goes longer than `limit` without a frame
    /// with [`TimedOut`](crate::TimedOut) of kind [`BodyIdle`](TimeoutKind::BodyIdle).
    /// Moves the builder to [`BodyLimited`], as [`body_timeout`](Self::body_timeout).
    pub fn body_idle_timeout(self, limit: Duration) -> TimeoutBuilder<P, BodyLimited> {
        let mut limits = self.body.limits();
        limits.idle = Some(limit);
        self.retype(|p| p, |_| BodyLimited::new(limits))
    }
}

impl<P: IsGrpc, L: BodyMode> TimeoutBuilder<P, L> {
    /// Validates the configuration and builds the layer. Exists once a
    /// protocol is chosen (every protocol implements [`IsGrpc`];
    /// [`Unchosen`] does not).
    ///
    /// Fails with a [`ConfigError`] naming the field for a body `kind`, a zero body limit
    /// (`body_timeout`, `body_idle_timeout`), an empty or duplicate `route`,
    /// or a `propagate_header` of `grpc-timeout` (use
    /// [`propagate_grpc_timeout`](Self::propagate_grpc_timeout)).
    pub fn build(self) -> Result<TimeoutLayer<P, L>, ConfigError> {
        if matches!(self.kind, TimeoutKind::Body | TimeoutKind::BodyIdle) {
            return Err(ConfigError::new(
                LAYER,
                "kind",
                "must be `Attempt`, `Total` or `Headers`; body limits are set with `body_timeout` and `body_idle_timeout`",
            ));
        }
        let limits = self.body.limits();
        if limits.total.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(LAYER, "body_timeout", "must be greater than zero"));
        }
        if limits.idle.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                LAYER,
                "body_idle_timeout",
                "must be greater than zero",
            ));
        }
        if self
            .header
            .as_ref()
            .is_some_and(|h| h.as_str() == crate::grpc_timeout::GRPC_TIMEOUT)
        {
            return Err(ConfigError::new(
                LAYER,
                "propagate_header",
                "must not be `grpc-timeout`, whose format differs; use `propagate_grpc_timeout`",
            ));
        }
        let routes = self.routes.build(LAYER, "route")?;
        let config = Config {
            timeout: self.timeout,
            kind: self.kind,
            routes,
            grpc_timeout: self.grpc_timeout,
            header: self.header,
            listeners: self.listeners,
        };
        Ok(TimeoutLayer::from_parts(Arc::new(config), self.protocol, self.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::protocol::Plain;

    #[test]
    fn build_names_the_rejected_field() {
        fn field<L: BodyMode>(b: TimeoutBuilder<Plain, L>) -> &'static str {
            b.build().map(|_| ()).unwrap_err().field()
        }
        assert_eq!(
            field(TimeoutBuilder::default().plain().body_timeout(Duration::ZERO)),
            "body_timeout"
        );
        assert_eq!(
            field(TimeoutBuilder::default().plain().body_idle_timeout(Duration::ZERO)),
            "body_idle_timeout"
        );
        assert_eq!(field(TimeoutBuilder::default().plain().route("", None)), "route");
        assert_eq!(
            field(
                TimeoutBuilder::default()
                    .plain()
                    .route("/a", None)
                    .route("/a", Some(Duration::from_secs(1)))
            ),
            "route"
        );
        let twice = TimeoutBuilder::default()
            .plain()
            .route("/a", None)
            .route("/b", None)
            .route("/a", None)
            .build()
            .map(|_| ())
            .unwrap_err();
        assert!(twice.to_string().contains("`/a` is configured twice"), "{twice}");
        assert_eq!(
            field(
                TimeoutBuilder::default()
                    .plain()
                    .propagate_header(HeaderName::from_static("grpc-timeout"))
            ),
            "propagate_header"
        );
        assert_eq!(
            field(TimeoutBuilder::default().plain().kind(TimeoutKind::BodyIdle)),
            "kind"
        );
        assert!(
            TimeoutBuilder::default()
                .plain()
                .kind(TimeoutKind::Headers)
                .build()
                .is_ok()
        );
        assert!(TimeoutBuilder::default().plain().build().is_ok());
    }

    #[test]
    fn zero_disables_and_routes_override() {
        let layer = TimeoutBuilder::default()
            .plain()
            .timeout(Some(Duration::ZERO))
            .route("/slow", Some(Duration::from_secs(9)))
            .route("/free", Some(Duration::ZERO))
            .build()
            .unwrap();
        let config = layer.config();
        assert_eq!(config.limit_for(|| None), None);
        assert_eq!(config.limit_for(|| Some("/slow")), Some(Duration::from_secs(9)));
        assert_eq!(config.limit_for(|| Some("/free")), None);
        assert_eq!(config.limit_for(|| Some("/other")), None);
        let default = TimeoutBuilder::default().plain().build().unwrap();
        assert_eq!(default.config().limit_for(|| Some("/x")), Some(DEFAULT_TIMEOUT));
        assert_eq!(default.config().kind, TimeoutKind::Attempt);
        assert!(!default.config().propagates());
        assert!(TimeoutBuilder::default().grpc().build().unwrap().config().grpc_timeout);
        assert!(!TimeoutBuilder::default().http().build().unwrap().config().grpc_timeout);
    }
}
