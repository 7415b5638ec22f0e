//! [`TimeoutLayer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::protocol::{Plain, Unchosen};
use tower_layer::Layer;

use crate::config::{Config, TimeoutBuilder};
use crate::service::Timeout;

/// Applies a timeout (and the call's deadline) to every request of the
/// service it wraps. See the [crate docs](crate) for the behaviour.
///
/// Every service built by one layer value, and every clone of them, shares one
/// configuration.
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
pub struct TimeoutLayer<P = Plain> {
    config: Arc<Config>,
    protocol: P,
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
                body: palisade_body::BodyLimits::NONE,
                listeners: Default::default(),
            }),
            protocol: Plain,
        }
    }
}

impl<P> TimeoutLayer<P> {
    pub(crate) fn from_parts(config: Arc<Config>, protocol: P) -> Self {
        Self { config, protocol }
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

impl<P: Clone> Clone for TimeoutLayer<P> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            protocol: self.protocol.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for TimeoutLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("config", &self.config)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for TimeoutLayer<P> {
    type Service = Timeout<S, P>;

    fn layer(&self, inner: S) -> Timeout<S, P> {
        Timeout::from_parts(inner, Arc::clone(&self.config), self.protocol.clone())
    }
}
