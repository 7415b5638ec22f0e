//! A retry waiting out its backoff holds nothing of the response it retries
//! (issue 13, item 3), over a real hyper server: the 503's body, and with it
//! the bulkhead permit and the breaker's verdict the layers below put in it,
//! is settled before the backoff sleep starts.
//!
//! The server's fault status carries no `Retry-After`; a `map_response`
//! below the layers under test adds `Retry-After: 10` to each 503, as a
//! server pushing back would send it. The body stays the server's own.
#![allow(clippy::disallowed_types)]

mod stacked;

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
use palisade_core::protocol::Http;
use palisade_retry::RetryLayer;
use palisade_testkit::{HttpServer, http2_client};
use stacked::{Collect, ManualClock, RetryEvents, within};
use tower::{Layer, ServiceBuilder, ServiceExt};

fn add_retry_after<B>(mut response: http::Response<B>) -> http::Response<B> {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("10"));
    }
    response
}

fn get(server: &HttpServer, path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(server.uri(path).unwrap())
        .body(Default::default())
        .unwrap()
}

/// Retry -> Bulkhead(1 in flight, 1 queued for at most 1 s) -> hyper. While
/// call A waits out the 503's `Retry-After: 10`, call B gets the only permit
/// at once; before the fix A's permit stayed in the 503's body for the 10 s
/// and B timed out in the queue after 1 s.
#[tokio::test(start_paused = true)]
async fn during_the_backoff_another_call_gets_the_bulkhead_permit() {
    let _clock = ManualClock::hold();
    let server = HttpServer::start("h").await.unwrap();
    let events = RetryEvents::new();
    let bulkhead = BulkheadLayer::new(
        BulkheadConfig::builder()
            .max_concurrent(1)
            .max_queue(1)
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .protocol(Http::default());
    let permits = bulkhead.handle();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::builder().http().listener(events.clone()).build().unwrap())
        .layer(bulkhead)
        .map_response(add_retry_after)
        .service(Collect::new(http2_client()));

    server.faults().fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    let a = tokio::spawn(client.clone().oneshot(get(&server, "/a")));
    events.wait_for(1).await;
    assert_eq!(server.stats().requests(), 1);

    // B is served during A's backoff; before the fix it waited for A's permit
    // until its 1 s `max_wait` and failed with `BulkheadFull`.
    let mut b = Box::pin(client.clone().oneshot(get(&server, "/b")));
    // One poll: B is admitted, or queued with its 1 s wait armed from now.
    let pending = std::future::poll_fn(|cx| std::task::Poll::Ready(b.as_mut().poll(cx).is_pending())).await;
    assert!(pending);
    tokio::time::advance(Duration::from_secs(1)).await;
    let b = within("B answered", b).await;
    let b = b.unwrap_or_else(|e| panic!("B was not served during A's backoff: {e}"));
    assert_eq!(b.status(), StatusCode::OK);
    assert_eq!(server.stats().requests(), 2);
    assert_eq!(server.stats().last_path().as_deref(), Some("/b"));
    drop(b); // its permit rode in its body
    assert_eq!(permits.in_flight(), 0, "A holds no permit through its backoff");

    // A's retry goes out after the server's 10 s and succeeds.
    tokio::time::advance(Duration::from_secs(9)).await;
    let a = within("A answered", a).await.unwrap().unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(server.stats().requests(), 3);
    assert_eq!(server.stats().last_path().as_deref(), Some("/a"));
    assert_eq!(
        permits.in_flight(),
        1,
        "A's answer holds its permit until its body is read"
    );
    drop(a);
    assert_eq!(permits.in_flight(), 0);
}

/// Retry -> Breaker -> hyper: the breaker has counted the 503 before the
/// retry is sent (before the fix its verdict waited in the held body until
/// the retry started, 10 s later, while other callers kept coming).
#[tokio::test(start_paused = true)]
async fn the_breaker_below_counts_the_503_before_the_retry_is_sent() {
    let _clock = ManualClock::hold();
    let server = HttpServer::start("h").await.unwrap();
    let events = RetryEvents::new();
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(3).build().unwrap())
        .protocol(Http::default());
    let state = breaker.handle();
    let client = RetryLayer::builder()
        .http()
        .listener(events.clone())
        .build()
        .unwrap()
        .layer(breaker.layer(tower::util::MapResponse::new(
            Collect::new(http2_client()),
            add_retry_after as fn(_) -> _,
        )));

    server.faults().fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    let call = tokio::spawn(client.oneshot(get(&server, "/a")));
    events.wait_for(1).await;
    assert_eq!(server.stats().requests(), 1, "the retry is not sent yet");
    assert_eq!(
        state.snapshot().consecutive_failures,
        1,
        "the 503 was counted during the backoff, before the retry"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    let response = within("the retry answers", call).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().requests(), 2);
    assert_eq!(state.state(), CircuitState::Closed);
}

/// Ready for the first `allow` readiness polls (across clones), then never:
/// a connection pool that cannot hand out a connection any more.
#[derive(Clone)]
struct ReadyFor<S> {
    inner: S,
    allow: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for ReadyFor<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        use std::sync::atomic::Ordering;
        if self
            .allow
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.inner.poll_ready(cx)
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// The kept head of a retried 503 stands as the call's response when the
/// next attempt cannot be sent before the deadline; it goes out with an
/// empty body, so it must not announce the dropped body's length (brief
/// fix13, item 5). Served on by a hyper server, a stale `content-length`
/// would make the downstream client fail reading a body that never comes.
#[tokio::test(start_paused = true)]
async fn the_kept_head_has_no_framing_of_the_dropped_body() {
    use palisade_core::options::{CallOptionsExt, Deadline};
    let _clock = ManualClock::hold();
    let server = HttpServer::start("h").await.unwrap();
    server.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let events = RetryEvents::new();
    let inner = ReadyFor {
        inner: Collect::new(http2_client()),
        allow: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1)),
    };
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .http()
                .backoff(
                    palisade_core::backoff::Backoff::constant(Duration::from_millis(10))
                        .jitter(palisade_core::backoff::Jitter::None)
                        .build()
                        .unwrap(),
                )
                .listener(events.clone())
                .build()
                .unwrap(),
        )
        .service(inner);
    let mut request = get(&server, "/");
    request
        .call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(100)));
    let call = tokio::spawn(client.oneshot(request));
    events.wait_for(1).await;
    // The backoff, then the deadline while the service is not ready.
    tokio::time::advance(Duration::from_millis(100)).await;
    let response = within("the call ends", call).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.stats().requests(), 1);
    assert!(
        response.headers().get(http::header::CONTENT_LENGTH).is_none(),
        "a dropped body's length: {:?}",
        response.headers()
    );
    assert!(response.headers().get(http::header::TRANSFER_ENCODING).is_none());

    // Served on through hyper, the response reads to its (empty) end.
    let (parts, body) = response.into_parts();
    let head = std::sync::Arc::new(parking_lot::Mutex::new(Some(parts)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(body);
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
            let parts = head.lock().take().unwrap();
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::from_parts(
                    parts,
                    http_body_util::Empty::<bytes::Bytes>::new(),
                ))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let downstream = within(
        "the downstream call",
        sender.send_request(http::Request::new(http_body_util::Empty::<bytes::Bytes>::new())),
    )
    .await
    .unwrap();
    assert_eq!(downstream.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = within(
        "the downstream body",
        http_body_util::BodyExt::collect(downstream.into_body()),
    )
    .await;
    assert!(body.is_ok(), "the body reads to its end: {body:?}");
}
