//! [`Retry`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use palisade_core::context;
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::options::CallOptions;
use palisade_core::route::RouteTable;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::{CallPolicy, Config, RouteRetry, Settings, StateHandle};
use crate::future::{ResponseFuture, emit};
use crate::policy::{Predicate, RetryOn, RetryProtocol};
use crate::replay::{AttemptBody, KeepReplayBody};

/// Retries failed calls to `S`; made by [`RetryLayer`](crate::RetryLayer).
///
/// `S` must be `Clone`: as in `tower::retry`, a call takes the service that
/// was made ready and leaves a clone in its place, and the response future
/// drives the later attempts on it. A call that may not be retried (0 retries)
/// takes no clone. `P` and `R` must be `Clone`: each call takes a copy, as
/// `tower::retry` copies its policy.
///
/// The inner service receives the protocol's attempt type: `Req` itself for
/// [`Plain`](palisade_core::protocol::Plain), and
/// `http::Request<ReplayBody<B>>` for [`Http`](palisade_core::protocol::Http)
/// and [`Grpc`](palisade_core::protocol::Grpc), as the
/// [`AttemptBody`] `A` hands it on (by default unchanged; with
/// `TonicBody`,
/// `http::Request<tonic::body::Body>`, what a tonic `Channel` takes). The response is the inner
/// service's for `Plain`, and `http::Response<RetryBody<RB>>` for `Http` and
/// `Grpc` (see [`RetryBody`](crate::RetryBody): the inner body, passed
/// through).
///
/// The call's deadline is the earlier of its own
/// ([`CallOptions::deadline`](palisade_core::options::CallOptions::deadline))
/// and the one inherited from the request being handled
/// ([`palisade_core::context`]); a `grpc-timeout` the caller wrote on a gRPC
/// request bounds it too (later attempts then carry the time left, the first
/// one the header as written).
///
/// A call whose deadline has already passed fails with
/// [`DeadlineExceeded::before_send`](palisade_core::error::DeadlineExceeded::before_send)
/// without calling the inner service and without touching the retry budget;
/// whatever the inner service reserved in `poll_ready` stays reserved for the
/// next call, as tower's readiness contract has it.
pub struct Retry<S, P, R, A = KeepReplayBody> {
    inner: S,
    shared: Arc<Config<P, R>>,
    attempt_body: PhantomData<fn() -> A>,
}

impl<S, P, R, A> Retry<S, P, R, A> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Config<P, R>>) -> Self {
        Self {
            inner,
            shared,
            attempt_body: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P, R, A> Clone for Retry<S, P, R, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            attempt_body: PhantomData,
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug, R: fmt::Debug, A> fmt::Debug for Retry<S, P, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, P, R, A, Req> Service<Req> for Retry<S, P, R, A>
where
    P: RetryProtocol<Req> + RetryOn<<P as RetryProtocol<Req>>::View, S::Response> + Clone,
    R: Predicate<P, P::View, S::Response> + Clone,
    A: AttemptBody<P::Attempt>,
    S: Service<<A as AttemptBody<P::Attempt>>::Output> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = <P as RetryOn<P::View, S::Response>>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, P, R, Req, A>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &*self.shared;
        let settings = &shared.settings;
        let protocol = &shared.protocol;
        let options = protocol.call_options(&request);
        let route = if settings.routes.is_empty() {
            None
        } else {
            protocol
                .route(&request)
                .and_then(|r| route_settings(&settings.routes, r))
        };
        let retries = options
            .and_then(CallOptions::retries)
            .or_else(|| route.and_then(|r| r.retries))
            .unwrap_or(settings.retries)
            // A per-call option is not validated by a builder: clamp it to the
            // builder's maximum.
            .min(crate::config::MAX_RETRIES);
        // The call's deadline, else (or if earlier) the deadline of the
        // request being handled (a server-side deadline layer's task-local).
        let known = context::effective_deadline(options.and_then(CallOptions::deadline)).map(|d| d.instant());
        // A `grpc-timeout` the caller wrote (tonic's `set_timeout`) bounds the
        // later attempts too; the first one carries it as written.
        let deadline = match protocol.written_timeout(&request) {
            Some(written) => {
                let at = Instant::now().checked_add(written);
                match (known, at) {
                    (Some(known), Some(at)) => Some(known.min(at)),
                    (known, at) => known.or(at),
                }
            }
            None => known,
        };
        // The clock is read (and the event sent) before anything that needs
        // dropping is alive, so that a call that may unwind leaves nothing to
        // clean up on the path every call takes.
        let expired_at = match deadline {
            Some(at) if at <= Instant::now() => {
                expired(settings);
                Some(at)
            }
            _ => None,
        };
        let mut policy = CallPolicy {
            protocol: protocol.clone(),
            predicate: shared.predicate.clone(),
            backoff: route.and_then(|r| r.backoff).unwrap_or(settings.backoff),
            max_pushback: settings.max_pushback,
            state: StateHandle::default(),
        };
        if let Some(at) = expired_at {
            // Neither the inner service nor the budget is touched.
            return ResponseFuture::expired(policy, at);
        }
        if let Some(budget) = settings.state.budget() {
            budget.deposit();
        }
        let (mut attempt, kept) = protocol.first_attempt(request, settings.replay_cap, retries > 0);
        if let Some(at) = known {
            // The first attempt carries the time left now, as every later one will.
            protocol.before_send(&mut attempt, at);
        }
        if kept.is_some() {
            // Only a call that may retry holds the shared budget, throttle
            // and listeners (one reference count, none when the layer has
            // none of them).
            policy.state.0.clone_from(&settings.state.0);
            // tower's pattern: the ready service goes with the call, a clone stays.
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            let future = ready.call(A::attempt(attempt));
            return ResponseFuture::new(future, Some(ready), kept, policy, retries, deadline);
        }
        let future = self.inner.call(A::attempt(attempt));
        ResponseFuture::new(future, None, None, policy, 0, deadline)
    }
}

/// A call whose deadline passed before its first attempt: the event.
#[cold]
#[inline(never)]
fn expired(settings: &Settings) {
    emit(
        settings.state.listeners(),
        &Event::new(
            LayerName::Retry,
            EventKind::Rejected {
                reason: "deadline exceeded before the first attempt",
            },
        ),
    );
}

/// A route's overrides, out of line: only layers with routes look.
#[inline(never)]
fn route_settings<'r>(routes: &'r RouteTable<RouteRetry>, route: &str) -> Option<&'r RouteRetry> {
    routes.get(route)
}
