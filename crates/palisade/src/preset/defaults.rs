//! The preset's defaults, in one place.

use std::time::Duration;

use palisade_bulkhead::{BulkheadConfig, BulkheadConfigBuilder};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerConfigBuilder};

/// Each attempt's timeout: the seed system's 30 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts after the first: the seed system's one retry, to another
/// instance.
pub const RETRIES: u32 = 1;

/// Calls one client may have in flight. The bulkhead of the preset is a
/// safety net against a fleet that stops answering (calls pile up until
/// their timeouts), not a throttle: at 10 ms a call, 1,024 in flight is
/// about 100,000 calls/s, beyond what one client process sends.
pub const BULKHEAD_MAX_CONCURRENT: usize = 1024;

/// The per-instance breaker: the seed system's numbers (3 consecutive
/// failures, each within 60 s of the previous one; cooldown 10 s doubling
/// up to 120 s; 1 probe at a time; 2 probe successes to close).
pub(crate) fn breaker() -> CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::seed()
}

/// The client's bulkhead: [`BULKHEAD_MAX_CONCURRENT`] in flight, no queue
/// (a call beyond it fails at once with `BulkheadFull`, which the caller
/// sees as `RESOURCE_EXHAUSTED`).
pub(crate) fn bulkhead() -> BulkheadConfigBuilder {
    BulkheadConfig::builder()
        .max_concurrent(BULKHEAD_MAX_CONCURRENT)
        .max_queue(0)
}
