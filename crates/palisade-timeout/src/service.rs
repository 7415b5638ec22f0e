//! [`Timeout`]: the service made by [`TimeoutLayer`](crate::TimeoutLayer).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::classify::Classify;
use palisade_core::error::{BoxError, TimeoutKind};
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::protocol::Inspect;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{NoBodyLimits, TrackBody};
use crate::config::Config;
use crate::future::{Limit, ResponseFuture, SIMULTANEOUS, Wrote};
use palisade_core::context::current_deadline;
use palisade_core::grpc_timeout;

/// Applies a timeout and the call's deadline to the calls of `S`. Made by
/// [`TimeoutLayer`](crate::TimeoutLayer).
///
/// `poll_ready` is the inner service's: this layer reserves nothing and never
/// fails readiness itself. A call refused because its deadline had already
/// passed is answered by the response future with
/// [`DeadlineExceeded`](crate::DeadlineExceeded) without calling the inner
/// service; whatever the inner service reserved in its `poll_ready` stays
/// reserved for the next call (or is released when the service is dropped),
/// as tower's readiness contract has it. Clones share the layer's
/// configuration.
///
/// `L` says whether the layer bounds response bodies: with
/// [`NoBodyLimits`] (the default) the response is the inner service's, as
/// it came; with [`BodyLimited`](crate::BodyLimited) its body is wrapped.
pub struct Timeout<S, P, L = NoBodyLimits> {
    inner: S,
    config: Arc<Config>,
    protocol: P,
    body: L,
}

impl<S, P, L> Timeout<S, P, L> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>, protocol: P, body: L) -> Self {
        Self {
            inner,
            config,
            protocol,
            body,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, L: Copy> Clone for Timeout<S, P, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
            protocol: self.protocol.clone(),
            body: self.body,
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug, L: fmt::Debug> fmt::Debug for Timeout<S, P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("protocol", &self.protocol)
            .field("body", &self.body)
            .finish()
    }
}

impl<S, P, L, Req> Service<Req> for Timeout<S, P, L>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Inspect<Req> + Classify<S::Response, S::Error> + Clone,
    L: TrackBody<P, S::Response, S::Error>,
{
    type Response = L::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P, L>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Req) -> Self::Future {
        let config = &*self.config;
        // One look into the extensions for the call's options.
        let (mut has_options, per_call, deadline) = match self.protocol.call_options(&request) {
            Some(options) => (true, options.timeout(), options.deadline()),
            None => (false, None, None),
        };
        // A per-call timeout bounds each attempt: a total layer ignores it
        // (the call's deadline is its overall bound), see the crate docs.
        let per_call = per_call.filter(|_| config.kind != TimeoutKind::Total);
        // Per-call option, else the route's override, else the layer's timeout.
        let limit = match per_call {
            Some(timeout) => (!timeout.is_zero()).then_some(timeout),
            None => config.limit_for(|| self.protocol.route(&request)),
        };
        // The deadline of the request being handled bounds the call too (a
        // child never outlives its parent); when it is the tighter one it is
        // written into the call's options so that lower layers see it.
        let deadline = match current_deadline() {
            Some(inherited) if deadline.is_none_or(|own| inherited < own) => {
                if let Some(extensions) = self.protocol.extensions_mut(&mut request) {
                    extensions.call_options_mut().set_deadline(inherited);
                    has_options = true;
                }
                Some(inherited)
            }
            _ => deadline,
        };

        // When the call must end, and which limit that is.
        let (at, limit) = match deadline {
            None => match limit {
                None => (None, Limit::None),
                Some(timeout) => (
                    Some(palisade_core::time::after(Instant::now(), timeout)),
                    Limit::Timeout(config.kind, timeout),
                ),
            },
            Some(deadline) => {
                let now = Instant::now();
                let remaining = deadline.instant().saturating_duration_since(now);
                if remaining.is_zero() {
                    return self.reject();
                }
                match limit {
                    Some(timeout) if timeout < remaining => (Some(now + timeout), Limit::Timeout(config.kind, timeout)),
                    _ => (Some(deadline.instant()), Limit::Deadline(remaining)),
                }
            }
        };

        let mut wrote = Wrote::default();
        // This layer's own limit is a deadline for everything below it (a
        // per-attempt layer under a total one, retry's deadline checks):
        // write it into the call's options, where the earlier one is kept.
        // A per-attempt layer usually has only the connection below it, so it
        // writes only into options that already exist: that costs no allocation.
        let worth_writing = config.kind != TimeoutKind::Attempt || has_options;
        if let (Limit::Timeout(..), Some(at), true) = (limit, at, worth_writing)
            && let Some(extensions) = self.protocol.extensions_mut(&mut request)
        {
            extensions.call_options_mut().set_deadline(Deadline::at(at));
            wrote.deadline = true;
        }
        if config.propagates()
            && let Some(left) = limit.duration()
        {
            wrote.grpc_timeout = self.propagate(&mut request, left);
        }

        ResponseFuture::new(
            self.inner.call(request),
            at,
            limit,
            wrote,
            self.protocol.clone(),
            self.body,
            config.listeners.clone(),
        )
    }
}

impl<S, P, L: Copy> Timeout<S, P, L> {
    /// Answers a call whose deadline has already passed, without calling the inner service.
    #[cold]
    fn reject<F>(&self) -> ResponseFuture<F, P, L>
    where
        P: Clone,
    {
        self.config.listeners.emit(&Event::new(
            LayerName::Timeout,
            EventKind::Rejected {
                reason: "deadline exceeded before send",
            },
        ));
        #[cfg(feature = "metrics")]
        metrics::counter!("palisade_timeout_deadline_exceeded_total", "sent" => "false").increment(1);
        ResponseFuture::rejected(self.protocol.clone(), self.body)
    }

    /// Writes the time left on the outgoing request; whether `grpc-timeout`
    /// was written (a shorter one already there is kept).
    fn propagate<Req>(&self, request: &mut Req, left: Duration) -> bool
    where
        P: Inspect<Req>,
    {
        let Some(headers) = self.protocol.headers_mut(request) else {
            return false;
        };
        let mut wrote = false;
        if self.config.grpc_timeout {
            // Keeps a shorter timeout that the caller already set (tonic's
            // `Request::set_timeout`). One that says the same as this layer's
            // limit (a retry above wrote the same deadline) is this layer's too.
            wrote = grpc_timeout::write_shorter(headers, left)
                || headers
                    .get(&grpc_timeout::GRPC_TIMEOUT_HEADER)
                    .and_then(grpc_timeout::parse_header)
                    .is_some_and(|there| there + SIMULTANEOUS >= left);
        }
        if let Some(name) = &self.config.header {
            headers.insert(name.clone(), grpc_timeout::format_millis(left));
        }
        wrote
    }
}
