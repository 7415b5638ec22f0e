//! One health view of a preset client.

use std::fmt;
use std::sync::Arc;

use palisade_bulkhead::BulkheadHandle;
use palisade_circuit_breaker::{CircuitBreakerHandle, CircuitSnapshot};
use palisade_discovery::HealthReport;

/// A snapshot of a preset client's health, for a dashboard or a readiness
/// endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientHealth {
    /// The balancer's report (over a registry): every instance with its
    /// breaker's state (open until when, probing, closed), in-flight calls,
    /// latest error with its cause chain, and the registry's state.
    pub peers: Option<HealthReport>,
    /// The one breaker (over one channel).
    pub breaker: Option<CircuitSnapshot>,
    /// Calls holding a bulkhead permit now.
    pub bulkhead_in_flight: usize,
    /// The bulkhead's limit now.
    pub bulkhead_limit: usize,
    /// Calls waiting for a permit now.
    pub bulkhead_queued: usize,
    /// Retries the budget would allow now (`None`: no budget).
    pub retry_budget_available: Option<u64>,
}

type Report = Arc<dyn Fn() -> HealthReport + Send + Sync>;
/// What the retry budget would allow now (`None`: no budget).
type Budget = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

#[derive(Clone)]
enum Peers {
    Balancer(Report),
    Single(CircuitBreakerHandle),
}

/// Where a client's health comes from (cheap handles on shared state).
#[derive(Clone)]
pub(crate) struct HealthSource {
    peers: Peers,
    bulkhead: BulkheadHandle,
    budget: Budget,
}

impl fmt::Debug for HealthSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers = match self.peers {
            Peers::Balancer(_) => "balancer",
            Peers::Single(_) => "one channel",
        };
        f.debug_struct("HealthSource")
            .field("peers", &peers)
            .field("bulkhead_in_flight", &self.bulkhead.in_flight())
            .finish_non_exhaustive()
    }
}

impl HealthSource {
    #[cfg(feature = "tonic")]
    pub(crate) fn balancer(
        report: impl Fn() -> HealthReport + Send + Sync + 'static,
        bulkhead: BulkheadHandle,
        retry: palisade_retry::TonicRetryLayer,
    ) -> Self {
        Self::balancer_with(report, bulkhead, move || retry.budget().map(|b| b.available()))
    }

    #[cfg(feature = "tonic")]
    pub(crate) fn single(
        breaker: CircuitBreakerHandle,
        bulkhead: BulkheadHandle,
        retry: palisade_retry::TonicRetryLayer,
    ) -> Self {
        Self::single_with(breaker, bulkhead, move || retry.budget().map(|b| b.available()))
    }

    pub(crate) fn balancer_with(
        report: impl Fn() -> HealthReport + Send + Sync + 'static,
        bulkhead: BulkheadHandle,
        budget: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            peers: Peers::Balancer(Arc::new(report)),
            bulkhead,
            budget: Arc::new(budget),
        }
    }

    pub(crate) fn single_with(
        breaker: CircuitBreakerHandle,
        bulkhead: BulkheadHandle,
        budget: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            peers: Peers::Single(breaker),
            bulkhead,
            budget: Arc::new(budget),
        }
    }

    pub(crate) fn snapshot(&self) -> ClientHealth {
        let (peers, breaker) = match &self.peers {
            Peers::Balancer(report) => (Some(report()), None),
            Peers::Single(handle) => (None, Some(handle.snapshot())),
        };
        ClientHealth {
            peers,
            breaker,
            bulkhead_in_flight: self.bulkhead.in_flight(),
            bulkhead_limit: self.bulkhead.max_concurrent(),
            bulkhead_queued: self.bulkhead.queued(),
            retry_budget_available: (self.budget)(),
        }
    }
}
