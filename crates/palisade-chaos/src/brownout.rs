//! A seeded random failure rate on a test server, driven from outside it.
//!
//! TODO(failure rate fault): palisade-testkit is getting
//! `Faults::set_failure_rate(rate, status, seed)` (another change in flight).
//! Once it is merged, replace [`FailureRate`] with that one call per server
//! (and `set_failure_rate(0.0, ..)` to stop); nothing else changes.
//!
//! Until then the rate is made with what the test kit has: a task per server
//! watches the server's request count and, for each request that arrives,
//! draws from a seeded RNG whether one more of the coming requests fails
//! ([`Faults::fail_next`](palisade_testkit::Faults::fail_next)). Each draw
//! decides the fate of a request a little after the one that triggered it,
//! which leaves the share of failures at `rate` and the sequence of draws
//! fixed by the seed (which request each draw lands on depends on timing).

use std::sync::Arc;

use palisade_testkit::EchoServer;
use tokio::task::JoinHandle;
use tonic::Code;

/// A running failure rate on one server; dropping it (or
/// [`stop`](Self::stop)) ends it and clears the failures it had queued.
#[derive(Debug)]
pub struct FailureRate {
    task: JoinHandle<()>,
    server: Arc<EchoServer>,
}

impl FailureRate {
    /// Fails `rate` (0 to 1) of `server`'s requests with `code`, drawing from
    /// an RNG seeded with `seed`.
    pub fn start(server: Arc<EchoServer>, rate: f64, code: Code, seed: u64) -> Self {
        let driven = Arc::clone(&server);
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut seen = driven.stats().requests();
            loop {
                driven.stats().wait_until(|stats| stats.requests() > seen).await;
                let now = driven.stats().requests();
                let failures = (seen..now).filter(|_| rng.f64() < rate).count() as u32;
                seen = now;
                if failures > 0 {
                    let queued = driven.faults().remaining_failures();
                    driven.faults().fail_next(queued + failures, code);
                }
            }
        });
        Self { task, server }
    }

    /// Ends the failures (queued ones included).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for FailureRate {
    fn drop(&mut self) {
        self.task.abort();
        self.server.faults().fail_next(0, Code::Unavailable);
    }
}
