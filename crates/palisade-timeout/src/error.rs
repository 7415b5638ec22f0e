//! The errors this layer returns, re-exported from `palisade-core` so that
//! other layers (retry, breaker, fallback) recognise them without depending on
//! this crate.
//!
//! - [`TimedOut`]: a timeout of this layer fired; [`TimedOut::kind`] says
//!   which ([`TimeoutKind::Attempt`], [`TimeoutKind::Total`], or a body limit
//!   [`TimeoutKind::Body`] / [`TimeoutKind::BodyIdle`]). An attempt's timeout
//!   is retryable by default, the others are not.
//! - [`DeadlineExceeded`]: the call's deadline passed, either before the call
//!   was sent ([`DeadlineExceeded::was_sent`] is `false`: the inner service was
//!   never called) or while it was in flight. Never retryable.
//!
//! Both are failures for every classifier of `palisade-core` (any error is),
//! so a circuit breaker above counts them. Errors of the inner service pass
//! through untouched inside the [`BoxError`].

pub use palisade_core::error::{BoxError, DeadlineExceeded, TimedOut, TimeoutKind};
