//! The errors a bulkhead returns.
//!
//! A refusal is a [`BulkheadFull`], returned as a [`BoxError`] from the
//! response future (never from `poll_ready`); its
//! [`reason`](BulkheadFull::reason) tells a full queue
//! ([`BulkheadRejection::QueueFull`], at once) from a wait that ran out
//! ([`BulkheadRejection::WaitTimedOut`], after `max_wait`). Errors of the
//! inner service pass through untouched, boxed: downcast them as usual.
//! [`ConfigError`] comes from [`build`](crate::BulkheadConfigBuilder::build)
//! and names the rejected field.

pub use palisade_core::BoxError;
pub use palisade_core::error::{BulkheadFull, BulkheadRejection, ConfigError};
