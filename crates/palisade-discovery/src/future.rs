//! The balancer's response future, its in-flight guard, and the per-peer
//! counters they feed.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use palisade_body::{BodyEnd, BodyLimits, Settle, TrackResponse};
use palisade_core::BoxError;
use palisade_core::classify::{Outcome, Verdict};
use palisade_core::error::{NoAvailablePeers, PolledAfterCompletion};
use palisade_core::event::LayerName;
use palisade_core::peer::PeerId;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::load::{Ewma, LoadMetric};
use crate::tag::TagPeer;

/// An error and its whole cause chain, `outer: cause: root cause`, leaving
/// out a cause whose text the message already carries.
pub(crate) fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// The latest failure of a call to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LastError {
    pub(crate) message: String,
    pub(crate) at: Instant,
}

/// Counters of one peer, shared with the in-flight guards of its calls.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) successes: AtomicU64,
    pub(crate) failures: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// Set when the load metric is peak-EWMA.
    pub(crate) ewma: Option<Ewma>,
}

impl PeerStats {
    pub(crate) fn new(metric: LoadMetric) -> Self {
        Self {
            ewma: match metric {
                LoadMetric::PendingRequests => None,
                LoadMetric::PeakEwma { default_rtt, decay } => Some(Ewma::new(default_rtt, decay)),
            },
            ..Self::default()
        }
    }

    /// Records `message` as the latest failure: every failure replaces the
    /// one before, whatever its form, so the report is never stale.
    fn record_failure(&self, message: String) {
        *self.last_error.lock() = Some(LastError {
            message,
            at: Instant::now(),
        });
    }

    /// Records an error with its whole cause chain.
    pub(crate) fn record_error(&self, error: &(dyn Error + 'static)) {
        self.record_failure(error_chain(error));
    }

    pub(crate) fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().clone()
    }
}

/// Counts one call in flight on one peer, from `call` until the response (and
/// for http, its body) has ended, been dropped or failed.
///
/// This is the balancer's load signal ("pending requests"). It is a
/// [`Settle`] guard: `palisade_body::track` settles it with the call's
/// outcome (counted in the peer's health report) and its `Drop` releases the
/// in-flight count on every path, cancellation and panic included.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<PeerStats>,
    /// When the call started, with the peak-EWMA load metric, until the
    /// response head arrived.
    started: Option<Instant>,
    /// Whether the failure was already recorded with its own description
    /// (an error, a failed response head).
    described: bool,
}

impl InFlight {
    pub(crate) fn new(stats: Arc<PeerStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = stats.ewma.as_ref().map(|_| Instant::now());
        Self {
            stats,
            started,
            described: false,
        }
    }

    /// The peer answered (a response head or an error): the peak-EWMA
    /// sample is the time to this answer, not to the end of the body, so
    /// that a peer serving long streams does not look slow.
    fn answered(&mut self) {
        if let (Some(ewma), Some(started)) = (&self.stats.ewma, self.started.take()) {
            let now = Instant::now();
            ewma.observe(now.saturating_duration_since(started), now);
        }
    }

    fn record_error(&mut self, error: &(dyn Error + 'static)) {
        self.stats.record_error(error);
        self.described = true;
    }

    fn record_failed_response(&mut self, description: String) {
        self.stats.record_failure(description);
        self.described = true;
    }
}

impl Settle for InFlight {
    fn settle(self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failure => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if !self.described {
                    // Judged at the end of the stream (a gRPC status in the
                    // trailers, a body error): the body tracker says only
                    // that it failed.
                    self.stats
                        .record_failure("the response failed at the end of its stream".to_owned());
                }
            }
            Outcome::Ignored => {}
        }
        // Drop releases the in-flight count.
    }

    /// A verdict that waited for the end of the stream: a failure is
    /// described by what ended it, the gRPC status of the trailers (code and
    /// message) or the body's error with its cause chain, so that the
    /// health report's `last_error` is this failure, not an older one.
    fn settle_at_end(mut self, outcome: Outcome, end: BodyEnd<'_>) {
        if outcome == Outcome::Failure && !self.described {
            match end {
                BodyEnd::Eos(Some(trailers)) => {
                    if let Some(status) = crate::tag::describe_grpc(trailers) {
                        self.record_failed_response(format!("{status} (in the trailers)"));
                    }
                }
                BodyEnd::Error(error) => self.record_error(error),
                BodyEnd::Eos(None) | BodyEnd::Dropped => {}
            }
        }
        self.settle(outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`PeerDiscovery`](crate::PeerDiscovery): the
    /// chosen peer's future, or the [`NoAvailablePeers`] error decided in `call`.
    pub struct ResponseFuture<F, P> {
        #[pin]
        state: State<F, P>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, P> {
        Called {
            #[pin]
            future: F,
            guard: Option<InFlight>,
            protocol: P,
            // The chosen peer, when the request carried an attempt record.
            peer: Option<PeerId>,
        },
        Failed {
            error: Option<NoAvailablePeers>,
        },
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(crate) fn called(future: F, guard: InFlight, protocol: P, peer: Option<PeerId>) -> Self {
        Self {
            state: State::Called {
                future,
                guard: Some(guard),
                protocol,
                peer,
            },
        }
    }

    pub(crate) fn failed(error: NoAvailablePeers) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

fn polled_after_completion() -> BoxError {
    PolledAfterCompletion::new(LayerName::Discovery).into()
}

impl<F, P, R, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    P: TrackResponse<R, E, InFlight> + TagPeer<R>,
{
    type Output = Result<P::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                guard,
                protocol,
                peer,
            } => {
                // Completed already: the inner future is not polled again
                // (many panic when they are), the caller gets the typed error.
                if guard.is_none() {
                    return Poll::Ready(Err(polled_after_completion()));
                }
                let result = ready!(future.poll(cx));
                let Some(mut guard) = guard.take() else {
                    return Poll::Ready(Err(polled_after_completion()));
                };
                guard.answered();
                Poll::Ready(match result {
                    Ok(mut response) => {
                        if let Some(peer) = peer.take() {
                            protocol.tag_peer(&mut response, &peer);
                        }
                        let verdict = protocol.classify_response(&response);
                        if matches!(verdict, Verdict::Now(Outcome::Failure)) {
                            guard.record_failed_response(
                                protocol
                                    .describe_failure(&response)
                                    .unwrap_or_else(|| "failed response".to_owned()),
                            );
                        }
                        Ok(protocol.track_response(response, verdict, guard, BodyLimits::NONE))
                    }
                    Err(error) => {
                        let outcome = protocol.classify_error(&error);
                        let error: BoxError = error.into();
                        if outcome == Outcome::Failure {
                            guard.record_error(&*error);
                        }
                        guard.settle(outcome);
                        Err(error)
                    }
                })
            }
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(error) => error.into(),
                None => polled_after_completion(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<dyn Error + Send + Sync>>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_whole_cause_chain_is_kept_without_repeats() {
        let root = Wrapped("Connection refused (os error 111)", None);
        let connect = Wrapped(
            "tcp connect error: Connection refused (os error 111)",
            Some(Box::new(root)),
        );
        let transport = Wrapped("transport error", Some(Box::new(connect)));
        assert_eq!(
            error_chain(&transport),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }
}
