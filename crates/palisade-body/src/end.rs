//! How a body or stream ended, and the hook that hears it.

use std::error::Error;

use http::HeaderMap;

/// How a body (or stream) ended. Reported exactly once.
#[derive(Clone, Copy, Debug)]
pub enum BodyEnd<'a> {
    /// The body reached its end, with these trailers if it had any.
    Eos(Option<&'a HeaderMap>),
    /// The body failed with this error (including a time limit of the adapter).
    Error(&'a (dyn Error + 'static)),
    /// The body was dropped before its end.
    Dropped,
}

impl BodyEnd<'_> {
    /// A short lowercase name: `eos`, `error` or `dropped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BodyEnd::Eos(_) => "eos",
            BodyEnd::Error(_) => "error",
            BodyEnd::Dropped => "dropped",
        }
    }
}

/// Hears how a body ended. Called exactly once, then dropped, which releases
/// whatever guards it holds (a permit, a probe slot).
///
/// Implemented by closures `FnOnce(BodyEnd<'_>)`, by `()` (hear nothing: a
/// hook that only holds guards is a [`Guard`]), and by pairs, so that several
/// layers' hooks can ride on one body.
pub trait OnEnd: Send + 'static {
    /// The body ended so.
    fn on_end(self, end: BodyEnd<'_>);
}

impl<F> OnEnd for F
where
    F: FnOnce(BodyEnd<'_>) + Send + 'static,
{
    fn on_end(self, end: BodyEnd<'_>) {
        self(end)
    }
}

impl OnEnd for () {
    fn on_end(self, _: BodyEnd<'_>) {}
}

impl<A: OnEnd, B: OnEnd> OnEnd for (A, B) {
    fn on_end(self, end: BodyEnd<'_>) {
        self.0.on_end(end);
        self.1.on_end(end);
    }
}

/// A hook that holds a guard value until the body ends and then drops it.
#[derive(Debug)]
pub struct Guard<G>(pub G);

impl<G: Send + 'static> OnEnd for Guard<G> {
    fn on_end(self, _: BodyEnd<'_>) {
        drop(self.0);
    }
}
