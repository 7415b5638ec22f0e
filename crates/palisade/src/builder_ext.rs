//! [`ServiceBuilderExt`]: Palisade's layers as methods of `tower::ServiceBuilder`.

use tower::ServiceBuilder;
#[cfg(any(
    feature = "circuit-breaker",
    feature = "retry",
    feature = "timeout",
    feature = "bulkhead",
    feature = "fallback",
    feature = "discovery"
))]
use tower::layer::util::Stack;

#[cfg(feature = "bulkhead")]
use palisade_bulkhead::BulkheadLayer;
#[cfg(feature = "circuit-breaker")]
use palisade_circuit_breaker::CircuitBreakerLayer;
#[cfg(feature = "discovery")]
use palisade_discovery::PeerDiscoveryLayer;
#[cfg(feature = "fallback")]
use palisade_fallback::FallbackLayer;
#[cfg(feature = "retry")]
use palisade_retry::RetryLayer;
#[cfg(feature = "timeout")]
use palisade_timeout::TimeoutLayer;

/// Adds Palisade's layers to a [`tower::ServiceBuilder`], the way tower-http's
/// `ServiceBuilderExt` adds its own: `.circuit_breaker(layer)` is
/// `.layer(layer)` with a name that says what the line does.
///
/// Each method takes the built layer, so the protocol choice and the
/// validation stay in the layer's builder (`XLayer::builder().grpc()...build()?`).
/// The timeout and retry methods are `palisade_timeout` and `palisade_retry`:
/// `ServiceBuilder` has inherent `timeout` and `retry` methods when tower's
/// `timeout` and `retry` features are on (as with `tower/full`), and an
/// inherent method always wins over a trait's, so those names would stop
/// compiling as soon as any crate in the build enabled the features.
///
/// The trait is sealed: only `ServiceBuilder` implements it.
///
/// ```
/// use std::time::Duration;
/// use palisade::ServiceBuilderExt;
/// use palisade::bulkhead::BulkheadLayer;
/// use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
/// use palisade::retry::RetryLayer;
/// use palisade::timeout::{TimeoutKind, TimeoutLayer};
/// use palisade::BoxError;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let breaker = CircuitBreakerLayer::builder().plain().failure_threshold(1).build()?;
/// let state = breaker.handle();
/// let mut client = ServiceBuilder::new()
///     .palisade_timeout(TimeoutLayer::builder().plain().kind(TimeoutKind::Total).timeout(Some(Duration::from_secs(1))).build()?)
///     .palisade_retry(RetryLayer::builder().plain().retries(1).build()?)
///     .bulkhead(BulkheadLayer::builder().plain().max_concurrent(8).build()?)
///     .circuit_breaker(breaker)
///     .service_fn(|fail: bool| async move {
///         if fail { Err::<&str, BoxError>("down".into()) } else { Ok("pong") }
///     });
///
/// assert_eq!(client.ready().await?.call(false).await?, "pong");
/// assert!(client.ready().await?.call(true).await.is_err());
/// assert_eq!(state.state(), CircuitState::Open);
/// # Ok(()) }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a circuit breaker ([`palisade_circuit_breaker`]).
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<P>(self, layer: CircuitBreakerLayer<P>) -> ServiceBuilder<Stack<CircuitBreakerLayer<P>, L>>;

    /// Adds a retry layer ([`palisade_retry`]); named apart from tower's
    /// inherent `ServiceBuilder::retry` (see the trait's docs).
    #[cfg(feature = "retry")]
    fn palisade_retry<P, R, A>(self, layer: RetryLayer<P, R, A>) -> ServiceBuilder<Stack<RetryLayer<P, R, A>, L>>;

    /// Adds a timeout, total or per attempt ([`palisade_timeout`]); named apart
    /// from tower's inherent `ServiceBuilder::timeout` (see the trait's docs).
    #[cfg(feature = "timeout")]
    fn palisade_timeout<P>(self, layer: TimeoutLayer<P>) -> ServiceBuilder<Stack<TimeoutLayer<P>, L>>;

    /// Adds a bulkhead ([`palisade_bulkhead`]).
    #[cfg(feature = "bulkhead")]
    fn bulkhead<P>(self, layer: BulkheadLayer<P>) -> ServiceBuilder<Stack<BulkheadLayer<P>, L>>;

    /// Adds a fallback ([`palisade_fallback`]).
    #[cfg(feature = "fallback")]
    // The layer's own five parameters, spelled out as tower-http spells its types.
    #[allow(clippy::type_complexity)]
    fn fallback<Src, X, R, P, M>(
        self,
        layer: FallbackLayer<Src, X, R, P, M>,
    ) -> ServiceBuilder<Stack<FallbackLayer<Src, X, R, P, M>, L>>;

    /// Adds a balancer over a registry's peers ([`palisade_discovery`]).
    #[cfg(feature = "discovery")]
    fn peer_discovery<P>(self, layer: PeerDiscoveryLayer<P>) -> ServiceBuilder<Stack<PeerDiscoveryLayer<P>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<P>(self, layer: CircuitBreakerLayer<P>) -> ServiceBuilder<Stack<CircuitBreakerLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn palisade_retry<P, R, A>(self, layer: RetryLayer<P, R, A>) -> ServiceBuilder<Stack<RetryLayer<P, R, A>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn palisade_timeout<P>(self, layer: TimeoutLayer<P>) -> ServiceBuilder<Stack<TimeoutLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead<P>(self, layer: BulkheadLayer<P>) -> ServiceBuilder<Stack<BulkheadLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "fallback")]
    // The layer's own five parameters, spelled out as tower-http spells its types.
    #[allow(clippy::type_complexity)]
    fn fallback<Src, X, R, P, M>(
        self,
        layer: FallbackLayer<Src, X, R, P, M>,
    ) -> ServiceBuilder<Stack<FallbackLayer<Src, X, R, P, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "discovery")]
    fn peer_discovery<P>(self, layer: PeerDiscoveryLayer<P>) -> ServiceBuilder<Stack<PeerDiscoveryLayer<P>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    /// Keeps [`ServiceBuilderExt`](super::ServiceBuilderExt) to `ServiceBuilder`,
    /// so methods can be added without breaking an outside implementation.
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
