//! The errors every Palisade layer can return, and the configuration error.
//!
//! The failure kinds live here, not in the layer crates, so that one layer can
//! recognise another's error without depending on it: the retry layer retries
//! [`CircuitOpen`] and the fallback layer can match [`NoAvailablePeers`]
//! although neither names the crate that produced it. Each layer crate
//! re-exports the kinds it returns.
//!
//! At the service boundary layers return [`BoxError`], as tower's own
//! middleware does; callers recover the kind with `downcast_ref`:
//!
//! ```
//! use palisade_core::error::{BoxError, CircuitOpen};
//! use std::time::Duration;
//!
//! let err: BoxError = CircuitOpen::new(Some("10.0.0.7:50051".into()), Duration::from_secs(3)).into();
//! let open = err.downcast_ref::<CircuitOpen>().unwrap();
//! assert_eq!(open.retry_in(), Duration::from_secs(3));
//! assert_eq!(err.to_string(), "circuit open for peer 10.0.0.7:50051: next probe allowed in 3s");
//! ```

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::event::LayerName;
use crate::peer::PeerId;

/// A type-erased error, as tower returns at service boundaries.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The circuit breaker refused the call: the breaker is open, or it is half-open
/// and every probe slot is taken. The inner service was not called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    peer: Option<PeerId>,
    retry_in: Duration,
}

impl CircuitOpen {
    /// A refusal by the breaker of `peer` (or of a keyed breaker when `None`), whose
    /// next probe is allowed in `retry_in`.
    pub fn new(peer: Option<PeerId>, retry_in: Duration) -> Self {
        Self { peer, retry_in }
    }

    /// The peer (or breaker key) whose breaker refused the call.
    pub fn peer(&self) -> Option<&PeerId> {
        self.peer.as_ref()
    }

    /// How long until the breaker lets the next probe through; zero when the
    /// probe is due and only the probe slots are taken.
    pub fn retry_in(&self) -> Duration {
        self.retry_in
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer {
            Some(peer) => write!(f, "circuit open for peer {peer}")?,
            None => f.write_str("circuit open")?,
        }
        if self.retry_in.is_zero() {
            f.write_str(": probe slots are all in use")
        } else {
            write!(f, ": next probe allowed in {:?}", self.retry_in)
        }
    }
}

impl Error for CircuitOpen {}

/// Why a bulkhead refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkheadRejection {
    /// Every slot was busy and the queue was full when the call arrived.
    QueueFull,
    /// The call waited in the queue for the configured `max_wait` without getting a slot.
    WaitTimedOut(Duration),
}

/// The bulkhead refused the call; the inner service was not called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    max_concurrent: usize,
    max_queue: usize,
    reason: BulkheadRejection,
}

impl BulkheadFull {
    /// A refusal by a bulkhead of `max_concurrent` slots and `max_queue` queue places.
    pub fn new(max_concurrent: usize, max_queue: usize, reason: BulkheadRejection) -> Self {
        Self {
            max_concurrent,
            max_queue,
            reason,
        }
    }

    /// The concurrency limit in force when the call was refused.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// The queue size in force when the call was refused.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Why the call was refused.
    pub fn reason(&self) -> BulkheadRejection {
        self.reason
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            BulkheadRejection::QueueFull => write!(
                f,
                "bulkhead full: {} calls in flight and {} queued",
                self.max_concurrent, self.max_queue
            ),
            BulkheadRejection::WaitTimedOut(waited) => write!(
                f,
                "bulkhead full: waited {waited:?} in the queue for one of {} slots",
                self.max_concurrent
            ),
        }
    }
}

impl Error for BulkheadFull {}

/// Which limit a [`TimedOut`] error hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The timeout of one attempt (a timeout layer inside retry, per peer).
    Attempt,
    /// The timeout of the whole call, across every attempt and backoff.
    Total,
    /// The time allowed until response headers arrive.
    Headers,
    /// The time allowed for the whole response body.
    Body,
    /// The time allowed between two frames of the response body.
    BodyIdle,
}

impl TimeoutKind {
    /// A short lowercase name, used in messages and tracing fields.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Attempt => "attempt",
            TimeoutKind::Total => "total",
            TimeoutKind::Headers => "headers",
            TimeoutKind::Body => "body",
            TimeoutKind::BodyIdle => "body idle",
        }
    }
}

/// A timeout fired and the work under it was dropped (cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    limit: Duration,
    kind: TimeoutKind,
}

impl TimedOut {
    /// A `kind` timeout of `limit` fired.
    pub fn new(kind: TimeoutKind, limit: Duration) -> Self {
        Self { limit, kind }
    }

    /// The limit that was exceeded.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Which limit it was.
    pub fn kind(&self) -> TimeoutKind {
        self.kind
    }

    /// Whether a retry may help: an attempt's timeout is retryable, the others are not.
    pub fn is_retryable(&self) -> bool {
        self.kind == TimeoutKind::Attempt
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timeout of {:?} elapsed", self.kind.as_str(), self.limit)
    }
}

impl Error for TimedOut {}

/// The call's deadline has passed (or had passed before the call was sent).
///
/// Distinct from [`TimedOut`]: a deadline belongs to the whole call tree, and
/// retrying past it is pointless, so it is never retryable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineExceeded {
    budget: Option<Duration>,
    sent: bool,
}

impl DeadlineExceeded {
    /// The deadline passed before the inner service was called.
    pub fn before_send() -> Self {
        Self {
            budget: None,
            sent: false,
        }
    }

    /// The deadline passed while the call was in flight, after `budget` was granted to it.
    pub fn in_flight(budget: Duration) -> Self {
        Self {
            budget: Some(budget),
            sent: true,
        }
    }

    /// Whether the inner service had been called when the deadline passed.
    pub fn was_sent(&self) -> bool {
        self.sent
    }

    /// The time that was left for the call when it was sent, if it was.
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.budget {
            Some(budget) => write!(f, "deadline exceeded: the call's remaining {budget:?} ran out"),
            None => f.write_str("deadline exceeded before the call was sent"),
        }
    }
}

impl Error for DeadlineExceeded {}

/// The balancer found no peer it may send the call to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAvailablePeers {
    service: Option<String>,
    known: usize,
    open: usize,
    probing: usize,
    excluded: usize,
    next_probe_in: Option<Duration>,
}

impl NoAvailablePeers {
    /// No peer of `known` could take the call: `open` have an open breaker,
    /// `probing` are half-open with every probe slot taken, and `excluded` were
    /// left out for another reason (not ready, used by an earlier attempt).
    pub fn new(known: usize, open: usize, probing: usize, excluded: usize) -> Self {
        Self {
            service: None,
            known,
            open,
            probing,
            excluded,
            next_probe_in: None,
        }
    }

    /// Names the service whose peers were searched.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Records when the earliest probe of an open peer is due.
    pub fn with_next_probe_in(mut self, next_probe_in: Duration) -> Self {
        self.next_probe_in = Some(next_probe_in);
        self
    }

    /// How many peers were known.
    pub fn known(&self) -> usize {
        self.known
    }

    /// How many had an open breaker.
    pub fn open(&self) -> usize {
        self.open
    }

    /// How many were half-open with every probe slot taken.
    pub fn probing(&self) -> usize {
        self.probing
    }

    /// How many were excluded for other reasons.
    pub fn excluded(&self) -> usize {
        self.excluded
    }

    /// When the earliest probe is due, if any peer is open.
    pub fn next_probe_in(&self) -> Option<Duration> {
        self.next_probe_in
    }
}

impl fmt::Display for NoAvailablePeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no available peers")?;
        if let Some(service) = &self.service {
            write!(f, " for {service}")?;
        }
        write!(
            f,
            ": {} known, {} open, {} probing, {} excluded",
            self.known, self.open, self.probing, self.excluded
        )?;
        if let Some(next) = self.next_probe_in {
            write!(f, "; next probe due in {next:?}")?;
        }
        Ok(())
    }
}

impl Error for NoAvailablePeers {}

/// A response future was polled again after it had returned its output: a
/// caller bug. Every Palisade future answers it with this error, never a
/// panic and never `Pending` forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolledAfterCompletion {
    layer: LayerName,
}

impl PolledAfterCompletion {
    /// `layer`'s response future was polled after completion.
    pub fn new(layer: LayerName) -> Self {
        Self { layer }
    }

    /// The layer whose future was polled again.
    pub fn layer(&self) -> LayerName {
        self.layer
    }
}

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} response future polled after completion", self.layer.as_str())
    }
}

impl Error for PolledAfterCompletion {}

/// A configuration value was rejected by a builder's `build()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    field: &'static str,
    problem: String,
}

impl ConfigError {
    /// The `field` of `layer`'s configuration is invalid because of `problem`.
    pub fn new(layer: &'static str, field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            layer,
            field,
            problem: problem.into(),
        }
    }

    /// The layer whose configuration was rejected (`"circuit breaker"`, `"backoff"`, ...).
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The name of the rejected field, as the builder method is called.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} configuration: `{}` {}",
            self.layer, self.field, self.problem
        )
    }
}

impl Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_peer_limit_or_duration() {
        let open = CircuitOpen::new(Some(PeerId::from("a:1")), Duration::ZERO);
        assert_eq!(
            open.to_string(),
            "circuit open for peer a:1: probe slots are all in use"
        );
        let full = BulkheadFull::new(3, 10, BulkheadRejection::QueueFull);
        assert_eq!(full.to_string(), "bulkhead full: 3 calls in flight and 10 queued");
        let waited = BulkheadFull::new(3, 10, BulkheadRejection::WaitTimedOut(Duration::from_millis(250)));
        assert_eq!(
            waited.to_string(),
            "bulkhead full: waited 250ms in the queue for one of 3 slots"
        );
        let timed = TimedOut::new(TimeoutKind::Attempt, Duration::from_secs(2));
        assert_eq!(timed.to_string(), "attempt timeout of 2s elapsed");
        assert!(timed.is_retryable());
        assert!(!TimedOut::new(TimeoutKind::Total, Duration::from_secs(2)).is_retryable());
        assert_eq!(
            DeadlineExceeded::before_send().to_string(),
            "deadline exceeded before the call was sent"
        );
        let none = NoAvailablePeers::new(3, 2, 1, 0)
            .with_service("echo")
            .with_next_probe_in(Duration::from_secs(4));
        assert_eq!(
            none.to_string(),
            "no available peers for echo: 3 known, 2 open, 1 probing, 0 excluded; next probe due in 4s"
        );
        assert_eq!(
            PolledAfterCompletion::new(LayerName::Timeout).to_string(),
            "timeout response future polled after completion"
        );
        let config = ConfigError::new("circuit breaker", "threshold", "must lie in (0, 1], got 1.5");
        assert_eq!(
            config.to_string(),
            "invalid circuit breaker configuration: `threshold` must lie in (0, 1], got 1.5"
        );
    }
}
