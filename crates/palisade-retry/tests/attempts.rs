//! What the retry layer sends, holds and gives back around each attempt, in
//! paused time against in-process services: the deadline checked before the
//! first attempt, an open breaker's `retry_in`, a retried response's body
//! dropped before the backoff, the time left written on every gRPC attempt,
//! and a committed call's request body no longer buffered.
#![allow(clippy::disallowed_types)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{BoxError, CircuitOpen, DeadlineExceeded, PolledAfterCompletion};
use palisade_core::event::{Event, EventKind, Listener};
use palisade_core::grpc_timeout;
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::peer::PeerId;
use palisade_retry::{Attempts, ReplayBody, RetryLayer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

fn constant(ms: u64) -> Backoff {
    Backoff::constant(Duration::from_millis(ms))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn get() -> http::Request<Full<Bytes>> {
    http::Request::get("http://peer/item")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn with_deadline(mut request: http::Request<Full<Bytes>>, after: Duration) -> http::Request<Full<Bytes>> {
    request.call_options_mut().set_deadline(Deadline::after(after));
    request
}

/// A response body that notes when it is dropped.
struct WatchedBody(Arc<AtomicBool>);

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"overloaded")))))
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- 1. The deadline before the first attempt ----

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_is_refused_before_the_first_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let inner = service_fn(move |_: http::Request<ReplayBody<Full<Bytes>>>| {
        calls2.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(http::Response::new(())) }
    });
    // Each request deposits one retry's worth: what `available` shows.
    let layer = RetryLayer::builder()
        .http()
        .budget(1.0, 0, Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let err = svc
        .clone()
        .oneshot(with_deadline(get(), Duration::ZERO))
        .await
        .unwrap_err();
    let exceeded = err.downcast_ref::<DeadlineExceeded>().expect("DeadlineExceeded");
    assert!(!exceeded.was_sent());
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the inner service was not called");
    assert_eq!(layer.budget().unwrap().available(), 0, "the budget was not touched");

    // With time left, the call goes through and deposits.
    svc.oneshot(with_deadline(get(), Duration::from_secs(1))).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.budget().unwrap().available(), 1);
}

// ---- 6. An open breaker's retry_in ----

/// Answers `CircuitOpen` (no balancer: nothing records a peer) until
/// `open_until` calls were made, then 200; logs when it was called.
fn breaker_open_for(
    open_calls: u32,
    retry_in: Duration,
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl tower::Service<
    http::Request<ReplayBody<Full<Bytes>>>,
    Response = http::Response<()>,
    Error = BoxError,
    Future: Send,
> + Clone {
    service_fn(move |_: http::Request<ReplayBody<Full<Bytes>>>| {
        let n = {
            let mut log = log.lock();
            log.push(Instant::now());
            log.len() as u32
        };
        async move {
            if n <= open_calls {
                Err::<_, BoxError>(CircuitOpen::new(Some("solo:1".into()), retry_in).into())
            } else {
                Ok(http::Response::new(()))
            }
        }
    })
}

/// The `Retry` events a layer emitted: (delay, reason).
#[derive(Default)]
struct Retries(Mutex<Vec<(Duration, String)>>);

impl Listener for Retries {
    fn on_event(&self, event: &Event<'_>) {
        if let EventKind::Retry { delay, reason, .. } = event.kind {
            self.0.lock().push((delay, reason.to_owned()));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_balancer_an_open_breaker_is_retried_after_its_retry_in() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let retries = Arc::new(Retries::default());
    let layer = RetryLayer::builder()
        .http()
        .retries(2)
        .backoff(constant(10))
        .listener(retries.clone())
        .build()
        .unwrap();
    let svc = layer.layer(breaker_open_for(1, Duration::from_millis(300), log.clone()));
    let start = Instant::now();
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let at: Vec<_> = log.lock().iter().map(|t| *t - start).collect();
    assert_eq!(
        at,
        [Duration::ZERO, Duration::from_millis(300)],
        "not the 10 ms backoff"
    );
    assert_eq!(
        *retries.0.lock(),
        [(Duration::from_millis(300), "circuit open".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_call_honours_retry_in_too() {
    // No request extensions, no attempt record: nothing can switch peers.
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let inner = service_fn(move |()| {
        let n = {
            let mut log = log2.lock();
            log.push(Instant::now());
            log.len()
        };
        async move {
            if n == 1 {
                Err::<u32, BoxError>(CircuitOpen::new(None, Duration::from_millis(250)).into())
            } else {
                Ok(7)
            }
        }
    });
    let svc = RetryLayer::builder()
        .plain()
        .backoff(constant(10))
        .build()
        .unwrap()
        .layer(inner);
    let start = Instant::now();
    assert_eq!(svc.oneshot(()).await.unwrap(), 7);
    assert_eq!(log.lock()[1] - start, Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn a_future_polled_after_completion_answers_an_error() {
    let svc = RetryLayer::http().layer(service_fn(|_: MockReq| async {
        Ok::<_, BoxError>(http::Response::new(()))
    }));
    for request in [get(), with_deadline(get(), Duration::ZERO)] {
        let mut svc = svc.clone();
        let future = svc.ready().await.unwrap().call(request);
        let mut call = tokio_test::task::spawn(future);
        let first = match call.poll() {
            Poll::Ready(first) => first,
            Poll::Pending => panic!("answers at once"),
        };
        let again = match call.poll() {
            Poll::Ready(again) => again,
            Poll::Pending => panic!("polled again: an error, not Pending"),
        };
        assert!(first.is_ok() || first.is_err_and(|e| e.is::<DeadlineExceeded>()));
        let err = again.unwrap_err();
        assert!(err.is::<PolledAfterCompletion>(), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_not_retried_when_retry_in_is_too_long() {
    // Longer than max_pushback (10 s), then longer than the time left (200 ms).
    for (retry_in, deadline) in [
        (Duration::from_secs(20), None),
        (Duration::from_millis(300), Some(Duration::from_millis(200))),
    ] {
        let log = Arc::new(Mutex::new(Vec::new()));
        let layer = RetryLayer::builder()
            .http()
            .retries(3)
            .backoff(constant(10))
            .budget(1.0, 0, Duration::from_secs(10))
            .build()
            .unwrap();
        let svc = layer.layer(breaker_open_for(u32::MAX, retry_in, log.clone()));
        let request = match deadline {
            Some(d) => with_deadline(get(), d),
            None => get(),
        };
        let start = Instant::now();
        let err = svc.oneshot(request).await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{err}");
        assert_eq!(log.lock().len(), 1, "one attempt ({retry_in:?})");
        assert_eq!(Instant::now(), start, "returned at once");
        assert_eq!(layer.budget().unwrap().available(), 1, "no retry was withdrawn");
    }
}

#[tokio::test(start_paused = true)]
async fn with_a_balancer_an_open_peer_is_left_for_another_at_once() {
    // The balancer records its pick in the attempt record; peer "a" is open
    // for 30 s (beyond max_pushback), "b" answers.
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
        let record = req.attempt_record().expect("a record").clone();
        let peer = ["a", "b"]
            .into_iter()
            .map(PeerId::from)
            .find(|p| !record.contains(p))
            .unwrap_or_else(|| PeerId::from("a"));
        record.record(peer.clone());
        log2.lock().push((Instant::now(), peer.clone()));
        async move {
            if peer.as_str() == "a" {
                Err::<_, BoxError>(CircuitOpen::new(Some(peer), Duration::from_secs(30)).into())
            } else {
                Ok(http::Response::new(()))
            }
        }
    });
    let svc = RetryLayer::builder()
        .http()
        .backoff(constant(10))
        .build()
        .unwrap()
        .layer(inner);
    let start = Instant::now();
    svc.oneshot(get()).await.unwrap();
    let log = log.lock();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].1, PeerId::from("b"));
    assert_eq!(log[1].0 - start, Duration::from_millis(10), "the backoff, not retry_in");
}

// ---- 3. Nothing held through the backoff ----

#[tokio::test(start_paused = true)]
async fn a_retried_responses_body_is_dropped_before_the_backoff() {
    let dropped = Arc::new(AtomicBool::new(false));
    let dropped2 = dropped.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let inner = service_fn(move |_: http::Request<ReplayBody<Full<Bytes>>>| {
        let n = calls2.fetch_add(1, Ordering::SeqCst);
        let res = http::Response::builder()
            .status(if n == 0 { 503 } else { 200 })
            .header("retry-after", "10")
            .body(WatchedBody(if n == 0 { dropped2.clone() } else { Arc::default() }))
            .unwrap();
        async move { Ok::<_, BoxError>(res) }
    });
    let svc = RetryLayer::http().layer(inner);
    let mut call = tokio_test::task::spawn(svc.oneshot(get()));
    assert!(call.poll().is_pending(), "waiting out Retry-After");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the 503's body is gone during the backoff"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = match call.poll() {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("the retry must have answered"),
    };
    assert_eq!(res.status(), 200);
    assert!(!res.body().is_empty_head(), "the retry's own body");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

type MockReq = http::Request<ReplayBody<Full<Bytes>>>;

/// The retry cannot be sent (the service stays unready past the deadline):
/// the call returns the kept head of the 503, with an empty body.
#[tokio::test(start_paused = true)]
async fn the_kept_head_is_returned_when_the_retry_cannot_be_sent() {
    let (mock, mut handle) = tower_test::mock::pair::<MockReq, http::Response<WatchedBody>>();
    handle.allow(1);
    let svc = RetryLayer::builder()
        .http()
        .backoff(constant(100))
        .build()
        .unwrap()
        .layer(mock);
    let call = tokio::spawn(svc.oneshot(with_deadline(get(), Duration::from_secs(1))));
    let (_req, send) = handle.next_request().await.unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    send.send_response(
        http::Response::builder()
            .status(503)
            .header("x-reason", "overloaded")
            .body(WatchedBody(dropped.clone()))
            .unwrap(),
    );
    let res = call.await.unwrap().unwrap();
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["x-reason"],
        "overloaded",
        "the head as the server sent it"
    );
    assert!(res.body().is_empty_head());
    assert!(res.into_body().collect().await.unwrap().to_bytes().is_empty());
}

// ---- 5. Every attempt carries the time left when it is sent ----

type Sent = Arc<Mutex<Vec<(Instant, Option<Duration>)>>>;

/// gRPC: answers trailers-only UNAVAILABLE to the first attempt, OK after;
/// records each attempt's `grpc-timeout`.
fn grpc_recording(
    sent: Sent,
) -> impl tower::Service<MockReq, Response = http::Response<()>, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: MockReq| {
        let timeout = req
            .headers()
            .get(grpc_timeout::GRPC_TIMEOUT)
            .and_then(grpc_timeout::parse_header);
        let n = {
            let mut sent = sent.lock();
            sent.push((Instant::now(), timeout));
            sent.len()
        };
        let status = if n == 1 { "14" } else { "0" };
        let res = http::Response::builder()
            .header("grpc-status", status)
            .body(())
            .unwrap();
        async move { Ok::<_, BoxError>(res) }
    })
}

fn grpc_call() -> http::Request<Full<Bytes>> {
    http::Request::post("http://peer/echo.Echo/Unary")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_grpc_attempt_carries_the_time_left_when_it_is_sent() {
    let sent: Sent = Arc::default();
    let svc = RetryLayer::builder()
        .grpc()
        .backoff(constant(306))
        .build()
        .unwrap()
        .layer(grpc_recording(sent.clone()));
    let mut request = with_deadline(grpc_call(), Duration::from_secs(1));
    // What a total timeout layer above wrote when the call started.
    request.headers_mut().insert(
        grpc_timeout::GRPC_TIMEOUT_HEADER,
        grpc_timeout::format(Duration::from_secs(1)),
    );
    let start = Instant::now();
    svc.oneshot(request).await.unwrap();
    let sent = sent.lock();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].1, Some(Duration::from_secs(1)));
    assert_eq!(sent[1].0 - start, Duration::from_millis(306));
    assert_eq!(
        sent[1].1,
        Some(Duration::from_millis(694)),
        "the retry carries the time left, not the first attempt's"
    );
}

#[tokio::test(start_paused = true)]
async fn no_deadline_no_grpc_timeout_and_a_shorter_one_is_kept() {
    // No deadline: nothing is written.
    let sent: Sent = Arc::default();
    let layer = RetryLayer::builder().grpc().backoff(constant(100)).build().unwrap();
    layer
        .layer(grpc_recording(sent.clone()))
        .oneshot(grpc_call())
        .await
        .unwrap();
    assert_eq!(sent.lock().iter().map(|s| s.1).collect::<Vec<_>>(), [None, None]);

    // A caller's own shorter timeout (tonic's `Request::set_timeout`) stays
    // on the first attempt, and bounds the call like a deadline: the retry
    // carries what is left of it, not the stale header.
    let sent: Sent = Arc::default();
    let mut request = with_deadline(grpc_call(), Duration::from_secs(5));
    request.headers_mut().insert(
        grpc_timeout::GRPC_TIMEOUT_HEADER,
        grpc_timeout::format(Duration::from_millis(500)),
    );
    layer
        .layer(grpc_recording(sent.clone()))
        .oneshot(request)
        .await
        .unwrap();
    let timeouts: Vec<_> = sent.lock().iter().map(|s| s.1).collect();
    assert_eq!(
        timeouts,
        [Some(Duration::from_millis(500)), Some(Duration::from_millis(400))]
    );

    // With no deadline at all, the caller's header alone does the same.
    let sent: Sent = Arc::default();
    let mut request = grpc_call();
    request.headers_mut().insert(
        grpc_timeout::GRPC_TIMEOUT_HEADER,
        grpc_timeout::format(Duration::from_millis(500)),
    );
    layer
        .layer(grpc_recording(sent.clone()))
        .oneshot(request)
        .await
        .unwrap();
    let timeouts: Vec<_> = sent.lock().iter().map(|s| s.1).collect();
    assert_eq!(
        timeouts,
        [Some(Duration::from_millis(500)), Some(Duration::from_millis(400))]
    );

    // Plain http has no such header.
    let sent: Sent = Arc::default();
    let http = RetryLayer::builder().http().backoff(constant(100)).build().unwrap();
    let inner = grpc_recording(sent.clone()).map_response(|r| {
        let (mut parts, body) = r.into_parts();
        parts.status = http::StatusCode::SERVICE_UNAVAILABLE;
        http::Response::from_parts(parts, body)
    });
    let _ = http
        .layer(inner)
        .oneshot(with_deadline(get(), Duration::from_secs(5)))
        .await;
    assert!(sent.lock().iter().all(|s| s.1.is_none()));
}

// ---- 8. The replay buffer stops once the call is committed ----

/// Request body frames that count their own drop: a frame kept in the replay
/// buffer stays alive after it was sent.
struct Counted(Arc<AtomicUsize>, Vec<u8>);

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.1
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Stream = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn counted_body(frames: usize, freed: &Arc<AtomicUsize>) -> Stream {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..frames)
        .map(|_| Ok(Frame::data(Bytes::from_owner(Counted(freed.clone(), vec![0; 4096])))))
        .collect();
    StreamBody::new(futures::stream::iter(frames))
}

/// Reads `body` to its end, checking after each frame that no sent frame is
/// still held (beyond `slack` frames buffered before the call committed).
async fn send_checking_nothing_is_kept(mut body: ReplayBody<Stream>, freed: &AtomicUsize, slack: usize) -> usize {
    let mut sent = 0;
    while let Some(frame) = body.frame().await {
        drop(frame.unwrap());
        sent += 1;
        let held = sent - freed.load(Ordering::SeqCst).min(sent);
        assert!(held <= slack, "{held} sent frames still held after {sent}");
    }
    sent
}

type Held = Arc<Mutex<Option<ReplayBody<Stream>>>>;

#[tokio::test(start_paused = true)]
async fn a_committed_call_no_longer_buffers_its_request_body() {
    // A client stream: the server answers 200 at once and reads the request
    // body afterwards. That answer commits the call.
    let held: Held = Arc::default();
    let held2 = held.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Stream>>| {
        *held2.lock() = Some(req.into_body());
        async { Ok::<_, BoxError>(http::Response::new(())) }
    });
    let svc = RetryLayer::builder().http().build().unwrap().layer(inner);
    let freed = Arc::new(AtomicUsize::new(0));
    let request = http::Request::put("http://peer/upload")
        .body(counted_body(12, &freed))
        .unwrap();
    let res = svc.oneshot(request).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = held.lock().take().unwrap();
    assert!(!body.is_replayable(), "committed: no replay will be made");
    assert_eq!(send_checking_nothing_is_kept(body, &freed, 0).await, 12);
}

#[tokio::test(start_paused = true)]
async fn the_last_attempt_does_not_buffer_its_request_body() {
    // The first attempt gets a 503 before reading any body; the retry (the
    // last attempt) streams the body while its response is pending.
    let held: Held = Arc::default();
    let held2 = held.clone();
    let (answer, answered) = tokio::sync::oneshot::channel::<()>();
    let answered = Arc::new(Mutex::new(Some(answered)));
    let calls = Arc::new(AtomicU32::new(0));
    let inner = service_fn(move |req: http::Request<ReplayBody<Stream>>| {
        let wait = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            drop(req);
            None
        } else {
            *held2.lock() = Some(req.into_body());
            answered.lock().take()
        };
        async move {
            match wait {
                Some(wait) => {
                    let _ = wait.await;
                    Ok::<_, BoxError>(http::Response::builder().status(200).body(()).unwrap())
                }
                None => Ok(http::Response::builder().status(503).body(()).unwrap()),
            }
        }
    });
    let svc = RetryLayer::builder()
        .http()
        .backoff(constant(0))
        .build()
        .unwrap()
        .layer(inner);
    let freed = Arc::new(AtomicUsize::new(0));
    let request = http::Request::put("http://peer/upload")
        .body(counted_body(12, &freed))
        .unwrap();
    let mut call = tokio_test::task::spawn(svc.oneshot(request));
    assert!(call.poll().is_pending(), "the last attempt waits for its answer");
    let body = held.lock().take().expect("the last attempt's body");
    assert!(!body.is_replayable(), "the last attempt: no replay will follow");
    assert_eq!(send_checking_nothing_is_kept(body, &freed, 0).await, 12);
    answer.send(()).unwrap();
    match call.poll() {
        Poll::Ready(res) => assert_eq!(res.unwrap().status(), 200),
        Poll::Pending => panic!("answered"),
    }
}
