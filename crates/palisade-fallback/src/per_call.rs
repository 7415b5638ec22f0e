//! A fallback chosen for one call.
//!
//! A caller that knows a better answer for one call than the layer's puts a
//! [`CallFallback<Res>`] in the request's extensions: on an `http::Request`
//! with `extensions_mut().insert(..)`, on a `tonic::Request` the same way
//! (tonic moves its extensions into the http request it sends). When the
//! layer's predicate accepts the failure, the call's fallback answers and the
//! layer's source is not used.
//!
//! `Res` is the response type of the service *under* the fallback layer (for a
//! tonic `Channel`, `http::Response<tonic::body::Body>`). A request of a type
//! without extensions (the [`Plain`](palisade_core::protocol::Plain)
//! protocol) cannot carry one; the layer reads extensions only when its
//! protocol is [`Http`](palisade_core::protocol::Http) or
//! [`Grpc`](palisade_core::protocol::Grpc) (or any [`Inspect`](palisade_core::protocol::Inspect)
//! that finds them). The per-call fallback is a synchronous function and
//! cannot fail.

use std::fmt;
use std::sync::Arc;

use palisade_core::BoxError;

/// A fallback for one call, carried in its request's extensions. See the [module docs](self).
///
/// ```
/// use palisade_fallback::CallFallback;
///
/// let mut request = http::Request::new(());
/// request
///     .extensions_mut()
///     .insert(CallFallback::<http::Response<String>>::new(|_err| http::Response::new("cached".to_owned())));
/// ```
pub struct CallFallback<Res> {
    f: Arc<dyn Fn(&BoxError) -> Res + Send + Sync>,
}

impl<Res> CallFallback<Res> {
    /// Answers with `f(&error)`.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(&BoxError) -> Res + Send + Sync + 'static,
    {
        Self { f: Arc::new(f) }
    }

    /// Answers with a clone of `value`.
    pub fn value(value: Res) -> Self
    where
        Res: Clone + Send + Sync + 'static,
    {
        Self::new(move |_| value.clone())
    }

    /// The answer to a call that failed with `error`.
    pub fn answer(&self, error: &BoxError) -> Res {
        (self.f)(error)
    }
}

impl<Res> Clone for CallFallback<Res> {
    fn clone(&self) -> Self {
        Self { f: Arc::clone(&self.f) }
    }
}

impl<Res> fmt::Debug for CallFallback<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallFallback(..)")
    }
}
