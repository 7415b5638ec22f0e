//! The errors a bulkhead returns.
//!
//! A refusal is a [`BulkheadFull`], returned as a [`BoxError`] from the
//! response future (never from `poll_ready`); its
//! [`reason`](BulkheadFull::reason) tells a full queue
//! ([`BulkheadRejection::QueueFull`], at once) from a wait that ran out
//! ([`BulkheadRejection::WaitTimedOut`], after `max_wait`). A queued call
//! whose deadline passes first gets [`DeadlineExceeded`]. A tonic caller sees
//! `BulkheadFull` as `RESOURCE_EXHAUSTED` (core's `tonic` feature), and
//! [`PalisadeError`](palisade_core::error::PalisadeError) gives an http
//! server the status to answer with (429). Errors of the
//! inner service pass through untouched, boxed: downcast them as usual.
//! [`ConfigError`] comes from [`build`](crate::BulkheadConfigBuilder::build)
//! and names the rejected field.

pub use palisade_core::BoxError;
pub use palisade_core::error::{BulkheadFull, BulkheadRejection, ConfigError, DeadlineExceeded};
