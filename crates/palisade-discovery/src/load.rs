//! The load metrics the balancer compares.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How the balancer measures a peer's load when it compares two.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum LoadMetric {
    /// Calls in flight (until their response bodies end), per unit of weight.
    /// The default: cheap, and good when peers are alike.
    #[default]
    PendingRequests,
    /// Peak-EWMA of response time times (calls in flight + 1), per unit of
    /// weight, as Finagle and linkerd do: a peer that turns slow is avoided
    /// at once (the average jumps to a slower sample) and forgiven gradually
    /// (it decays toward faster samples with time constant `decay`). Costs a
    /// clock read per call and per pick.
    ///
    /// The sample is the time to the peer's *answer*: its response head, or
    /// its error — not the end of a streamed body, so a peer serving long
    /// streams does not look slow and get starved (the in-flight count,
    /// which also weighs in, still lasts until the body ends). A fast error
    /// counts as a fast answer: keeping a failing peer out is the breaker's
    /// job, not the load metric's.
    PeakEwma {
        /// The response time assumed for a peer that has not answered yet.
        default_rtt: Duration,
        /// The decay time constant.
        decay: Duration,
    },
}

impl LoadMetric {
    /// Peak-EWMA with a 30 ms default response time and a 10 s decay.
    pub fn peak_ewma() -> Self {
        LoadMetric::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// A peer's peak-EWMA of response time, in nanoseconds.
#[derive(Debug)]
pub(crate) struct Ewma {
    decay_ns: f64,
    state: Mutex<(f64, Instant)>,
}

impl Ewma {
    pub(crate) fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            decay_ns: decay.as_nanos().max(1) as f64,
            state: Mutex::new((default_rtt.as_nanos() as f64, Instant::now())),
        }
    }

    fn decayed(&self, rtt: f64, at: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
        rtt * (-elapsed / self.decay_ns).exp()
    }

    /// The current estimate, decayed to `now`.
    pub(crate) fn get(&self, now: Instant) -> f64 {
        let (rtt, at) = *self.state.lock();
        self.decayed(rtt, at, now)
    }

    /// Records a response time.
    pub(crate) fn observe(&self, sample: Duration, now: Instant) {
        let sample = sample.as_nanos() as f64;
        let mut state = self.state.lock();
        let (rtt, at) = *state;
        let next = if sample > rtt {
            sample
        } else {
            let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
            let w = (-elapsed / self.decay_ns).exp();
            rtt * w + sample * (1.0 - w)
        };
        *state = (next, now);
    }
}
