//! Support for the `stacked_*` tests: several layers as a user stacks them,
//! over real tonic and hyper servers on loopback, with tokio's clock paused
//! and moved only by the test.
//!
//! Paused time and real sockets need one precaution. When a paused runtime
//! has nothing to run it jumps its clock to the next timer, even while a
//! socket is about to deliver data: a call waiting for a loopback answer
//! with a 50 ms timeout armed would see the timeout fire before the server
//! even read the request. [`ManualClock`] stops that (a blocking task holds
//! tokio's auto-advance off while it runs), so the clock moves only by
//! `tokio::time::advance` and every timer fires exactly when the test says.
//! The test waits for states (a server's [`Stats`](palisade_testkit::Stats),
//! a layer's event) with [`within`], which bounds the wait in real time so
//! that a broken layer fails the test instead of hanging it.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade_core::error::BoxError;
use palisade_core::event::{Event, EventKind, Listener};
use tokio::sync::Notify;
use tower::Service;

/// How long a wait may take in real time before the test fails.
const REAL_TIME_LIMIT: Duration = Duration::from_secs(20);

/// Keeps tokio's paused clock from advancing on its own while it lives (see
/// the module docs). Make it at the start of a `start_paused` test.
pub struct ManualClock {
    _release: mpsc::Sender<()>,
}

impl ManualClock {
    /// Holds the clock until the value is dropped.
    pub fn hold() -> Self {
        let (release, held) = mpsc::channel::<()>();
        // tokio's test-util inhibits auto-advance while a blocking task runs.
        drop(tokio::task::spawn_blocking(move || {
            let _ = held.recv();
        }));
        Self { _release: release }
    }
}

/// Awaits `future`; fails the test if it has not finished after
/// [`REAL_TIME_LIMIT`] of real time (the paused clock cannot bound it).
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    let (done, wait) = mpsc::channel::<()>();
    // Ends when `done` is dropped (the future finished) or at the limit.
    let watchdog = tokio::task::spawn_blocking(move || {
        let _ = wait.recv_timeout(REAL_TIME_LIMIT);
    });
    tokio::select! {
        output = future => {
            drop(done);
            output
        }
        _ = watchdog => panic!("not done after {REAL_TIME_LIMIT:?} of real time: {what}"),
    }
}

/// Counts the retry layer's `Retry` events and wakes whoever waits for one.
#[derive(Debug, Default)]
pub struct RetryEvents {
    seen: std::sync::atomic::AtomicUsize,
    delays: parking_lot::Mutex<Vec<Duration>>,
    notify: Notify,
}

impl RetryEvents {
    /// A listener to register with `RetryLayerBuilder::listener`.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Retries decided so far.
    pub fn count(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The backoff of each retry decided so far, in order.
    pub fn delays(&self) -> Vec<Duration> {
        self.delays.lock().clone()
    }

    /// Waits until `n` retries were decided (bounded in real time).
    pub async fn wait_for(&self, n: usize) {
        within(&format!("{n} retries decided"), async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.count() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

impl Listener for RetryEvents {
    fn on_event(&self, event: &Event<'_>) {
        if let EventKind::Retry { delay, .. } = event.kind {
            self.delays.lock().push(delay);
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

/// Sends a request with any body through a client that takes `Full<Bytes>`
/// (the testkit's hyper clients): the body is collected first. Test glue only.
#[derive(Clone)]
pub struct Collect<S> {
    inner: S,
}

impl<S> Collect<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Collect<S>
where
    S: Service<http::Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service goes with the call (tower's pattern).
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(Into::into)?.to_bytes();
            ready
                .call(http::Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(Into::into)
        })
    }
}
