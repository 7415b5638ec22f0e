//! The errors this crate returns: the core kinds, re-exported, and the
//! registry's own.

pub use palisade_core::BoxError;
pub use palisade_core::error::{ConfigError, NoAvailablePeers};

#[cfg(feature = "dns")]
pub use crate::registry::dns::NoSuchName;
#[cfg(feature = "etcd")]
pub use crate::registry::etcd::DeregisterFailed;
pub use crate::registry::{InvalidInstance, Unreachable, Unsupported};
