//! The Palisade client: the preset ([`palisade::preset::GrpcClient`]) over
//! the registry, with the seed's defaults and the run's timeouts, retries and
//! bulkhead. Nothing in this crate builds the stack by hand.
//!
//! ```text
//! TimeoutLayer (total, 1 s)     every attempt and backoff
//! RetryLayer (1 retry)          default backoff and budget, to another peer
//! BulkheadLayer                 Settings::bulkhead_*
//! PeerDiscoveryLayer            p2c over the available peers of the registry
//!   per peer: CircuitBreakerLayer (the preset's: 3 consecutive failures, 10 s cooldown)
//!             -> TimeoutLayer (per attempt, 250 ms) -> tonic Channel
//! ```

use std::sync::Arc;

use palisade::preset::GrpcClient;
use palisade_core::BoxError;
use palisade_core::event::Listener;
use palisade_testkit::echo::echo_client::EchoClient;

use super::Settings;
use crate::fleet::SERVICE;
use crate::outage::OutageRegistry;

/// A tonic echo client over the Palisade preset.
pub type PalisadeClient = EchoClient<GrpcClient>;

/// The Palisade client over `registry`, with every per-peer breaker
/// reporting its transitions to `breakers`.
pub fn palisade(
    registry: &OutageRegistry,
    settings: &Settings,
    breakers: Arc<dyn Listener>,
) -> Result<PalisadeClient, BoxError> {
    let client = GrpcClient::builder(registry.clone(), SERVICE)
        .attempt_timeout(settings.attempt_timeout)
        .total_timeout(settings.total_timeout)
        .retry(|r| r.retries(settings.retries).jitter_seed(settings.seed))
        .bulkhead(|b| {
            let b = b
                .max_concurrent(settings.bulkhead_concurrent)
                .max_queue(settings.bulkhead_queue);
            match settings.bulkhead_wait {
                Some(wait) => b.max_wait(wait),
                None => b,
            }
        })
        .breaker(|b| b.listener(breakers))
        .build()?;
    Ok(EchoClient::new(client))
}
