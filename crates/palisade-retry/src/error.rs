//! Errors.
//!
//! The retry layer makes almost no error of its own: a call returns the last
//! attempt's error untouched, boxed as [`BoxError`] (downcast it), or the
//! inner service's `poll_ready` error. Its own are two: a call whose deadline
//! had already passed before its first attempt fails with
//! [`DeadlineExceeded::before_send`] (the inner service is not called), and
//! a response future polled again after its output fails with
//! [`PolledAfterCompletion`]. The kinds it looks at are re-exported here.

pub use crate::replay::BodyNotReplayable;
pub use palisade_core::BoxError;
pub use palisade_core::error::{
    CircuitOpen, ConfigError, DeadlineExceeded, NoAvailablePeers, PolledAfterCompletion, TimedOut,
};
pub use palisade_core::retry::Retryable;
