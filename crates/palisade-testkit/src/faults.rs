//! Faults a test switches on and off at run time.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::net::ConnCtx;

/// The faults of one server, switchable at run time from the test.
///
/// `C` is the status type the server answers with: [`tonic::Code`] for
/// [`EchoServer`](crate::EchoServer), [`http::StatusCode`] for
/// [`HttpServer`](crate::HttpServer).
///
/// Each request reads the faults when it reaches its handler and applies them
/// in this order: [latency](Faults::set_latency), [hang](Faults::set_hang),
/// [close the connection](Faults::set_close_connection),
/// [fail the next K requests](Faults::fail_next),
/// [fail a random share](Faults::set_failure_rate), [status](Faults::set_status),
/// then, for a response stream, the stream failure (`fail_stream_after`).
/// Without faults the server answers normally.
#[derive(Debug)]
pub struct Faults<C> {
    config: Mutex<Config<C>>,
    hang: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
struct Config<C> {
    status: Option<C>,
    fail_next: u32,
    fail_next_status: Option<C>,
    /// A share of requests to fail, drawn from a seeded generator.
    failure_rate: Option<(f64, C, fastrand::Rng)>,
    latency: Option<Duration>,
    close_connection: bool,
    close_next: u32,
    stream_fail: Option<(u32, Option<C>)>,
}

impl<C> Default for Config<C> {
    fn default() -> Self {
        Self {
            status: None,
            fail_next: 0,
            fail_next_status: None,
            failure_rate: None,
            latency: None,
            close_connection: false,
            close_next: 0,
            stream_fail: None,
        }
    }
}

/// What a request that got through the faults must still do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan<C> {
    /// Fail the response stream after this many messages, with this status.
    pub(crate) stream_fail: Option<(u32, Option<C>)>,
}

impl<C> Default for Faults<C> {
    fn default() -> Self {
        Self {
            config: Mutex::new(Config::default()),
            hang: watch::Sender::new(false),
        }
    }
}

impl<C: Copy> Faults<C> {
    /// Answers every request with `status` (`None`: answer normally).
    ///
    /// gRPC: the call fails with this code (message `"palisade-testkit
    /// fault"`). HTTP: the response has this status and a short text body.
    pub fn set_status(&self, status: Option<C>) {
        self.config.lock().status = status;
    }

    /// Answers the next `k` requests with `status`, then recovers. Takes
    /// precedence over [`Faults::set_status`]; replaces an earlier
    /// `fail_next` that has not run out.
    pub fn fail_next(&self, k: u32, status: C) {
        let mut config = self.config.lock();
        config.fail_next = k;
        config.fail_next_status = Some(status);
    }

    /// Fails each request with `status` with probability `rate` (clamped to
    /// `0..=1`), drawn from a generator seeded with `seed`, so that a run is
    /// repeatable: the same seed fails the same requests, in arrival order.
    /// `rate` 0 switches it off. A brownout, as opposed to an outage.
    pub fn set_failure_rate(&self, rate: f64, status: C, seed: u64) {
        let rate = rate.clamp(0.0, 1.0);
        self.config.lock().failure_rate = (rate > 0.0).then(|| (rate, status, fastrand::Rng::with_seed(seed)));
    }

    /// How many of the failures asked with [`Faults::fail_next`] are left.
    pub fn remaining_failures(&self) -> u32 {
        self.config.lock().fail_next
    }

    /// Delays every answer by `latency` (`None`: no delay), with
    /// [`tokio::time::sleep`], so a test with paused time drives it.
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.config.lock().latency = latency;
    }

    /// While `true`, every request hangs: its handler waits until the client
    /// cancels it, the connection closes, or this is set back to `false`,
    /// which releases the waiting handlers (they then answer normally).
    pub fn set_hang(&self, hang: bool) {
        self.hang.send_replace(hang);
    }

    /// While `true`, every request makes the server drop the connection it
    /// arrived on, without answering.
    ///
    /// The handler is dropped (counted as cancelled) and the socket closed.
    /// A client sees the connection end before the response: hyper's HTTP/1
    /// client reports an incomplete message ("connection closed before message
    /// completed"), tonic 0.14 fails the call with `UNKNOWN` and message
    /// `"transport error"` (source: a hyper I/O error, broken pipe or
    /// connection reset). Other requests in flight on that connection fail
    /// too; a tonic channel reconnects on its next call.
    pub fn set_close_connection(&self, close: bool) {
        self.config.lock().close_connection = close;
    }

    /// Drops the connection of each of the next `k` requests (as
    /// [`Faults::set_close_connection`]), then recovers.
    pub fn close_next(&self, k: u32) {
        self.config.lock().close_next = k;
    }

    /// Stops failing response streams (see `fail_stream_after`).
    pub fn clear_stream_failure(&self) {
        self.config.lock().stream_fail = None;
    }

    /// Switches every fault off, releasing hanging handlers.
    pub fn clear(&self) {
        *self.config.lock() = Config::default();
        self.hang.send_replace(false);
    }

    pub(crate) fn set_stream_failure(&self, after: u32, status: Option<C>) {
        self.config.lock().stream_fail = Some((after, status));
    }

    /// Applies the faults to a request that reached its handler: waits out the
    /// latency and any hang, drops the connection if asked (never returning),
    /// and returns `Err(status)` if the request must fail.
    pub(crate) async fn apply(&self, conn: Option<&ConnCtx>) -> Result<Plan<C>, C> {
        let (latency, close, fail, stream_fail) = {
            let mut config = self.config.lock();
            let close = if config.close_next > 0 {
                config.close_next -= 1;
                true
            } else {
                config.close_connection
            };
            // A request that closes its connection does not use up a failure.
            let fail = if close {
                None
            } else if config.fail_next > 0 {
                config.fail_next -= 1;
                config.fail_next_status.or(config.status)
            } else if let Some((rate, status, rng)) = &mut config.failure_rate
                && rng.f64() < *rate
            {
                Some(*status)
            } else {
                config.status
            };
            (config.latency, close, fail, config.stream_fail)
        };
        if let Some(latency) = latency {
            tokio::time::sleep(latency).await;
        }
        let mut hang = self.hang.subscribe();
        // The sender lives in `self`, so this only returns once released.
        drop(hang.wait_for(|hang| !*hang).await);
        if close {
            if let Some(conn) = conn {
                conn.close();
            }
            // The connection task drops this handler.
            std::future::pending::<()>().await;
        }
        match fail {
            Some(status) => Err(status),
            None => Ok(Plan { stream_fail }),
        }
    }
}
