//! The balancer's response future and its in-flight guard.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use palisade_body::{BodyLimits, Settle, TrackResponse};
use palisade_core::BoxError;
use palisade_core::classify::Outcome;
use palisade_core::error::NoAvailablePeers;
use palisade_core::peer::PeerId;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::state::PeerStats;
use crate::tag::TagPeer;

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
    /// When the call started, with the peak-EWMA load metric.
    started: Option<Instant>,
}

impl InFlight {
    pub(crate) fn new(stats: Arc<PeerStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = stats.ewma.as_ref().map(|_| Instant::now());
        Self { stats, started }
    }

    fn record_error(&self, error: &BoxError) {
        *self.stats.last_error.lock() = Some(error.to_string());
    }
}

impl Settle for InFlight {
    fn settle(self, outcome: Outcome) {
        if let (Some(ewma), Some(started)) = (&self.stats.ewma, self.started) {
            let now = Instant::now();
            ewma.observe(now.saturating_duration_since(started), now);
        }
        match outcome {
            Outcome::Success => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failure => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Ignored => {}
        }
        // Drop releases the in-flight count.
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

/// Returned if a [`ResponseFuture`] is polled again after it completed.
#[derive(Debug)]
struct PolledAfterCompletion;

impl std::fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("discovery response future polled after completion")
    }
}

impl std::error::Error for PolledAfterCompletion {}

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
                let result = ready!(future.poll(cx));
                let Some(guard) = guard.take() else {
                    return Poll::Ready(Err(PolledAfterCompletion.into()));
                };
                Poll::Ready(match result {
                    Ok(mut response) => {
                        if let Some(peer) = peer.take() {
                            protocol.tag_peer(&mut response, &peer);
                        }
                        let verdict = protocol.classify_response(&response);
                        Ok(protocol.track_response(response, verdict, guard, BodyLimits::NONE))
                    }
                    Err(error) => {
                        let outcome = protocol.classify_error(&error);
                        let error: BoxError = error.into();
                        guard.record_error(&error);
                        guard.settle(outcome);
                        Err(error)
                    }
                })
            }
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(error) => error.into(),
                None => PolledAfterCompletion.into(),
            })),
        }
    }
}
