//! The Palisade client: the multi-instance stack of DESIGN section 3, built
//! by hand in one function, [`palisade`].
//!
//! TODO(preset client, issue 16): when the facade's preset builder lands,
//! replace the body of [`palisade`] (and the type aliases) with the preset
//! over the same registry; nothing else in this crate builds the stack.
//!
//! ```text
//! TimeoutLayer (total, 1 s)     every attempt and backoff
//! RetryLayer (1 retry)          default backoff and budget, to another peer
//! BulkheadLayer                 Settings::bulkhead_*
//! PeerDiscoveryLayer            p2c over the available peers of the registry
//!   per peer: CircuitBreakerLayer (3 consecutive failures, 10 s cooldown)
//!             -> TimeoutLayer (per attempt, 250 ms) -> tonic Channel
//! ```

use std::sync::Arc;

use palisade_bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::TimeoutKind;
use palisade_core::event::Listener;
use palisade_core::protocol::Grpc;
use palisade_discovery::{Instance, MakePeer, PeerDiscovery, PeerDiscoveryLayer, RegistryDiscover};
use palisade_retry::{DefaultPredicate, ReplayBody, Retry, RetryLayer};
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::{Timeout, TimeoutLayer};
use tonic::transport::{Channel, Endpoint};
use tower::util::MapRequest;
use tower::{Layer, ServiceBuilder};

use super::Settings;
use crate::fleet::SERVICE;
use crate::outage::OutageRegistry;

/// One peer: its breaker over its attempt timeout over its channel.
pub type PerPeer = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;

/// The balancer over the registry's peers.
pub type Balancer = PeerDiscovery<RegistryDiscover<MakePeerChannel>, Grpc>;

type Replayed = http::Request<ReplayBody<tonic::body::Body>>;
type Unreplay = fn(Replayed) -> http::Request<tonic::body::Body>;

/// The whole stack, outermost first.
pub type PalisadeStack = Timeout<Retry<MapRequest<Bulkhead<Balancer, Grpc>, Unreplay>, Grpc, DefaultPredicate>, Grpc>;

/// A tonic echo client over the Palisade stack.
pub type PalisadeClient = EchoClient<PalisadeStack>;

/// Makes the per-peer service of an instance: a lazily connected channel to
/// its address behind the per-attempt timeout and the peer's own breaker.
#[derive(Clone)]
pub struct MakePeerChannel {
    breaker: CircuitBreakerLayer<Grpc>,
    attempt: TimeoutLayer<Grpc>,
}

impl MakePeer for MakePeerChannel {
    type Service = PerPeer;

    fn make_peer(&mut self, instance: &Instance) -> Result<PerPeer, BoxError> {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        Ok(self.breaker.for_peer(instance.id()).layer(self.attempt.layer(channel)))
    }
}

fn unreplay(request: Replayed) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// The Palisade client over `registry`, with every per-peer breaker
/// reporting its transitions to `breakers`.
pub fn palisade(
    registry: &OutageRegistry,
    settings: &Settings,
    breakers: Arc<dyn Listener>,
) -> Result<PalisadeClient, BoxError> {
    // The seed's breaker: 3 consecutive failures (within 60 s), 10 s cooldown
    // doubling to 120 s, 1 probe at a time, 2 successes to close.
    let breaker =
        CircuitBreakerLayer::new(CircuitBreakerConfig::builder().listener(breakers).build()?).protocol(Grpc::default());
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(settings.attempt_timeout))
        .build()?;
    let discover = RegistryDiscover::new(registry, SERVICE, MakePeerChannel { breaker, attempt });
    let balancer = PeerDiscoveryLayer::builder()
        .grpc()
        .service_name(SERVICE)
        .registry_status(discover.status())
        .build()?
        .layer(discover);

    let mut bulkhead = BulkheadConfig::builder()
        .max_concurrent(settings.bulkhead_concurrent)
        .max_queue(settings.bulkhead_queue);
    if let Some(wait) = settings.bulkhead_wait {
        bulkhead = bulkhead.max_wait(wait);
    }
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(settings.total_timeout))
                .build()?,
        )
        .layer(
            // Default backoff (100 ms exponential, full jitter) and budget
            // (20% of the request rate, 10 retries/s floor).
            RetryLayer::builder()
                .grpc()
                .retries(settings.retries)
                .jitter_seed(settings.seed)
                .build()?,
        )
        .layer(tower::util::MapRequestLayer::new(unreplay as Unreplay))
        .layer(BulkheadLayer::new(bulkhead.build()?).protocol(Grpc::default()))
        .service(balancer);
    Ok(EchoClient::new(stack))
}
