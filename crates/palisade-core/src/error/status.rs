//! [`StatusSource`]: the `tonic::Status` a Palisade error offers tonic as its `source()`.

use std::error::Error;
use std::fmt;

use crate::protocol::GrpcCode;

/// The `tonic::Status` an error hands to tonic through
/// [`Error::source`], so that a tonic caller sees the gRPC code it expects.
///
/// tonic's `Status::from_error` walks an error's source chain for a
/// `Status`, copies its code and message, and keeps the whole error as the
/// new `Status`'s own `source()`. Each Palisade error kind holds one of these
/// and returns it from `source()`, so a `CircuitOpen` reaches a tonic client
/// as `UNAVAILABLE` with the breaker's message, and
/// `status.source()` still downcasts to `CircuitOpen`.
///
/// The `Status` is built the first time `source()` asks for it and then kept
/// (a `OnceLock`), not when the error is made: an error that never reaches
/// tonic (a `CircuitOpen` the retry layer retries, a `NoAvailablePeers` a
/// fallback answers) costs no allocation for it. Without feature `tonic` the
/// value is empty, zero-sized, and [`get`](Self::get) returns `None`.
///
/// It is part of an error's identity only through the error's other fields:
/// clones start empty, and every two values compare equal.
#[derive(Default)]
pub struct StatusSource {
    #[cfg(feature = "tonic")]
    status: std::sync::OnceLock<tonic::Status>,
}

impl StatusSource {
    /// An empty source; the `Status` is built on first use.
    pub const fn new() -> Self {
        Self {
            #[cfg(feature = "tonic")]
            status: std::sync::OnceLock::new(),
        }
    }

    /// The `tonic::Status` of `code` with `message` (built on the first call,
    /// the same value after), as an error to return from `source()`; `None`
    /// without feature `tonic`.
    #[inline]
    pub fn get(&self, code: GrpcCode, message: impl FnOnce() -> String) -> Option<&(dyn Error + 'static)> {
        #[cfg(feature = "tonic")]
        {
            let status = self.status.get_or_init(|| tonic::Status::new(code.into(), message()));
            Some(status)
        }
        #[cfg(not(feature = "tonic"))]
        {
            let _ = (code, message);
            None
        }
    }
}

impl Clone for StatusSource {
    /// An empty source: the clone builds its own `Status` if asked.
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl PartialEq for StatusSource {
    /// Always equal: the `Status` only restates the error's other fields.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StatusSource {}

impl fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusSource")
    }
}
