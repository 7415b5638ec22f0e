//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::BoxError;
use palisade_core::error::PolledAfterCompletion;
use palisade_core::event::LayerName;
use palisade_core::route::RouteIndex;
use pin_project_lite::pin_project;

use crate::error::FallbackFailed;
use crate::layer::FallbackLayer;
use crate::mark::{FallbackReason, FromFallback, Mark};
use crate::per_call::CallFallback;
use crate::policy::{ResponseRule, RouteFallback};
use crate::source::Source;

pin_project! {
    #[project = StateProj]
    enum State<F, SF, K, Res> {
        Inner {
            #[pin]
            future: F,
            kept: Option<K>,
            per_call: Option<CallFallback<Res>>,
            // The index of the call's route override, if it has one.
            route: Option<RouteIndex>,
        },
        Fallback {
            #[pin]
            future: SF,
            original: Option<BoxError>,
            reason: FallbackReason,
        },
        Done,
    }
}

pin_project! {
    /// The response future of [`Fallback`](crate::Fallback): the inner call,
    /// then, if it failed and the predicate accepts the failure, the fallback.
    ///
    /// `F` is the inner future, `SF` the source's future, `K` the kept value,
    /// `Res` the inner response and `L` the layer. Polled again after it
    /// completed, it fails with [`PolledAfterCompletion`].
    pub struct ResponseFuture<F, SF, K, Res, L> {
        #[pin]
        state: State<F, SF, K, Res>,
        layer: L,
    }
}

impl<F, SF, K, Res, L> ResponseFuture<F, SF, K, Res, L> {
    pub(crate) fn new(
        future: F,
        kept: K,
        per_call: Option<CallFallback<Res>>,
        route: Option<RouteIndex>,
        layer: L,
    ) -> Self {
        Self {
            state: State::Inner {
                future,
                kept: Some(kept),
                per_call,
                route,
            },
            layer,
        }
    }
}

impl<F, SF, K, Res, L> fmt::Debug for ResponseFuture<F, SF, K, Res, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Fallback { .. } => "fallback",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<F, E, K, Res, Src, P, R, X, M> Future
    for ResponseFuture<F, <Src as Source<K, Res>>::Future, K, Res, FallbackLayer<Src, P, R, X, M>>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Src: Source<K, Res>,
    R: ResponseRule<Res, P>,
    M: Mark<Res>,
{
    type Output = Result<M::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &*this.layer.shared;
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner {
                    future,
                    kept,
                    per_call,
                    route,
                } => {
                    let result = ready!(future.poll(cx));
                    let route = route.and_then(|at| shared.routes.at(at));
                    let off = match route {
                        Some(rule) => matches!(rule, RouteFallback::Off),
                        None => shared.only_routes,
                    };
                    let error: BoxError = match result {
                        Ok(response) => {
                            if off || !shared.rule.is_failure(&response, &shared.protocol) {
                                this.state.set(State::Done);
                                return Poll::Ready(Ok(shared.mark.pass(response)));
                            }
                            shared.mark.describe_failure(&response).into()
                        }
                        Err(error) => {
                            let error = error.into();
                            let accepted = match route {
                                None => !shared.only_routes && shared.errors.accepts(&error),
                                Some(RouteFallback::Off) => false,
                                Some(RouteFallback::OnErrors(errors)) => errors.accepts(&error),
                            };
                            if !accepted {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                            error
                        }
                    };
                    let reason = FallbackReason::of(&*error);
                    shared.record(reason);
                    let kept = kept.take();
                    if let Some(per_call) = per_call.take() {
                        this.state.set(State::Done);
                        let response = per_call.answer(&error);
                        return Poll::Ready(Ok(shared
                            .mark
                            .fallback(response, FromFallback { reason, per_call: true })));
                    }
                    let Some(kept) = kept else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    };
                    let future = shared.source.fall_back(&error, kept);
                    this.state.set(State::Fallback {
                        future,
                        original: Some(error),
                        reason,
                    });
                }
                StateProj::Fallback {
                    future,
                    original,
                    reason,
                } => {
                    let result = ready!(future.poll(cx));
                    let reason = *reason;
                    let original = original.take();
                    this.state.set(State::Done);
                    return Poll::Ready(match (result, original) {
                        (Ok(response), _) => Ok(shared.mark.fallback(
                            response,
                            FromFallback {
                                reason,
                                per_call: false,
                            },
                        )),
                        (Err(fallback), Some(original)) => {
                            shared.record_failure(reason, &fallback);
                            Err(FallbackFailed::new(original, fallback).into())
                        }
                        (Err(fallback), None) => Err(fallback),
                    });
                }
                StateProj::Done => {
                    return Poll::Ready(Err(PolledAfterCompletion::new(LayerName::Fallback).into()));
                }
            }
        }
    }
}
