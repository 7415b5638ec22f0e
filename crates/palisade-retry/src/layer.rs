//! [`RetryLayer`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use palisade_core::protocol::{Grpc, Http, Plain, Unchosen};
use tower_layer::Layer;

use crate::budget::{RetryBudget, Throttle};
use crate::config::{Config, RetryLayerBuilder};
use crate::policy::DefaultPredicate;
use crate::replay::KeepReplayBody;
#[cfg(feature = "tonic")]
use crate::replay::TonicBody;
use crate::service::Retry;

/// Wraps services in [`Retry`]. Every service one layer value builds, and
/// every clone of them, shares one retry budget and throttle.
///
/// - [`RetryLayer::new`]: `Req: Clone` requests, cloned per attempt;
/// - [`RetryLayer::http`]: `http::Request<B>` over hyper, bodies replayed;
/// - [`RetryLayer::grpc`]: gRPC, bodies replayed (`RetryLayer::tonic` over a
///   tonic `Channel`, feature `tonic`);
/// - [`RetryLayer::builder`]: every setting.
///
/// `A` says how each attempt is handed to the inner service (see
/// [`AttemptBody`](crate::AttemptBody)): unchanged by default, as a tonic body with
/// `RetryLayer::tonic` or `RetryLayerBuilder::tonic_body`.
pub struct RetryLayer<P = Plain, R = DefaultPredicate, A = KeepReplayBody> {
    shared: Arc<Config<P, R>>,
    attempt_body: PhantomData<fn() -> A>,
}

/// The retry layer over a tonic `Channel` with the default rules, as
/// `RetryLayer::tonic` and `RetryLayer::builder().grpc().tonic_body()`
/// build it (feature `tonic`): a name for the type.
#[cfg(feature = "tonic")]
pub type TonicRetryLayer = RetryLayer<Grpc, DefaultPredicate, TonicBody>;

impl<P, R, A> Clone for RetryLayer<P, R, A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            attempt_body: PhantomData,
        }
    }
}

impl<P: fmt::Debug, R: fmt::Debug, A> fmt::Debug for RetryLayer<P, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer").field("shared", &self.shared).finish()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// The defaults (see [`RetryLayerBuilder`]) for `Req: Clone` requests,
    /// speaking [`Plain`]: a convenience for non-http services. Over http or
    /// gRPC use [`http`](Self::http), [`grpc`](Self::grpc) or
    /// [`builder`](Self::builder).
    pub fn new() -> Self {
        RetryLayerBuilder::new()
            .plain()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// The defaults for `http::Request<B>` over hyper.
    pub fn http() -> RetryLayer<Http> {
        RetryLayerBuilder::new()
            .http()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// The defaults for gRPC; the inner service takes
    /// `http::Request<ReplayBody<B>>`. Over a tonic `Channel`, use
    /// `RetryLayer::tonic` (feature `tonic`).
    pub fn grpc() -> RetryLayer<Grpc> {
        RetryLayerBuilder::new()
            .grpc()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// The defaults for gRPC over a tonic `Channel`, with each attempt handed
    /// to the channel as the `http::Request<tonic::body::Body>` it takes:
    /// `.grpc()` and [`tonic_body`](RetryLayerBuilder::tonic_body) in one
    /// (feature `tonic`).
    #[cfg(feature = "tonic")]
    pub fn tonic() -> TonicRetryLayer {
        RetryLayerBuilder::new()
            .grpc()
            .tonic_body()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// The way to build a retry layer with settings: a protocol chosen with
    /// `.grpc()`, `.http()`, `.plain()` or `.protocol(p)` (without one there
    /// is no `build()`), the knobs, then `build()?`.
    ///
    /// ```
    /// use palisade_retry::RetryLayer;
    /// let layer = RetryLayer::builder().grpc().retries(2).build()?;
    /// # Ok::<(), palisade_core::error::ConfigError>(())
    /// ```
    pub fn builder() -> RetryLayerBuilder<Unchosen> {
        RetryLayerBuilder::new()
    }
}

impl<P, R, A> RetryLayer<P, R, A> {
    pub(crate) fn from_shared(shared: Arc<Config<P, R>>) -> Self {
        Self {
            shared,
            attempt_body: PhantomData,
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Config<P, R> {
        &self.shared
    }

    /// The retry budget shared by the services this layer builds, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.shared.settings.state.budget()
    }

    /// The throttle shared by the services this layer builds, if any.
    pub fn throttle(&self) -> Option<&Throttle> {
        self.shared.settings.state.throttle()
    }
}

impl<S, P, R, A> Layer<S> for RetryLayer<P, R, A> {
    type Service = Retry<S, P, R, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}
