//! Counters and records of what a server received.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::TAG_HEADER;

/// Counters and records of what one server received, shared between the
/// server's handlers and the test holding the server's handle.
///
/// Every counter only goes up (until [`Stats::reset`]). Each change wakes the
/// `wait_*` methods, so a test awaits a state instead of polling for it; wrap
/// the wait in [`tokio::time::timeout`] to bound it.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    streams_completed: AtomicU64,
    streams_failed: AtomicU64,
    connections: AtomicU64,
    last: Mutex<LastRequest>,
    /// Arrival times of the requests that carried a [`TAG_HEADER`], by tag.
    tagged: Mutex<HashMap<String, Vec<Instant>>>,
    notify: Notify,
}

#[derive(Debug, Default, Clone)]
struct LastRequest {
    headers: HeaderMap,
    path: Option<String>,
    payload: Option<Bytes>,
}

impl Stats {
    /// Requests that reached a handler (gRPC: calls of any kind; HTTP: requests
    /// whose body was read). Counted before any fault is applied.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Handlers that finished: returned a response or an error status, or, for
    /// a response stream, sent its end (normal or injected failure).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Handlers dropped before they finished: the client cancelled (HTTP/2
    /// `RST_STREAM`, or a dropped connection), the connection was closed, or the
    /// server shut down. For a response stream, "finished" means the stream
    /// sent its end, so a stream dropped midway counts here.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Handlers running now: `requests - finished - cancelled`.
    pub fn in_flight(&self) -> u64 {
        self.requests()
            .saturating_sub(self.finished())
            .saturating_sub(self.cancelled())
    }

    /// Response streams (gRPC server streaming, HTTP `/stream`) that sent all
    /// their messages and ended normally.
    pub fn streams_completed(&self) -> u64 {
        self.streams_completed.load(Ordering::SeqCst)
    }

    /// Response streams ended by the `fail_stream_after` fault.
    pub fn streams_failed(&self) -> u64 {
        self.streams_failed.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Headers of the last request (gRPC: its metadata as HTTP/2 headers,
    /// including `grpc-timeout` and any custom metadata).
    pub fn last_headers(&self) -> HeaderMap {
        self.last.lock().headers.clone()
    }

    /// The raw `grpc-timeout` header of the last request (e.g. `"100m"`), or
    /// `None` if it carried none.
    pub fn last_grpc_timeout_raw(&self) -> Option<String> {
        self.last
            .lock()
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The `grpc-timeout` header of the last request as a duration, or `None`
    /// if it carried none or it did not parse.
    pub fn last_grpc_timeout(&self) -> Option<Duration> {
        self.last_grpc_timeout_raw().as_deref().and_then(parse_grpc_timeout)
    }

    /// The path of the last request (gRPC: `/package.Service/Method`; HTTP: the
    /// URI path, without the query).
    pub fn last_path(&self) -> Option<String> {
        self.last.lock().path.clone()
    }

    /// The payload bytes of the last request, exactly as received: the unary
    /// request's `payload`, the concatenated payloads of a client stream (set
    /// when the stream ended), the `payload` of a server-streaming request, or
    /// the HTTP request body.
    pub fn last_payload(&self) -> Option<Bytes> {
        self.last.lock().payload.clone()
    }

    /// When each request tagged `tag` reached its handler, in arrival order
    /// (empty if none did).
    ///
    /// A request is tagged by a [`TAG_HEADER`] header (gRPC: metadata) whose
    /// value is valid UTF-8; every attempt a client sends counts, retries
    /// included, so several callers sharing one server can each be told apart
    /// (the chaos tool tags each client's requests with the client's name).
    /// The time is taken from tokio's clock when the request is counted in
    /// [`Stats::requests`], before any fault is applied. Untagged requests
    /// are not recorded here.
    pub fn tagged(&self, tag: &str) -> Vec<Instant> {
        self.tagged.lock().get(tag).cloned().unwrap_or_default()
    }

    /// How many requests tagged `tag` reached a handler.
    pub fn tagged_requests(&self, tag: &str) -> u64 {
        self.tagged.lock().get(tag).map_or(0, |times| times.len() as u64)
    }

    /// Sets every counter back to zero and forgets the last request and the
    /// tagged arrivals.
    pub fn reset(&self) {
        for counter in [
            &self.requests,
            &self.finished,
            &self.cancelled,
            &self.streams_completed,
            &self.streams_failed,
            &self.connections,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        *self.last.lock() = LastRequest::default();
        self.tagged.lock().clear();
        self.notify.notify_waiters();
    }

    /// Waits until `condition` holds. It is checked now and after every change
    /// of these stats; no change is missed.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Stats) -> bool) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the
            // await still wakes us.
            notified.as_mut().enable();
            if condition(self) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until at least `n` requests were received.
    pub async fn wait_for_requests(&self, n: u64) {
        self.wait_until(|s| s.requests() >= n).await;
    }

    /// Waits until at least `n` handlers finished.
    pub async fn wait_for_finished(&self, n: u64) {
        self.wait_until(|s| s.finished() >= n).await;
    }

    /// Waits until at least `n` handlers were cancelled.
    pub async fn wait_for_cancelled(&self, n: u64) {
        self.wait_until(|s| s.cancelled() >= n).await;
    }

    /// Waits until at least `n` response streams completed normally.
    pub async fn wait_for_streams_completed(&self, n: u64) {
        self.wait_until(|s| s.streams_completed() >= n).await;
    }

    /// Waits until at least `n` response streams failed by injection.
    pub async fn wait_for_streams_failed(&self, n: u64) {
        self.wait_until(|s| s.streams_failed() >= n).await;
    }

    /// Waits until at least `n` connections were accepted.
    pub async fn wait_for_connections(&self, n: u64) {
        self.wait_until(|s| s.connections() >= n).await;
    }

    /// Waits until exactly `n` handlers are in flight.
    pub async fn wait_for_in_flight(&self, n: u64) {
        self.wait_until(|s| s.in_flight() == n).await;
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn connection_accepted(&self) {
        self.bump(&self.connections);
    }

    /// Records a request reaching a handler, and returns the guard that counts
    /// it as finished or cancelled.
    pub(crate) fn begin(
        self: &Arc<Self>,
        path: Option<String>,
        headers: HeaderMap,
        payload: Option<Bytes>,
    ) -> RequestGuard {
        if let Some(tag) = headers.get(TAG_HEADER).and_then(|v| v.to_str().ok()) {
            let now = Instant::now();
            let mut tagged = self.tagged.lock();
            // Look up by `&str` first: only a tag's first request allocates.
            match tagged.get_mut(tag) {
                Some(times) => times.push(now),
                None => {
                    tagged.insert(tag.to_owned(), vec![now]);
                }
            }
        }
        {
            let mut last = self.last.lock();
            last.headers = headers;
            last.path = path;
            last.payload = payload;
        }
        self.bump(&self.requests);
        RequestGuard {
            stats: Arc::clone(self),
            done: false,
        }
    }

    pub(crate) fn record_payload(&self, payload: Bytes) {
        self.last.lock().payload = Some(payload);
        self.notify.notify_waiters();
    }
}

/// Counts a handler as finished when told, or as cancelled if dropped first.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    stats: Arc<Stats>,
    done: bool,
}

impl RequestGuard {
    /// The handler answered.
    pub(crate) fn finish(mut self) {
        self.done = true;
        self.stats.bump(&self.stats.finished);
    }

    /// The handler's response stream ended; `ok` tells whether normally.
    pub(crate) fn finish_stream(mut self, ok: bool) {
        self.done = true;
        let stats = &self.stats;
        if ok {
            stats.streams_completed.fetch_add(1, Ordering::SeqCst);
        } else {
            stats.streams_failed.fetch_add(1, Ordering::SeqCst);
        }
        stats.bump(&stats.finished);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.stats.bump(&self.stats.cancelled);
        }
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    #[test]
    fn guard_counts_cancel_on_drop() {
        let stats = Arc::new(Stats::default());
        let g = stats.begin(None, HeaderMap::new(), None);
        assert_eq!(stats.in_flight(), 1);
        drop(g);
        assert_eq!(stats.cancelled(), 1);
        stats.begin(None, HeaderMap::new(), None).finish();
        assert_eq!(stats.finished(), 1);
        stats.begin(None, HeaderMap::new(), None).finish_stream(true);
        assert_eq!(
            (stats.requests(), stats.streams_completed(), stats.in_flight()),
            (3, 1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tagged_requests_are_counted_per_tag_with_their_arrival_time() {
        let stats = Arc::new(Stats::default());
        let tagged = |tag: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(TAG_HEADER, http::HeaderValue::from_static(tag));
            headers
        };
        let start = Instant::now();
        stats.begin(None, tagged("a"), None).finish();
        tokio::time::advance(Duration::from_millis(10)).await;
        stats.begin(None, tagged("b"), None).finish();
        stats.begin(None, tagged("a"), None).finish();
        stats.begin(None, HeaderMap::new(), None).finish();
        assert_eq!(stats.tagged("a"), vec![start, start + Duration::from_millis(10)]);
        assert_eq!(stats.tagged("b"), vec![start + Duration::from_millis(10)]);
        assert_eq!((stats.tagged_requests("a"), stats.tagged_requests("c")), (2, 0));
        assert_eq!(stats.requests(), 4, "tagged or not, every request counts");
        stats.reset();
        assert!(stats.tagged("a").is_empty());
    }
}
