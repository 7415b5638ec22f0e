//! The deadline of the request being handled bounds every layer of an
//! outgoing call, not only a timeout layer (brief fix13, items 1 and 6).
//!
//! A handler behind `DeadlineServerLayer` whose incoming `grpc-timeout` is
//! nearly spent calls a real tonic server through
//!
//! ```text
//! Retry -> Bulkhead -> CircuitBreaker -> Channel      (no TimeoutLayer)
//! ```
//!
//! The bulkhead's one slot is taken by a call that hangs at the server, so
//! the handler's call queues. It leaves the queue at the inherited deadline
//! with `DEADLINE_EXCEEDED`, an error and an event that name the deadline;
//! the breaker counts nothing, and the server never sees the call. Before
//! the fix the bulkhead saw only a deadline in the call's own options: the
//! queued call waited for good (the test's real-time bound fails it).
//!
//! A second test holds the slot in the inner service's `poll_ready` (a
//! permit taken, the inner service not ready): the call must still end at
//! its deadline and give the slot back.
//!
//! These tests run in real time (deadlines of tens of milliseconds against
//! real sockets); no assertion is about how long anything took, and every
//! wait is bounded.
#![allow(clippy::disallowed_types, missing_docs)]

mod stacked;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use palisade_bulkhead::{BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState};
use palisade_core::error::{BoxError, DeadlineExceeded, find_error};
use palisade_core::event::{Event, EventKind, Listener};
use palisade_core::options::Deadline;
use palisade_core::protocol::Grpc;
use palisade_retry::{RetryLayer, TonicRetryLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoReply, EchoRequest};
use palisade_timeout::{DeadlineServerLayer, with_deadline};
use parking_lot::Mutex;
use stacked::within;
use tokio::sync::Notify;
use tonic::Code;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Records the reasons of the bulkhead's `Rejected` events.
#[derive(Default)]
struct Rejections(Mutex<Vec<&'static str>>);

impl Listener for Rejections {
    fn on_event(&self, event: &Event<'_>) {
        if let EventKind::Rejected { reason } = event.kind {
            self.0.lock().push(reason);
        }
    }
}

fn hello() -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    })
}

type Reply = Result<tonic::Response<EchoReply>, tonic::Status>;

/// Runs `call` as the handler of a request whose incoming `grpc-timeout` is
/// `timeout`, behind a `DeadlineServerLayer`, and returns what it returned.
async fn handle<F, Fut>(timeout: &'static str, call: F) -> Reply
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let out: Arc<Mutex<Option<Reply>>> = Arc::default();
    let seen = out.clone();
    let handler = tower::service_fn(move |_: http::Request<Empty<Bytes>>| {
        let call = call.clone();
        let seen = seen.clone();
        async move {
            let reply = call().await;
            *seen.lock() = Some(reply);
            Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
        }
    });
    let server = DeadlineServerLayer::new().layer(handler);
    let request = http::Request::builder()
        .uri("http://front/echo.Echo/Unary")
        .header("grpc-timeout", timeout)
        .body(Empty::new())
        .unwrap();
    within("the handler ends", server.oneshot(request)).await.unwrap();
    out.lock().take().expect("the handler ran")
}

struct Setup {
    server: EchoServer,
    bulkhead: BulkheadHandle,
    breaker: CircuitBreakerHandle,
    rejections: Arc<Rejections>,
}

fn layers(
    server: &EchoServer,
) -> (
    TonicRetryLayer,
    BulkheadLayer<Grpc>,
    CircuitBreakerLayer<Grpc>,
    Arc<Rejections>,
) {
    let _ = server;
    let rejections = Arc::new(Rejections::default());
    let retry = RetryLayer::builder()
        .grpc()
        .tonic_body()
        .retries(2)
        .no_budget()
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::new(
        BulkheadConfig::builder()
            .max_concurrent(1)
            .max_queue(4)
            .listener(rejections.clone())
            .build()
            .unwrap(),
    )
    .protocol(Grpc::default());
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap())
        .protocol(Grpc::default());
    (retry, bulkhead, breaker, rejections)
}

fn assert_deadline_named(reply: Reply, stage: &str) {
    let status = reply.expect_err("the call must fail at its deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let deadline = find_error::<DeadlineExceeded>(&status).unwrap_or_else(|| panic!("no DeadlineExceeded: {status:?}"));
    assert!(!deadline.was_sent());
    let (waited_at, _) = deadline.waited().expect("the error says where the call waited");
    assert_eq!(waited_at, stage);
    assert!(
        status.message().contains("deadline") && status.message().contains("bulkhead"),
        "the message names the deadline and the bulkhead: {}",
        status.message()
    );
}

#[tokio::test]
async fn a_queued_call_leaves_the_bulkhead_at_the_inherited_deadline() {
    let server = EchoServer::start("a").await.unwrap();
    let (retry, bulkhead, breaker, rejections) = layers(&server);
    let setup = Setup {
        bulkhead: bulkhead.handle(),
        breaker: breaker.handle(),
        rejections,
        server,
    };
    let stack = ServiceBuilder::new()
        .layer(retry)
        .layer(bulkhead)
        .layer(breaker)
        .service(setup.server.channel());
    let client = EchoClient::new(stack);

    // The slot is taken by a call that hangs at the server.
    setup.server.faults().set_hang(true);
    let mut holder = client.clone();
    let hanging = tokio::spawn(async move { holder.unary(hello()).await });
    within("the hanging call reaches the server", async {
        while setup.server.stats().requests() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(setup.bulkhead.in_flight(), 1);

    let reply = handle("30m", move || {
        let mut client = client.clone();
        async move { client.unary(hello()).await }
    })
    .await;
    assert_deadline_named(reply, "in the bulkhead queue");
    assert_eq!(setup.rejections.0.lock().as_slice(), ["deadline passed while queued"]);
    assert_eq!(setup.bulkhead.queued(), 0, "the call left the queue");
    assert_eq!(setup.server.stats().requests(), 1, "the queued call was never sent");
    let breaker = setup.breaker.snapshot();
    assert_eq!(breaker.state, CircuitState::Closed);
    assert_eq!(breaker.consecutive_failures, 0, "the breaker counted nothing");
    hanging.abort();
}

/// The inner service: ready for the first `allow` polls of its readiness
/// (across all clones), never after, standing for a connection that cannot
/// be made any more. A call waits for `release` before it answers.
#[derive(Clone)]
struct Inner {
    allow: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

impl<B> Service<http::Request<B>> for Inner {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let granted = self
            .allow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if granted { Poll::Ready(Ok(())) } else { Poll::Pending }
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let release = self.release.clone();
        Box::pin(async move {
            release.notified().await;
            Ok(http::Response::new(tonic::body::Body::empty()))
        })
    }
}

#[tokio::test]
async fn a_call_holding_a_permit_does_not_wait_for_the_inner_service_past_its_deadline() {
    let server = EchoServer::start("a").await.unwrap();
    let (_, bulkhead, _, rejections) = layers(&server);
    let handle = bulkhead.handle();
    let release = Arc::new(Notify::new());
    // Ready twice: for the call that takes the slot and for the one that queues.
    let mut service = bulkhead.layer(Inner {
        allow: Arc::new(AtomicUsize::new(2)),
        release: release.clone(),
    });
    ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut service)
        .await
        .unwrap();
    let holder = tokio::spawn(service.call(http::Request::new(tonic::body::Body::empty())));
    let probe = handle.clone();
    let result = within(
        "the call ends at its deadline",
        with_deadline(Deadline::after(Duration::from_millis(30)), async move {
            ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut service)
                .await
                .unwrap();
            let queued = service.call(http::Request::new(tonic::body::Body::empty()));
            assert_eq!(probe.queued(), 1);
            // The slot comes free: the queued call takes the permit, then
            // waits for its (never ready) inner service.
            release.notify_one();
            queued.await
        }),
    )
    .await;
    within("the holder ends", holder).await.unwrap().unwrap();
    let error = result.expect_err("never ready: the deadline ends the call");
    let deadline = find_error::<DeadlineExceeded>(error.as_ref()).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        deadline.waited().map(|(stage, _)| stage),
        Some("in the bulkhead for the inner service to be ready"),
        "{error}"
    );
    assert_eq!(handle.in_flight(), 0, "the permit came back");
    assert_eq!(
        rejections.0.lock().as_slice(),
        ["deadline passed waiting for the inner service to be ready"]
    );
}

/// Retry sees the inherited deadline too: no backoff that would end past it
/// starts, and a call whose inherited deadline has already passed is not
/// sent at all (before the fix retry saw only the call's own options: it
/// slept its backoff and sent every attempt).
#[tokio::test]
async fn retry_starts_no_attempt_or_backoff_past_the_inherited_deadline() {
    let server = EchoServer::start("a").await.unwrap();
    server.faults().set_status(Some(Code::Unavailable));
    let events = stacked::RetryEvents::new();
    let retry = RetryLayer::builder()
        .grpc()
        .tonic_body()
        .retries(2)
        .backoff(
            palisade_core::backoff::Backoff::constant(Duration::from_secs(1))
                .jitter(palisade_core::backoff::Jitter::None)
                .build()
                .unwrap(),
        )
        .no_budget()
        .listener(events.clone())
        .build()
        .unwrap();
    let (_, _, breaker, _) = layers(&server);
    let state = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .service(server.channel());
    let client = EchoClient::new(stack);

    // 300 ms left: the first attempt goes, the 1 s backoff does not start.
    let c = client.clone();
    let reply = handle("300m", move || {
        let mut client = c.clone();
        async move { client.unary(hello()).await }
    })
    .await;
    assert_eq!(reply.unwrap_err().code(), Code::Unavailable, "the last attempt's error");
    assert_eq!(events.count(), 0, "no retry past the deadline");
    assert_eq!(server.stats().requests(), 1);

    // Already spent: nothing is sent, the breaker is not asked.
    state.reset();
    let reply = handle("1n", move || {
        let mut client = client.clone();
        async move { client.unary(hello()).await }
    })
    .await;
    let status = reply.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(!find_error::<DeadlineExceeded>(&status).unwrap().was_sent());
    assert_eq!(server.stats().requests(), 1, "not sent");
    assert_eq!(state.snapshot().consecutive_failures, 0);
}
