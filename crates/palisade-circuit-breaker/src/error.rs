//! The errors the breaker returns, re-exported from `palisade-core` so that
//! other layers (retry, fallback) recognise them without naming this crate.

pub use palisade_core::error::{BoxError, CircuitOpen, ConfigError};
