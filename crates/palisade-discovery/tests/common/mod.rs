//! Test doubles shared by this crate's tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use palisade_core::peer::{Availability, CheckAvailability, FleetMembership, Memberships, Unavailable};
use palisade_discovery::PeerWeight;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tower::discover::Change;
use tower_service::Service;

/// Controls of one fake peer.
#[derive(Debug)]
pub struct Ctl {
    pub name: String,
    pub availability: Mutex<Availability>,
    pub ready: AtomicBool,
    pub fail_ready: AtomicBool,
    pub calls: AtomicUsize,
    /// Calls refused because the peer was unavailable (as a real breaker does).
    pub refused: AtomicUsize,
    pub weight: u32,
    /// When set, calls wait for a release instead of answering at once.
    pub hold: AtomicBool,
    pub held: Mutex<Vec<oneshot::Sender<()>>>,
    pub waker: Mutex<Option<Waker>>,
    /// Whether it reports its availability changes to the balancers it
    /// joined, as a breaker does (the default); when not, the balancer
    /// follows it lazily.
    pub notifies: AtomicBool,
    pub fleet: Memberships,
    /// How many early probes and resets the balancer asked for.
    pub probe_requests: AtomicUsize,
    pub resets: AtomicUsize,
    /// Whether it refuses early probes and resets (a breaker forced open).
    pub forced: AtomicBool,
    /// How many times the balancer asked its availability.
    pub asked: AtomicUsize,
}

impl Ctl {
    pub fn new(name: &str) -> Arc<Ctl> {
        Self::weighted(name, 1)
    }

    pub fn weighted(name: &str, weight: u32) -> Arc<Ctl> {
        Arc::new(Ctl {
            name: name.to_owned(),
            availability: Mutex::new(Availability::Available),
            ready: AtomicBool::new(true),
            fail_ready: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            weight,
            hold: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            waker: Mutex::new(None),
            notifies: AtomicBool::new(true),
            fleet: Memberships::new(),
            probe_requests: AtomicUsize::new(0),
            resets: AtomicUsize::new(0),
            forced: AtomicBool::new(false),
            asked: AtomicUsize::new(0),
        })
    }

    /// A peer that never reports (followed lazily by the balancer).
    pub fn silent(name: &str) -> Arc<Ctl> {
        let ctl = Self::new(name);
        ctl.notifies.store(false, Ordering::SeqCst);
        ctl
    }

    /// Sets the availability and, like a breaker, reports it.
    pub fn set(&self, a: Availability) {
        *self.availability.lock() = a;
        if self.notifies.load(Ordering::SeqCst) {
            self.fleet.notify(a);
        }
    }

    /// Sets the availability without reporting it.
    pub fn set_quietly(&self, a: Availability) {
        *self.availability.lock() = a;
    }

    pub fn open(&self, retry_in: Duration) {
        self.set(Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in,
        });
    }

    /// Like a breaker inside a balancer tripping: asks the fleet whether it
    /// may leave rotation; open when granted, degraded (kept in rotation)
    /// when the ejection cap refuses. Returns whether it was granted.
    pub fn trip(&self, retry_in: Duration) -> bool {
        if self.fleet.request_ejection() {
            self.open(retry_in);
            true
        } else {
            self.set(Availability::Degraded);
            false
        }
    }

    /// Like a breaker closing: gives its ejection grant back (if any) and is
    /// available.
    pub fn close(&self) {
        self.fleet.release_ejection();
        self.set(Availability::Available);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        if ready && let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    pub fn release_all(&self) {
        for tx in self.held.lock().drain(..) {
            let _ = tx.send(());
        }
    }
}

/// A fake per-peer service answering its name.
#[derive(Clone, Debug)]
pub struct Peer(pub Arc<Ctl>);

impl CheckAvailability for Peer {
    fn availability(&self) -> Availability {
        self.0.asked.fetch_add(1, Ordering::SeqCst);
        *self.0.availability.lock()
    }

    fn join_fleet(&self, membership: FleetMembership) -> bool {
        if !self.0.notifies.load(Ordering::SeqCst) {
            return false;
        }
        self.0.fleet.join(membership);
        true
    }

    /// Like a breaker: an open peer goes to probe at once, unless forced.
    fn request_probe(&self) -> bool {
        self.0.probe_requests.fetch_add(1, Ordering::SeqCst);
        if self.0.forced.load(Ordering::SeqCst) {
            return false;
        }
        let now = *self.0.availability.lock();
        match now {
            Availability::Unavailable {
                reason: Unavailable::Open,
                ..
            } => {
                self.0.set(Availability::Probe);
                true
            }
            other => other.is_available(),
        }
    }

    /// Like a breaker: an open or probing peer is reset to available, unless forced.
    fn reset_open(&self) -> bool {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
        if self.0.forced.load(Ordering::SeqCst) {
            return false;
        }
        self.0.set(Availability::Available);
        true
    }
}

impl PeerWeight for Peer {
    fn weight(&self) -> u32 {
        self.0.weight
    }
}

#[derive(Debug)]
pub struct PeerDown;
impl std::fmt::Display for PeerDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("peer down")
    }
}
impl std::error::Error for PeerDown {}

pub type PeerFuture = Pin<Box<dyn Future<Output = Result<String, PeerDown>> + Send>>;

impl<R> Service<R> for Peer {
    type Response = String;
    type Error = PeerDown;
    type Future = PeerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PeerDown>> {
        if self.0.fail_ready.load(Ordering::SeqCst) {
            return Poll::Ready(Err(PeerDown));
        }
        if self.0.ready.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            *self.0.waker.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, _: R) -> PeerFuture {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if matches!(*self.0.availability.lock(), Availability::Unavailable { .. }) {
            // Like a real breaker: an open peer refuses at once.
            self.0.refused.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(PeerDown) });
        }
        let name = self.0.name.clone();
        if self.0.hold.load(Ordering::SeqCst) {
            let (tx, rx) = oneshot::channel();
            self.0.held.lock().push(tx);
            Box::pin(async move {
                let _ = rx.await;
                Ok(name)
            })
        } else {
            Box::pin(async move { Ok(name) })
        }
    }
}

/// A discover fed by a channel.
pub struct ChannelDiscover<S>(pub mpsc::UnboundedReceiver<Change<String, S>>);

impl<S> Stream for ChannelDiscover<S> {
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

pub fn channel_discover<S>() -> (mpsc::UnboundedSender<Change<String, S>>, ChannelDiscover<S>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelDiscover(rx))
}

/// Polls a future once with a no-op waker.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

/// Drives `poll_ready` (always ready) then `call`, and polls the response once.
pub fn call_now<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
    S::Future: Unpin,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("balancer not ready"),
    }
    let mut fut = svc.call(req);
    match poll_once(&mut fut) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("response pending"),
    }
}

/// A protocol for tests: http requests (so the attempt record travels in
/// their extensions), any response, settled at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpRequests;

impl<B> palisade_core::protocol::Inspect<http::Request<B>> for HttpRequests {
    fn extensions<'r>(&self, request: &'r http::Request<B>) -> Option<&'r http::Extensions> {
        Some(request.extensions())
    }

    fn extensions_mut<'r>(&self, request: &'r mut http::Request<B>) -> Option<&'r mut http::Extensions> {
        Some(request.extensions_mut())
    }
}

// A protocol, so a builder speaking it has `build()`; it is not gRPC.
impl palisade_core::protocol::IsGrpc for HttpRequests {}

impl<R, E> palisade_core::classify::Classify<R, E> for HttpRequests {
    type Eos = palisade_core::classify::NeverAtEos;

    fn classify_response(&self, _: &R) -> palisade_core::classify::Verdict<Self::Eos> {
        palisade_core::classify::Verdict::Now(palisade_core::classify::Outcome::Success)
    }

    fn classify_error(&self, _: &E) -> palisade_core::classify::Outcome {
        palisade_core::classify::Outcome::Failure
    }
}

impl<R, E, S: palisade_body::Settle> palisade_body::TrackResponse<R, E, S> for HttpRequests {
    type Response = R;

    fn track_response(
        &self,
        response: R,
        verdict: palisade_core::classify::Verdict<Self::Eos>,
        settle: S,
        _: palisade_body::BodyLimits,
    ) -> R {
        let palisade_core::classify::Verdict::Now(outcome) = verdict;
        settle.settle(outcome);
        response
    }
}

impl<R> palisade_discovery::TagPeer<R> for HttpRequests {}
