//! The service later attempts go through: one clone of the inner service per
//! layer, cloned again only when a call retries.
//!
//! tower's `Retry` takes the ready service with each call and leaves a clone
//! in its place, so every call pays a clone of the whole inner stack (a tonic
//! `Channel` clone allocates; a clone of our bulkhead and balancer counts two
//! references up and down), though almost no call retries. Here a call goes
//! through the ready inner service itself, as every other layer's does, and
//! takes a reference to the layer's [`Template`]: a clone of the inner
//! service made at the first call that may retry. A retry makes its own
//! service from it, polls it ready and calls it.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// A clone of the inner service, made once, shared by the layer's clones
/// and the futures of the calls that may retry.
pub(crate) struct Template<S> {
    // A `Mutex` makes the template `Sync` for any `Send` service (a tonic
    // `Channel` is not `Sync`); it is locked only while a retry clones it.
    // With it, `S`'s `clone`, so that the response future needs no `Clone`
    // bound of its own.
    service: OnceLock<(Mutex<S>, fn(&S) -> S)>,
}

impl<S> Template<S> {
    /// A template that takes its service at the first call that may retry.
    pub(crate) fn empty() -> Self {
        Self {
            service: OnceLock::new(),
        }
    }
}

/// Makes sure `template` holds a clone of `service` (one atomic load once it
/// does) and hands out a reference to it.
#[inline]
pub(crate) fn share<S: Clone>(template: &Arc<Template<S>>, service: &S) -> Arc<Template<S>> {
    template
        .service
        .get_or_init(|| (Mutex::new(service.clone()), <S as Clone>::clone));
    Arc::clone(template)
}

/// The service a later attempt of one call goes through.
pub(crate) enum Later<S> {
    /// The call makes no later attempt.
    None,
    /// Not made yet: the first retry clones the template.
    Template(Arc<Template<S>>),
    /// Made at the first retry, kept for the next ones.
    Made(S),
}

impl<S> Later<S> {
    /// The service for the next attempt, made from the template the first
    /// time.
    pub(crate) fn service(&mut self) -> Option<&mut S> {
        if let Self::Template(template) = self {
            let made = template.service.get().map(|(service, clone)| clone(&service.lock()));
            *self = made.map_or(Self::None, Self::Made);
        }
        match self {
            Self::Made(service) => Some(service),
            Self::None | Self::Template(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Counted(Arc<AtomicUsize>);

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.0.fetch_add(1, Ordering::SeqCst);
            Self(self.0.clone())
        }
    }

    #[test]
    fn the_inner_service_is_cloned_once_per_layer_and_once_per_retrying_call() {
        let clones = Arc::new(AtomicUsize::new(0));
        let inner = Counted(clones.clone());
        let template = Arc::new(Template::empty());
        let calls: Vec<_> = (0..5).map(|_| Later::Template(share(&template, &inner))).collect();
        assert_eq!(clones.load(Ordering::SeqCst), 1, "five calls, one clone");
        let mut retrying = calls.into_iter().next().unwrap_or(Later::None);
        assert!(retrying.service().is_some());
        assert!(
            retrying.service().is_some(),
            "the second retry reuses the first's service"
        );
        assert_eq!(clones.load(Ordering::SeqCst), 2);
        assert!(Later::<Counted>::None.service().is_none());
    }
}
