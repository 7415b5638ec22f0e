//! [`TimeoutLayer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::protocol::{Plain, Unchosen};
use tower_layer::Layer;

use crate::body::{BodyMode, NoBodyLimits};
use crate::config::{Config, TimeoutBuilder};
use crate::service::Timeout;

/// Applies a timeout (and the call's deadline) to every request of the
/// service it wraps. See the [crate docs](crate) for the behaviour.
///
/// Every service built by one layer value, and every clone of them, shares one
/// configuration.
///
/// `L` is [`NoBodyLimits`] unless the builder set a body limit
/// ([`BodyLimited`](crate::BodyLimited)): without one the layer hands every
/// response back as its inner service returned it, with no body wrapper.
///
/// ```
/// use palisade_timeout::TimeoutLayer;
/// use std::time::Duration;
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(2)))
///     .service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// # let _ = service;
/// ```
pub struct TimeoutLayer<P = Plain, L = NoBodyLimits> {
    config: Arc<Config>,
    protocol: P,
    body: L,
}

impl TimeoutLayer<Plain> {
    /// A per-attempt timeout of `timeout` for any request type (zero
    /// disables it), speaking [`Plain`]: a convenience for non-http services,
    /// as tower's `TimeoutLayer::new`. Over http or gRPC use
    /// [`builder`](Self::builder), which makes the protocol choice explicit.
    pub fn new(timeout: Duration) -> Self {
        Self::builder().plain().timeout(Some(timeout)).build_infallible()
    }

    /// No timeout of its own, speaking [`Plain`]: only deadlines apply.
    pub fn disabled() -> Self {
        Self::builder().plain().timeout(None).build_infallible()
    }

    /// The way to build a timeout layer: a protocol chosen with `.grpc()`,
    /// `.http()`, `.plain()` or `.protocol(p)` (without one there is no
    /// `build()`), the knobs (defaults 30 s, per attempt), then `build()?`.
    ///
    /// ```
    /// use palisade_timeout::TimeoutLayer;
    /// use std::time::Duration;
    /// let layer = TimeoutLayer::builder().grpc().timeout(Some(Duration::from_secs(2))).build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    pub fn builder() -> TimeoutBuilder<Unchosen> {
        TimeoutBuilder::default()
    }
}

impl TimeoutBuilder<Plain> {
    /// Builds a configuration that has no field able to fail validation.
    fn build_infallible(self) -> TimeoutLayer<Plain> {
        // A timeout alone cannot be invalid.
        self.build().unwrap_or_default()
    }
}

impl Default for TimeoutLayer<Plain> {
    /// A 30 s per-attempt timeout.
    fn default() -> Self {
        Self {
            config: Arc::new(Config {
                timeout: Some(crate::config::DEFAULT_TIMEOUT),
                kind: palisade_core::error::TimeoutKind::Attempt,
                routes: Default::default(),
                grpc_timeout: false,
                header: None,
                listeners: Default::default(),
            }),
            protocol: Plain,
            body: NoBodyLimits,
        }
    }
}

impl<P, L: BodyMode> TimeoutLayer<P, L> {
    pub(crate) fn from_parts(config: Arc<Config>, protocol: P, body: L) -> Self {
        Self { config, protocol, body }
    }

    /// The limits on response bodies ([`BodyLimits::NONE`](palisade_body::BodyLimits::NONE)
    /// for a layer without).
    pub fn body_limits(&self) -> palisade_body::BodyLimits {
        self.body.limits()
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The layer's own timeout (`None`: disabled).
    pub fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }
}

impl<P: Clone, L: Copy> Clone for TimeoutLayer<P, L> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            protocol: self.protocol.clone(),
            body: self.body,
        }
    }
}

impl<P: fmt::Debug, L: fmt::Debug> fmt::Debug for TimeoutLayer<P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("config", &self.config)
            .field("protocol", &self.protocol)
            .field("body", &self.body)
            .finish()
    }
}

impl<S, P: Clone, L: Copy> Layer<S> for TimeoutLayer<P, L> {
    type Service = Timeout<S, P, L>;

    fn layer(&self, inner: S) -> Timeout<S, P, L> {
        Timeout::from_parts(inner, Arc::clone(&self.config), self.protocol.clone(), self.body)
    }
}
