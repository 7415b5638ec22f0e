//! Per-call options and deadlines, carried in request extensions.
//!
//! A caller sets options on one request; every Palisade layer that the request
//! passes reads them and falls back to its configured default. The `timeout`
//! bounds **each attempt** (`retries` more attempts may follow a timed-out
//! one); the `deadline` bounds the whole call, every attempt and backoff. The options
//! travel in [`http::Extensions`]: on an `http::Request<B>` directly, and on a
//! `tonic::Request<T>` through `extensions_mut()`, which tonic moves into the
//! `http::Request` it sends (feature `tonic`). Requests of other types carry no
//! options and get the layers' defaults.
//!
//! ```
//! use palisade_core::options::{CallOptionsExt, Deadline};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut request = http::Request::new(());
//! request
//!     .call_options_mut()
//!     .set_attempt_timeout(Duration::from_secs(2))
//!     .set_retries(3)
//!     .set_deadline(Deadline::after(Duration::from_secs(5)));
//!
//! let options = request.call_options().unwrap();
//! assert_eq!(options.timeout(), Some(Duration::from_secs(2)));
//! assert_eq!(options.retries(), Some(3));
//! assert!(options.deadline().unwrap().remaining() <= Duration::from_secs(5));
//! # }
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::peer::AttemptRecord;

/// The point in time by which a whole call (every attempt and backoff, and
/// every call it makes) must finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// A deadline `budget` from now. A budget too large to represent is capped
    /// at [`FAR_FUTURE`](crate::time::FAR_FUTURE) (about thirty years), which
    /// is the same as none at all in practice.
    pub fn after(budget: Duration) -> Self {
        Self(crate::time::after(Instant::now(), budget))
    }

    /// When the deadline falls.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// The time left, zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether no time is left.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.0 < self.0 { other } else { self }
    }
}

/// Options chosen for one call, read by every layer the call passes.
///
/// Every field is optional: a field that is not set leaves the layer's own
/// configuration in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    timeout: Option<Duration>,
    retries: Option<u32>,
    deadline: Option<Deadline>,
    idempotent: Option<bool>,
}

impl CallOptions {
    /// No options: every layer uses its defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-attempt timeout, if one was chosen. `Some(Duration::ZERO)`
    /// means the caller disabled the per-attempt timeout for this call.
    ///
    /// It bounds **each attempt** (as [`attempt_timeout`](Self::attempt_timeout)
    /// says in its name); the overall bound of a call is its
    /// [`deadline`](Self::deadline).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The per-attempt timeout, if one was chosen: the same value as
    /// [`timeout`](Self::timeout), under a name that says what it bounds.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the timeout of **each attempt** of this call, overriding the
    /// default of every per-attempt timeout layer (kind `Attempt`) the call
    /// passes. A total timeout layer (kind `Total`) ignores it: the call may
    /// be retried after an attempt times out, and its overall bound is its
    /// [`deadline`](Self::set_deadline) (or the total layer's own timeout).
    /// A zero duration disables the per-attempt timeout for this call, as
    /// [`disable_timeout`](Self::disable_timeout) does.
    ///
    /// [`set_attempt_timeout`](Self::set_attempt_timeout) is the same setter
    /// under a name that says what it bounds.
    pub fn set_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the timeout of each attempt of this call: an alias of
    /// [`set_timeout`](Self::set_timeout), named for what it bounds.
    pub fn set_attempt_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.set_timeout(timeout)
    }

    /// Disables the per-attempt timeout layers' timeout for this call. A
    /// total timeout layer keeps its own limit, and a deadline, if set, still
    /// holds.
    pub fn disable_timeout(&mut self) -> &mut Self {
        self.timeout = Some(Duration::ZERO);
        self
    }

    /// How many retries the caller allows after the first attempt, if chosen.
    pub fn retries(&self) -> Option<u32> {
        self.retries
    }

    /// Sets how many retries may follow the first attempt; 0 disables retries for this call.
    pub fn set_retries(&mut self, retries: u32) -> &mut Self {
        self.retries = Some(retries);
        self
    }

    /// The call's deadline, if any.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// Sets the call's deadline. An earlier deadline already present is kept:
    /// a call never gets more time than its parent allowed.
    pub fn set_deadline(&mut self, deadline: Deadline) -> &mut Self {
        self.deadline = Some(match self.deadline {
            Some(existing) => existing.min(deadline),
            None => deadline,
        });
        self
    }

    /// Whether the caller marked the call idempotent (safe to send twice) or
    /// not, overriding what the retry layer infers from the http method.
    pub fn idempotent(&self) -> Option<bool> {
        self.idempotent
    }

    /// Marks the call idempotent, or explicitly not.
    pub fn set_idempotent(&mut self, idempotent: bool) -> &mut Self {
        self.idempotent = Some(idempotent);
        self
    }
}

/// Reads and writes [`CallOptions`] and the [`AttemptRecord`] on anything that
/// carries request extensions: [`http::Extensions`], `http::Request<B>`, and
/// (feature `tonic`) `tonic::Request<T>`.
pub trait CallOptionsExt {
    /// The options set on this call, if any.
    fn call_options(&self) -> Option<&CallOptions>;

    /// The options of this call, inserted empty if none were set.
    fn call_options_mut(&mut self) -> &mut CallOptions;

    /// The record of peers used by earlier attempts of this call, if a retry layer started one.
    fn attempt_record(&self) -> Option<&AttemptRecord>;

    /// The record of peers used by earlier attempts, inserted empty if absent.
    fn attempt_record_mut(&mut self) -> &mut AttemptRecord;

    /// The call's deadline, if any: a shorthand for `call_options()?.deadline()`.
    fn deadline(&self) -> Option<Deadline> {
        self.call_options().and_then(CallOptions::deadline)
    }
}

impl CallOptionsExt for http::Extensions {
    fn call_options(&self) -> Option<&CallOptions> {
        self.get::<CallOptions>()
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        self.get_or_insert_default::<CallOptions>()
    }

    fn attempt_record(&self) -> Option<&AttemptRecord> {
        self.get::<AttemptRecord>()
    }

    fn attempt_record_mut(&mut self) -> &mut AttemptRecord {
        self.get_or_insert_default::<AttemptRecord>()
    }
}

impl<B> CallOptionsExt for http::Request<B> {
    fn call_options(&self) -> Option<&CallOptions> {
        self.extensions().call_options()
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        self.extensions_mut().call_options_mut()
    }

    fn attempt_record(&self) -> Option<&AttemptRecord> {
        self.extensions().attempt_record()
    }

    fn attempt_record_mut(&mut self) -> &mut AttemptRecord {
        self.extensions_mut().attempt_record_mut()
    }
}

#[cfg(feature = "tonic")]
impl<T> CallOptionsExt for tonic::Request<T> {
    fn call_options(&self) -> Option<&CallOptions> {
        self.extensions().get::<CallOptions>()
    }

    fn call_options_mut(&mut self) -> &mut CallOptions {
        let extensions = self.extensions_mut();
        if extensions.get::<CallOptions>().is_none() {
            extensions.insert(CallOptions::default());
        }
        match extensions.get_mut::<CallOptions>() {
            Some(options) => options,
            // Inserted just above; the branch only satisfies the borrow checker.
            None => unreachable!("CallOptions was inserted above"),
        }
    }

    fn attempt_record(&self) -> Option<&AttemptRecord> {
        self.extensions().get::<AttemptRecord>()
    }

    fn attempt_record_mut(&mut self) -> &mut AttemptRecord {
        let extensions = self.extensions_mut();
        if extensions.get::<AttemptRecord>().is_none() {
            extensions.insert(AttemptRecord::default());
        }
        match extensions.get_mut::<AttemptRecord>() {
            Some(record) => record,
            None => unreachable!("AttemptRecord was inserted above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_counts_down_with_paused_time() {
        let deadline = Deadline::after(Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(deadline.remaining(), Duration::from_millis(400));
        assert!(!deadline.is_expired());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
        assert!(deadline.is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_deadline_never_extends_the_parent() {
        let mut options = CallOptions::new();
        options.set_deadline(Deadline::after(Duration::from_secs(1)));
        options.set_deadline(Deadline::after(Duration::from_secs(5)));
        assert_eq!(options.deadline().unwrap().remaining(), Duration::from_secs(1));
        options.set_deadline(Deadline::after(Duration::from_millis(300)));
        assert_eq!(options.deadline().unwrap().remaining(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_budget_does_not_overflow() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.remaining() > Duration::from_secs(86_400 * 365));
    }

    #[test]
    fn the_attempt_timeout_is_the_per_call_timeout() {
        let mut options = CallOptions::new();
        options.set_attempt_timeout(Duration::from_millis(50));
        assert_eq!(options.timeout(), Some(Duration::from_millis(50)));
        assert_eq!(options.attempt_timeout(), Some(Duration::from_millis(50)));
        options.set_timeout(Duration::from_millis(70));
        assert_eq!(options.attempt_timeout(), Some(Duration::from_millis(70)));
    }

    #[test]
    fn options_round_trip_through_http_request_extensions() {
        let mut request = http::Request::new(());
        assert!(request.call_options().is_none());
        request.call_options_mut().set_retries(0).disable_timeout();
        request.attempt_record_mut().record("a:1".into());
        let (parts, ()) = request.into_parts();
        let options = parts.extensions.call_options().unwrap();
        assert_eq!(options.retries(), Some(0));
        assert_eq!(options.timeout(), Some(Duration::ZERO));
        assert_eq!(parts.extensions.attempt_record().unwrap().len(), 1);
    }
}
