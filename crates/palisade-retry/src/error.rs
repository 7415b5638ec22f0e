//! Errors.
//!
//! The retry layer makes no error of its own: a call returns the last
//! attempt's error untouched, boxed as [`BoxError`] (downcast it), or the
//! inner service's `poll_ready` error. The kinds it looks at are re-exported
//! here.

pub use crate::replay::BodyNotReplayable;
pub use palisade_core::BoxError;
pub use palisade_core::error::{CircuitOpen, ConfigError, DeadlineExceeded, NoAvailablePeers, TimedOut};
pub use palisade_core::retry::Retryable;
