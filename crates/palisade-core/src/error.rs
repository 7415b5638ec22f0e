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
//!
//! # Behind a `tonic::Status`, and as an http status
//!
//! With feature `tonic`, each kind returns a `tonic::Status` of the gRPC code a
//! caller expects from [`Error::source`] ([`StatusSource`]). tonic's
//! `Status::from_error`, which a generated client applies to every error of
//! its channel, finds it there: a `CircuitOpen` reaches the caller as
//! `UNAVAILABLE` (never `UNKNOWN`) with the breaker's message, and the
//! `Status`'s own `source()` is the Palisade error, so the typed error stays
//! reachable. [`find_error`] and [`PalisadeError::find`] walk to it from a
//! `Status` or any other wrapper; [`PalisadeError`] also gives the http status
//! (and `Retry-After`) a server should answer with, and its docs hold the
//! table of codes. The `Status` is built only when something walks the
//! chain, so an error that never reaches tonic costs nothing more.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::event::LayerName;
use crate::peer::PeerId;
use crate::protocol::GrpcCode;

mod find;
mod status;

pub use find::{PalisadeError, find_error, http_status, is_deadline_exceeded};
pub use status::StatusSource;

/// `source()` of a kind: its `tonic::Status` (feature `tonic`), else none.
macro_rules! status_source {
    ($kind:ty, $code:expr) => {
        impl Error for $kind {
            /// With feature `tonic`, the `tonic::Status` this error stands for
            /// (see the [module docs](crate::error)); otherwise none.
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                self.status.get($code, || self.to_string())
            }
        }
    };
}

/// A type-erased error, as tower returns at service boundaries.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The circuit breaker refused the call: the breaker is open, or it is half-open
/// and every probe slot is taken. The inner service was not called.
///
/// A tonic caller sees `UNAVAILABLE`; an http server answers 503 with
/// `Retry-After` (see [`PalisadeError`]).
#[derive(Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    peer: Option<PeerId>,
    retry_in: Duration,
    status: StatusSource,
}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("peer", &self.peer)
            .field("retry_in", &self.retry_in)
            .finish()
    }
}

impl CircuitOpen {
    /// A refusal by the breaker of `peer` (or of a keyed breaker when `None`), whose
    /// next probe is allowed in `retry_in`.
    pub fn new(peer: Option<PeerId>, retry_in: Duration) -> Self {
        Self {
            peer,
            retry_in,
            status: StatusSource::new(),
        }
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

status_source!(CircuitOpen, GrpcCode::UNAVAILABLE);

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
///
/// A tonic caller sees `RESOURCE_EXHAUSTED`; an http server answers 429 (see
/// [`PalisadeError`]).
#[derive(Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    max_concurrent: usize,
    max_queue: usize,
    reason: BulkheadRejection,
    status: StatusSource,
}

impl fmt::Debug for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadFull")
            .field("max_concurrent", &self.max_concurrent)
            .field("max_queue", &self.max_queue)
            .field("reason", &self.reason)
            .finish()
    }
}

impl BulkheadFull {
    /// A refusal by a bulkhead of `max_concurrent` slots and `max_queue` queue places.
    pub fn new(max_concurrent: usize, max_queue: usize, reason: BulkheadRejection) -> Self {
        Self {
            max_concurrent,
            max_queue,
            reason,
            status: StatusSource::new(),
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

status_source!(BulkheadFull, GrpcCode::RESOURCE_EXHAUSTED);

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

/// How late a timeout's timer may fire after its deadline before the
/// lateness is taken for a stall of the client itself (100 ms).
///
/// tokio's timers fire within a millisecond of their deadline on a runtime
/// that keeps up. A timer that fires much later says that the client's own
/// runtime (or the host under it) was not running: its CPU was taken away,
/// or a task blocked a worker thread. The peer may well have answered in
/// time, unread. Such a [`TimedOut`] is [a client stall](TimedOut::is_client_stall):
/// the caller still gets the error, but the built-in classifiers count it as
/// [`Outcome::Ignored`](crate::classify::Outcome::Ignored), so a breaker or
/// an adaptive limit does not blame the peer for the client's own slowness.
pub const STALL_TOLERANCE: Duration = Duration::from_millis(100);

/// A timeout fired and the work under it was dropped (cancelled).
///
/// A tonic caller sees `DEADLINE_EXCEEDED`; an http server answers 504 (see
/// [`PalisadeError`]). Unlike [`DeadlineExceeded`], an attempt's timeout is
/// the peer's fault: the breaker counts it as a failure, unless its timer
/// fired more than [`STALL_TOLERANCE`] after the deadline
/// ([`is_client_stall`](Self::is_client_stall)).
#[derive(Clone, PartialEq, Eq)]
pub struct TimedOut {
    limit: Duration,
    kind: TimeoutKind,
    late: Duration,
    status: StatusSource,
}

impl fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedOut")
            .field("limit", &self.limit)
            .field("kind", &self.kind)
            .field("late", &self.late)
            .finish()
    }
}

impl TimedOut {
    /// A `kind` timeout of `limit` fired.
    pub fn new(kind: TimeoutKind, limit: Duration) -> Self {
        Self::fired_late(kind, limit, Duration::ZERO)
    }

    /// A `kind` timeout of `limit` whose timer fired `late` after its
    /// deadline (see [`STALL_TOLERANCE`]).
    pub fn fired_late(kind: TimeoutKind, limit: Duration, late: Duration) -> Self {
        Self {
            limit,
            kind,
            late,
            status: StatusSource::new(),
        }
    }

    /// How long after its deadline the timer fired.
    pub fn late_by(&self) -> Duration {
        self.late
    }

    /// Whether the timer fired more than [`STALL_TOLERANCE`] after its
    /// deadline: the client stalled, and the timeout says nothing about the
    /// peer.
    pub fn is_client_stall(&self) -> bool {
        self.late > STALL_TOLERANCE
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
        write!(f, "{} timeout of {:?} elapsed", self.kind.as_str(), self.limit)?;
        if self.is_client_stall() {
            write!(
                f,
                " (its timer fired {:?} late: the client stalled, not counted against the peer)",
                self.late
            )?;
        }
        Ok(())
    }
}

status_source!(TimedOut, GrpcCode::DEADLINE_EXCEEDED);

/// The call's deadline has passed (or had passed before the call was sent).
///
/// Distinct from [`TimedOut`]: a deadline belongs to the whole call tree, and
/// retrying past it is pointless, so it is never retryable. Running out of
/// the caller's time is not the peer's fault either: the built-in classifiers
/// count it as neither a success nor a failure ([`is_deadline_exceeded`]).
///
/// A tonic caller sees `DEADLINE_EXCEEDED`; an http server answers 504 (see
/// [`PalisadeError`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DeadlineExceeded {
    budget: Option<Duration>,
    sent: bool,
    /// Where an unsent call waited, and for how long, when its deadline passed.
    waited: Option<(&'static str, Duration)>,
    status: StatusSource,
}

impl fmt::Debug for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineExceeded")
            .field("budget", &self.budget)
            .field("sent", &self.sent)
            .field("waited", &self.waited)
            .finish()
    }
}

impl DeadlineExceeded {
    /// The deadline passed before the inner service was called.
    pub fn before_send() -> Self {
        Self {
            budget: None,
            sent: false,
            waited: None,
            status: StatusSource::new(),
        }
    }

    /// The deadline passed while the call waited `waited` at `stage` (for
    /// example `"in the bulkhead queue"`), before the inner service was
    /// called. [`was_sent`](Self::was_sent) is false.
    pub fn while_waiting(stage: &'static str, waited: Duration) -> Self {
        Self {
            budget: None,
            sent: false,
            waited: Some((stage, waited)),
            status: StatusSource::new(),
        }
    }

    /// Where the unsent call waited when its deadline passed, and for how
    /// long, if it was made by [`while_waiting`](Self::while_waiting).
    pub fn waited(&self) -> Option<(&'static str, Duration)> {
        self.waited
    }

    /// The deadline passed while the call was in flight, after `budget` was granted to it.
    pub fn in_flight(budget: Duration) -> Self {
        Self {
            budget: Some(budget),
            sent: true,
            waited: None,
            status: StatusSource::new(),
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
        match (self.budget, self.waited) {
            (Some(budget), _) => write!(f, "deadline exceeded: the call's remaining {budget:?} ran out"),
            (None, Some((stage, waited))) => write!(
                f,
                "deadline exceeded after waiting {waited:?} {stage}; the call was not sent"
            ),
            (None, None) => f.write_str("deadline exceeded before the call was sent"),
        }
    }
}

status_source!(DeadlineExceeded, GrpcCode::DEADLINE_EXCEEDED);

/// The balancer found no peer it may send the call to.
///
/// A tonic caller sees `UNAVAILABLE`; an http server answers 503, with
/// `Retry-After` when a probe is due later (see [`PalisadeError`]).
#[derive(Clone, PartialEq, Eq)]
pub struct NoAvailablePeers {
    service: Option<String>,
    known: usize,
    open: usize,
    probing: usize,
    excluded: usize,
    next_probe_in: Option<Duration>,
    status: StatusSource,
}

impl fmt::Debug for NoAvailablePeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoAvailablePeers")
            .field("service", &self.service)
            .field("known", &self.known)
            .field("open", &self.open)
            .field("probing", &self.probing)
            .field("excluded", &self.excluded)
            .field("next_probe_in", &self.next_probe_in)
            .finish()
    }
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
            status: StatusSource::new(),
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

status_source!(NoAvailablePeers, GrpcCode::UNAVAILABLE);

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

impl Error for PolledAfterCompletion {
    /// With feature `tonic`, an `INTERNAL` `tonic::Status` (see the
    /// [module docs](crate::error)); otherwise none. The error is `Copy`, so
    /// its `Status` is kept once per layer in a static.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        static STATUSES: [StatusSource; 8] = [const { StatusSource::new() }; 8];
        let slot = match self.layer {
            LayerName::CircuitBreaker => 0,
            LayerName::Retry => 1,
            LayerName::Timeout => 2,
            LayerName::Bulkhead => 3,
            LayerName::Fallback => 4,
            LayerName::Discovery => 5,
            LayerName::Body => 6,
            #[allow(unreachable_patterns)]
            _ => 7,
        };
        STATUSES[slot].get(GrpcCode::INTERNAL, || self.to_string())
    }
}

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
        assert_eq!(
            format!("{:?}", CircuitOpen::new(None, Duration::from_secs(1))),
            "CircuitOpen { peer: None, retry_in: 1s }"
        );
        let config = ConfigError::new("circuit breaker", "threshold", "must lie in (0, 1], got 1.5");
        assert_eq!(
            config.to_string(),
            "invalid circuit breaker configuration: `threshold` must lie in (0, 1], got 1.5"
        );
    }

    /// Every kind, boxed, with the gRPC code and http status it stands for.
    fn kinds() -> Vec<(BoxError, GrpcCode, http::StatusCode)> {
        use http::StatusCode;
        vec![
            (
                CircuitOpen::new(Some("a:1".into()), Duration::from_secs(3)).into(),
                GrpcCode::UNAVAILABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                NoAvailablePeers::new(3, 3, 0, 0).into(),
                GrpcCode::UNAVAILABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                BulkheadFull::new(3, 10, BulkheadRejection::QueueFull).into(),
                GrpcCode::RESOURCE_EXHAUSTED,
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                TimedOut::new(TimeoutKind::Attempt, Duration::from_secs(1)).into(),
                GrpcCode::DEADLINE_EXCEEDED,
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                DeadlineExceeded::before_send().into(),
                GrpcCode::DEADLINE_EXCEEDED,
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                PolledAfterCompletion::new(LayerName::Bulkhead).into(),
                GrpcCode::INTERNAL,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ]
    }

    #[derive(Debug)]
    struct Wrap(BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn every_kind_is_found_behind_wrappers_with_its_code_and_http_status() {
        for (error, code, status) in kinds() {
            let message = error.to_string();
            let wrapped = Wrap(error);
            let found = PalisadeError::find(&wrapped).unwrap_or_else(|| panic!("{message} not found"));
            assert_eq!(found.grpc_code(), code, "{message}");
            assert_eq!(found.http_status(), status, "{message}");
            assert_eq!(http_status(&wrapped), Some(status));
            assert_eq!(found.as_error().to_string(), message);
        }
        assert!(PalisadeError::find(&std::io::Error::other("io")).is_none());
        assert_eq!(http_status(&std::io::Error::other("io")), None);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let after = |e: BoxError| {
            PalisadeError::find(e.as_ref())
                .and_then(|f| f.retry_after_header())
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            after(CircuitOpen::new(None, Duration::from_millis(2500)).into()).as_deref(),
            Some("3")
        );
        assert_eq!(
            after(CircuitOpen::new(None, Duration::from_secs(10)).into()).as_deref(),
            Some("10")
        );
        assert_eq!(
            after(CircuitOpen::new(None, Duration::ZERO).into()).as_deref(),
            Some("1")
        );
        let none = NoAvailablePeers::new(2, 2, 0, 0);
        assert_eq!(after(none.clone().into()), None, "no peer is open with a known probe");
        assert_eq!(
            after(none.with_next_probe_in(Duration::from_millis(100)).into()).as_deref(),
            Some("1")
        );
        assert_eq!(
            after(BulkheadFull::new(1, 0, BulkheadRejection::QueueFull).into()),
            None
        );
    }

    #[test]
    fn the_deadline_is_recognised_through_the_chain_and_a_timeout_is_not_one() {
        assert!(is_deadline_exceeded(&DeadlineExceeded::before_send()));
        assert!(is_deadline_exceeded(&Wrap(
            DeadlineExceeded::in_flight(Duration::from_millis(3)).into()
        )));
        assert!(!is_deadline_exceeded(&TimedOut::new(
            TimeoutKind::Attempt,
            Duration::from_secs(1)
        )));
        assert!(!is_deadline_exceeded(&std::io::Error::other("x")));
        let wrapped = Wrap(DeadlineExceeded::before_send().into());
        assert_eq!(
            find_error::<DeadlineExceeded>(&wrapped),
            Some(&DeadlineExceeded::before_send())
        );
    }

    #[test]
    fn a_chain_that_never_ends_does_not_hang_a_walk() {
        #[derive(Debug)]
        struct Loop;
        impl fmt::Display for Loop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("loop")
            }
        }
        impl Error for Loop {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&Loop)
            }
        }
        assert!(!is_deadline_exceeded(&Loop));
    }

    #[cfg(not(feature = "tonic"))]
    #[test]
    fn without_tonic_the_kinds_have_no_source_and_cost_nothing_more() {
        for (error, ..) in kinds() {
            assert!(error.source().is_none(), "{error}");
        }
        assert_eq!(std::mem::size_of::<StatusSource>(), 0);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn with_tonic_every_kind_reaches_tonic_with_its_code_and_stays_reachable() {
        for (error, code, _) in kinds() {
            let message = error.to_string();
            // What a tonic generated client does with a channel's error.
            let status = tonic::Status::from_error(error);
            assert_eq!(GrpcCode::from(status.code()), code, "{message}");
            assert_eq!(status.message(), message);
            let source = status.source().expect("tonic keeps our error as the source");
            let found = PalisadeError::find(source).expect("the typed error is reachable");
            assert_eq!(found.grpc_code(), code);
            assert_eq!(found.as_error().to_string(), message);
            // From the Status itself, too.
            assert!(PalisadeError::find(&status).is_some());
        }
        // Wrapped in an error of someone else's, the code still comes through.
        let wrapped: BoxError = Wrap(CircuitOpen::new(None, Duration::from_secs(1)).into()).into();
        let status = tonic::Status::from_error(wrapped);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(find_error::<CircuitOpen>(&status).is_some());
        // The same Status each time it is asked for, and clones start afresh.
        let open = CircuitOpen::new(None, Duration::from_secs(1));
        let a = open.source().unwrap() as *const dyn Error as *const u8;
        let b = open.source().unwrap() as *const dyn Error as *const u8;
        assert_eq!(a, b);
        assert_eq!(open.clone(), open);
    }
}
