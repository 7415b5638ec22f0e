//! Behaviour of `TimeoutLayer` and `DeadlineServerLayer`, in paused time.
#![allow(clippy::disallowed_types, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty, StreamBody};
use palisade_core::event::{Event, EventKind};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_timeout::{
    DeadlineExceeded, DeadlineServerLayer, TimedOut, TimeoutKind, TimeoutLayer, current_deadline, with_deadline,
};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Counts how many times it was called and how many of its futures were dropped unfinished.
#[derive(Clone, Default)]
struct Probe {
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Probe {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

struct DropFlag(Arc<AtomicUsize>, bool);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An http handler taking `delay`, recording what it saw.
type Seen = Arc<parking_lot::Mutex<Vec<(Option<HeaderValue>, Option<Deadline>)>>>;

fn slow_http(
    delay: Duration,
    probe: Probe,
    seen: Seen,
) -> impl Service<http::Request<Empty<Bytes>>, Response = http::Response<Empty<Bytes>>, Error = BoxError> + Clone {
    service_fn(move |request: http::Request<Empty<Bytes>>| {
        probe.calls.fetch_add(1, Ordering::SeqCst);
        seen.lock()
            .push((request.headers().get("grpc-timeout").cloned(), request.deadline()));
        let dropped = probe.dropped.clone();
        async move {
            let mut flag = DropFlag(dropped, false);
            tokio::time::sleep(delay).await;
            flag.1 = true;
            Ok::<_, BoxError>(http::Response::new(Empty::new()))
        }
    })
}

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::post("http://peer/echo.Echo/Unary")
        .body(Empty::new())
        .unwrap()
}

async fn call<S>(service: &mut S, request: http::Request<Empty<Bytes>>) -> (Result<S::Response, BoxError>, Duration)
where
    S: Service<http::Request<Empty<Bytes>>, Error = BoxError>,
{
    let start = Instant::now();
    let result = service.ready().await.unwrap().call(request).await;
    (result, start.elapsed())
}

fn timed_out(err: &BoxError) -> &TimedOut {
    err.downcast_ref::<TimedOut>()
        .unwrap_or_else(|| panic!("not TimedOut: {err}"))
}

fn deadline_exceeded(err: &BoxError) -> &DeadlineExceeded {
    err.downcast_ref::<DeadlineExceeded>()
        .unwrap_or_else(|| panic!("not DeadlineExceeded: {err}"))
}

#[tokio::test(start_paused = true)]
async fn precedence_per_call_over_route_over_layer() {
    let probe = Probe::default();
    let layer = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(secs(5)))
        .route("/echo.Echo/Unary", Some(secs(4)))
        .build()
        .unwrap();
    let mut service = layer.layer(slow_http(secs(10), probe.clone(), Seen::default()));

    // Per-call 2 s wins.
    let mut req = request();
    req.call_options_mut().set_timeout(secs(2));
    let (result, elapsed) = call(&mut service, req).await;
    let err = result.unwrap_err();
    assert_eq!(timed_out(&err), &TimedOut::new(TimeoutKind::Attempt, secs(2)));
    assert_eq!(elapsed, secs(2));
    assert_eq!(probe.dropped(), 1, "the handler's future is dropped on timeout");

    // No per-call option: the route's 4 s.
    let (result, elapsed) = call(&mut service, request()).await;
    assert_eq!(timed_out(&result.unwrap_err()).limit(), secs(4));
    assert_eq!(elapsed, secs(4));

    // Another route: the layer's 5 s.
    let other = http::Request::post("http://peer/echo.Echo/Other")
        .body(Empty::new())
        .unwrap();
    let (result, elapsed) = call(&mut service, other).await;
    assert_eq!(timed_out(&result.unwrap_err()).limit(), secs(5));
    assert_eq!(elapsed, secs(5));
}

#[tokio::test(start_paused = true)]
async fn the_30s_default_holds_without_a_per_call_option() {
    let probe = Probe::default();
    let mut service =
        TimeoutLayer::builder()
            .http()
            .build()
            .unwrap()
            .layer(slow_http(secs(60), probe.clone(), Seen::default()));
    let (result, elapsed) = call(&mut service, request()).await;
    let err = result.unwrap_err();
    assert_eq!(timed_out(&err), &TimedOut::new(TimeoutKind::Attempt, secs(30)));
    assert!(timed_out(&err).is_retryable());
    assert_eq!(elapsed, secs(30));

    // Plain protocol, default layer: the same 30 s.
    let mut plain = TimeoutLayer::default().layer(service_fn(|()| async {
        tokio::time::sleep(secs(31)).await;
        Ok::<_, Infallible>(())
    }));
    let start = Instant::now();
    let err = plain.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(timed_out(&err).limit(), secs(30));
    assert_eq!(start.elapsed(), secs(30));
    // Well within 30 s, the call succeeds.
    let mut fast = TimeoutLayer::default().layer(service_fn(|()| async {
        tokio::time::sleep(secs(29)).await;
        Ok::<_, Infallible>(7)
    }));
    assert_eq!(fast.ready().await.unwrap().call(()).await.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn parent_deadline_bounds_the_child_and_an_expired_one_is_never_sent() {
    let probe = Probe::default();
    let seen = Seen::default();
    let mut service =
        TimeoutLayer::builder()
            .grpc()
            .build()
            .unwrap()
            .layer(slow_http(secs(10), probe.clone(), seen.clone()));

    let parent = Deadline::after(secs(1));
    tokio::time::advance(Duration::from_millis(600)).await;
    let mut req = request();
    req.call_options_mut().set_deadline(parent);
    let (result, elapsed) = call(&mut service, req).await;
    let err = result.unwrap_err();
    let exceeded = deadline_exceeded(&err);
    assert!(exceeded.was_sent());
    assert_eq!(
        exceeded.budget(),
        Some(Duration::from_millis(400)),
        "child limit is 400 ms"
    );
    assert_eq!(elapsed, Duration::from_millis(400));
    assert_eq!(seen.lock()[0].0.as_ref().unwrap(), "400m");
    assert_eq!(probe.calls(), 1);

    // At 1 s spent: never called.
    let mut req = request();
    req.call_options_mut().set_deadline(parent);
    let (result, elapsed) = call(&mut service, req).await;
    assert!(!deadline_exceeded(&result.unwrap_err()).was_sent());
    assert_eq!(elapsed, Duration::ZERO);
    assert_eq!(probe.calls(), 1, "the inner service is never called");
}

#[tokio::test(start_paused = true)]
async fn expired_deadline_never_reaches_the_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<http::Request<Empty<Bytes>>, http::Response<Empty<Bytes>>>();
    let mut service = TimeoutLayer::builder().http().build().unwrap().layer(mock);
    let mut req = request();
    req.call_options_mut().set_deadline(Deadline::after(Duration::ZERO));
    handle.allow(1);
    let err = service.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(!deadline_exceeded(&err).was_sent());
    assert!(
        futures::FutureExt::now_or_never(handle.next_request()).is_none(),
        "the mock must not have received the request"
    );
    // The inner service is still ready for the next call, which goes through.
    let pending = tokio::spawn(service.call(request()));
    let (req, respond) = handle.next_request().await.unwrap();
    assert!(
        req.headers().get("grpc-timeout").is_none(),
        "http does not write grpc-timeout"
    );
    respond.send_response(http::Response::new(Empty::new()));
    assert!(pending.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn timeout_shorter_than_deadline_is_timed_out_and_longer_is_deadline() {
    let mut service = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(secs(2)))
        .kind(TimeoutKind::Total)
        .build()
        .unwrap()
        .layer(slow_http(secs(10), Probe::default(), Seen::default()));
    let mut req = request();
    req.call_options_mut().set_deadline(Deadline::after(secs(3)));
    let (result, elapsed) = call(&mut service, req).await;
    let err = result.unwrap_err();
    assert_eq!(timed_out(&err), &TimedOut::new(TimeoutKind::Total, secs(2)));
    assert!(!timed_out(&err).is_retryable());
    assert_eq!(elapsed, secs(2));

    let mut req = request();
    req.call_options_mut().set_deadline(Deadline::after(secs(1)));
    let (result, elapsed) = call(&mut service, req).await;
    assert_eq!(deadline_exceeded(&result.unwrap_err()).budget(), Some(secs(1)));
    assert_eq!(elapsed, secs(1));
}

#[tokio::test(start_paused = true)]
async fn disabled_timeouts_create_no_limit() {
    let probe = Probe::default();
    let seen = Seen::default();
    // Layer disabled, no deadline: a 100 s call completes and no grpc-timeout is sent.
    let mut service = TimeoutLayer::builder()
        .grpc()
        .timeout(None)
        .build()
        .unwrap()
        .layer(slow_http(secs(100), probe.clone(), seen.clone()));
    let (result, elapsed) = call(&mut service, request()).await;
    assert!(result.is_ok());
    assert_eq!(elapsed, secs(100));
    assert!(seen.lock()[0].0.is_none());

    // The per-call option disables a layer timeout for one call.
    let mut service = TimeoutLayer::builder()
        .http()
        .timeout(Some(secs(1)))
        .build()
        .unwrap()
        .layer(slow_http(secs(100), probe.clone(), seen.clone()));
    let mut req = request();
    req.call_options_mut().disable_timeout();
    let (result, _) = call(&mut service, req).await;
    assert!(result.is_ok());
    // ...but not the deadline.
    let mut req = request();
    req.call_options_mut()
        .disable_timeout()
        .set_deadline(Deadline::after(secs(3)));
    let (result, elapsed) = call(&mut service, req).await;
    assert!(deadline_exceeded(&result.unwrap_err()).was_sent());
    assert_eq!(elapsed, secs(3));
    // A route override of None disables it on that route.
    let mut service = TimeoutLayer::builder()
        .http()
        .timeout(Some(secs(1)))
        .route("/echo.Echo/Unary", None)
        .build()
        .unwrap()
        .layer(slow_http(secs(100), probe, seen));
    assert!(call(&mut service, request()).await.0.is_ok());
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    #[derive(Debug)]
    struct Boom;
    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom")
        }
    }
    impl std::error::Error for Boom {}
    let mut service = TimeoutLayer::new(secs(1)).layer(service_fn(|()| async { Err::<(), _>(Boom) }));
    let err = service.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<Boom>());
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_keeps_a_shorter_one_and_http_header_is_written() {
    let seen = Seen::default();
    let mut service = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap()
        .layer(slow_http(Duration::ZERO, Probe::default(), seen.clone()));
    let mut req = request();
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("100m"));
    call(&mut service, req).await.0.unwrap();
    let mut req = request();
    req.headers_mut().insert("grpc-timeout", HeaderValue::from_static("9S"));
    call(&mut service, req).await.0.unwrap();
    let headers: Vec<_> = seen.lock().iter().map(|(h, _)| h.clone().unwrap()).collect();
    assert_eq!(headers, ["100m", "300m"]);

    // A hyper client: milliseconds in a header of the user's choice.
    let name = HeaderName::from_static("x-timeout-ms");
    let captured = Arc::new(parking_lot::Mutex::new(None));
    let c = captured.clone();
    let header = name.clone();
    let mut service = TimeoutLayer::builder()
        .http()
        .timeout(Some(Duration::from_micros(1_500_900)))
        .propagate_header(name)
        .build()
        .unwrap()
        .layer(service_fn(move |req: http::Request<Empty<Bytes>>| {
            *c.lock() = req.headers().get(&header).cloned();
            assert!(req.headers().get("grpc-timeout").is_none());
            async { Ok::<_, BoxError>(http::Response::new(Empty::<Bytes>::new())) }
        }));
    call(&mut service, request()).await.0.unwrap();
    assert_eq!(captured.lock().as_ref().unwrap(), "1500");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_of_the_request_being_handled_is_inherited() {
    let seen = Seen::default();
    let probe = Probe::default();
    let mut service =
        TimeoutLayer::builder()
            .grpc()
            .build()
            .unwrap()
            .layer(slow_http(secs(10), probe.clone(), seen.clone()));
    let parent = Deadline::after(secs(1));
    let (result, elapsed) = with_deadline(parent, async {
        assert_eq!(current_deadline(), Some(parent));
        call(&mut service, request()).await
    })
    .await;
    assert_eq!(deadline_exceeded(&result.unwrap_err()).budget(), Some(secs(1)));
    assert_eq!(elapsed, secs(1));
    let first = seen.lock()[0].clone();
    assert_eq!(first.0.unwrap(), "1000m");
    assert_eq!(
        first.1,
        Some(parent),
        "the inherited deadline is written into the call's options"
    );

    // The inherited deadline has passed: not sent.
    let (result, _) = with_deadline(parent, call(&mut service, request())).await;
    assert!(!deadline_exceeded(&result.unwrap_err()).was_sent());
    assert_eq!(probe.calls(), 1);
    // Outside the scope nothing is inherited.
    assert_eq!(current_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_the_own_and_the_inherited_deadline_wins() {
    let seen = Seen::default();
    let mut service =
        TimeoutLayer::builder()
            .grpc()
            .build()
            .unwrap()
            .layer(slow_http(secs(10), Probe::default(), seen.clone()));
    let parent = Deadline::after(secs(1));
    let own = Deadline::after(secs(5));
    // The request asks for 5 s, its parent has 1 s left: 1 s.
    let mut req = request();
    req.call_options_mut().set_deadline(own);
    let (result, elapsed) = with_deadline(parent, call(&mut service, req)).await;
    assert_eq!(deadline_exceeded(&result.unwrap_err()).budget(), Some(secs(1)));
    assert_eq!(elapsed, secs(1));
    assert_eq!(seen.lock()[0].1, Some(parent), "lower layers see the tighter deadline");
    // The request asks for 1 s inside a 5 s parent: 1 s.
    let (own, parent) = (Deadline::after(secs(1)), Deadline::after(secs(5)));
    let mut req = request();
    req.call_options_mut().set_deadline(own);
    let (result, elapsed) = with_deadline(parent, call(&mut service, req)).await;
    assert_eq!(deadline_exceeded(&result.unwrap_err()).budget(), Some(secs(1)));
    assert_eq!(elapsed, secs(1));
    assert_eq!(seen.lock()[1].1, Some(own));
}

#[tokio::test(start_paused = true)]
async fn server_layer_reads_the_header_and_scopes_the_handler() {
    let observed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let o = observed.clone();
    let handler = service_fn(move |req: http::Request<()>| {
        let o = o.clone();
        let from_extension = req.extensions().get::<Deadline>().copied();
        let from_options = req.deadline();
        async move {
            tokio::time::sleep(MS).await;
            o.lock().push((from_extension, from_options, current_deadline()));
            Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
        }
    });
    let mut server = DeadlineServerLayer::new()
        .header(HeaderName::from_static("x-timeout-ms"))
        .layer(handler);
    let with = |name: &str, value: &str| {
        http::Request::builder()
            .header(name, HeaderValue::from_str(value).unwrap())
            .body(())
            .unwrap()
    };
    let start = Instant::now();
    for req in [
        with("grpc-timeout", "250m"),
        with("x-timeout-ms", "400"),
        with("grpc-timeout", "123456789m"), // oversized: ignored
        with("grpc-timeout", "-1S"),        // invalid: ignored
        with("grpc-timeout", "5"),          // missing unit: ignored
        http::Request::new(()),
    ] {
        server.ready().await.unwrap().call(req).await.unwrap();
    }
    let observed = observed.lock();
    assert_eq!(observed.len(), 6);
    let at = |ms: u64| Some(Deadline::at(start + Duration::from_millis(ms)));
    assert_eq!(observed[0], (at(250), at(250), at(250)));
    assert_eq!(observed[1], (at(401), at(401), at(401)));
    for (i, seen) in observed.iter().enumerate().skip(2) {
        assert_eq!(*seen, (None, None, None), "request {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn server_layer_scopes_the_response_body() {
    use http_body::Frame;
    // A streaming handler whose body calls a client per frame.
    let handler = service_fn(|_req: http::Request<()>| async {
        let frames = futures::stream::poll_fn(|_| {
            let deadline = current_deadline()
                .map(|d| d.remaining().as_millis().to_string())
                .unwrap_or_default();
            std::task::Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(Bytes::from(deadline)))))
        });
        Ok::<_, Infallible>(http::Response::new(StreamBody::new(futures::StreamExt::take(
            frames, 1,
        ))))
    });
    let mut server = DeadlineServerLayer::new().layer(handler);
    let req = http::Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
    let response = server.ready().await.unwrap().call(req).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "2000");
}

#[tokio::test(start_paused = true)]
async fn body_limits_end_a_stalled_body_with_a_typed_error() {
    let layer = TimeoutLayer::builder()
        .http()
        .body_idle_timeout(secs(2))
        .body_timeout(secs(5))
        .build()
        .unwrap();
    // A body that sends one frame per 3 s, forever.
    let stalled = || {
        service_fn(|_req: http::Request<Empty<Bytes>>| async {
            let frames = futures::stream::unfold((), |()| async {
                tokio::time::sleep(secs(3)).await;
                Some((
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"x"))),
                    (),
                ))
            });
            Ok::<_, BoxError>(http::Response::new(StreamBody::new(frames)))
        })
    };
    let mut service = layer.layer(stalled());
    let start = Instant::now();
    let response = service.ready().await.unwrap().call(request()).await.unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert_eq!(timed_out(&err), &TimedOut::new(TimeoutKind::BodyIdle, secs(2)));
    assert_eq!(start.elapsed(), secs(2));

    // Frames every 1 s: never idle for 2 s, but the 5 s total ends it.
    let layer = TimeoutLayer::builder()
        .http()
        .body_idle_timeout(secs(2))
        .body_timeout(secs(5))
        .build()
        .unwrap();
    let mut service = layer.layer(service_fn(|_req: http::Request<Empty<Bytes>>| async {
        let frames = futures::stream::unfold((), |()| async {
            tokio::time::sleep(secs(1)).await;
            Some((
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        Ok::<_, BoxError>(http::Response::new(StreamBody::new(frames)))
    }));
    let start = Instant::now();
    let response = service.ready().await.unwrap().call(request()).await.unwrap();
    // A breaker above sees the body end in an error: a failure.
    let ended = Arc::new(parking_lot::Mutex::new(None));
    let e = ended.clone();
    let body = palisade_body::CompletionBody::new(response.into_body(), move |end: palisade_body::BodyEnd<'_>| {
        if let palisade_body::BodyEnd::Error(error) = end {
            *e.lock() = error.downcast_ref::<TimedOut>().map(TimedOut::kind);
        }
    });
    let err = body.collect().await.unwrap_err();
    assert_eq!(timed_out(&err).kind(), TimeoutKind::Body);
    assert_eq!(start.elapsed(), secs(5));
    assert_eq!(*ended.lock(), Some(TimeoutKind::Body));
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_timeouts_and_rejections() {
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let e = events.clone();
    let layer = TimeoutLayer::builder()
        .http()
        .timeout(Some(secs(1)))
        .listener(Arc::new(move |event: &Event<'_>| {
            e.lock().push(match event.kind {
                EventKind::TimedOut { kind, limit } => format!("timed_out {kind} {limit:?}"),
                EventKind::Rejected { reason } => format!("rejected {reason}"),
                other => format!("{other:?}"),
            });
        }))
        .build()
        .unwrap();
    let mut service = layer.layer(slow_http(secs(10), Probe::default(), Seen::default()));
    call(&mut service, request()).await.0.unwrap_err();
    let mut req = request();
    req.call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(500)));
    call(&mut service, req).await.0.unwrap_err();
    let mut req = request();
    req.call_options_mut().set_deadline(Deadline::after(Duration::ZERO));
    call(&mut service, req).await.0.unwrap_err();
    assert_eq!(
        *events.lock(),
        [
            "timed_out attempt 1s",
            "timed_out deadline 500ms",
            "rejected deadline exceeded before send"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_drops_the_inner_one() {
    let probe = Probe::default();
    let mut service = TimeoutLayer::new(secs(5)).layer(slow_http(secs(10), probe.clone(), Seen::default()));
    let mut fut = tokio_test::task::spawn(service.ready().await.unwrap().call(request()));
    assert!(fut.poll().is_pending());
    drop(fut);
    assert_eq!(probe.dropped(), 1);
    // And a timed-out call's inner future is gone before the error is returned.
    let mut fut = tokio_test::task::spawn(service.ready().await.unwrap().call(request()));
    assert!(fut.poll().is_pending());
    tokio::time::advance(secs(5)).await;
    assert!(fut.poll().is_ready());
    assert_eq!(probe.dropped(), 2);
    drop(fut);
}

#[tokio::test(start_paused = true)]
async fn services_from_one_layer_share_its_configuration() {
    let layer = TimeoutLayer::builder().http().timeout(Some(secs(3))).build().unwrap();
    let mut a = layer.layer(slow_http(secs(10), Probe::default(), Seen::default()));
    let mut b = a.clone();
    let mut c = layer
        .clone()
        .layer(slow_http(secs(10), Probe::default(), Seen::default()));
    for s in [&mut a, &mut b] {
        assert_eq!(timed_out(&call(s, request()).await.0.unwrap_err()).limit(), secs(3));
    }
    assert_eq!(
        timed_out(&call(&mut c, request()).await.0.unwrap_err()).limit(),
        secs(3)
    );
    assert_eq!(layer.timeout(), Some(secs(3)));
}

mod model {
    //! The outcome of a call against a small reference model of the precedence rules.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        Ok,
        TimedOut(Duration),
        Deadline(Duration),
        NotSent,
    }

    fn model(
        layer: Option<u64>,
        route: Option<Option<u64>>,
        per_call: Option<u64>,
        deadline_left: Option<u64>,
        handler: u64,
    ) -> (Expect, u64) {
        let timeout = match per_call {
            Some(0) => None,
            Some(t) => Some(t),
            None => route.unwrap_or(layer),
        };
        let limit = match (timeout, deadline_left) {
            (_, Some(0)) => return (Expect::NotSent, 0),
            (Some(t), Some(d)) if t < d => Some((t, Expect::TimedOut(Duration::from_millis(t)))),
            (_, Some(d)) => Some((d, Expect::Deadline(Duration::from_millis(d)))),
            (Some(t), None) => Some((t, Expect::TimedOut(Duration::from_millis(t)))),
            (None, None) => None,
        };
        match limit {
            // A response that is ready when the timer fires wins.
            Some((t, expect)) if t < handler => (expect, t),
            _ => (Expect::Ok, handler),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn precedence_matches_the_model(
            layer in proptest::option::of(1u64..50),
            route in proptest::option::of(proptest::option::of(1u64..50)),
            per_call in proptest::option::of(0u64..50),
            deadline_left in proptest::option::of(0u64..50),
            handler in 0u64..60,
            inherited in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let (outcome, elapsed) = rt.block_on(async {
                let mut builder = TimeoutLayer::builder().http().timeout(layer.map(Duration::from_millis));
                if let Some(route) = route {
                    builder = builder.route("/echo.Echo/Unary", route.map(Duration::from_millis));
                }
                let mut service = builder.build().unwrap().layer(slow_http(Duration::from_millis(handler), Probe::default(), Seen::default()));
                let mut req = request();
                if let Some(t) = per_call {
                    req.call_options_mut().set_timeout(Duration::from_millis(t));
                }
                let deadline = deadline_left.map(|d| Deadline::after(Duration::from_millis(d)));
                let run = async {
                    if let (Some(d), false) = (deadline, inherited) {
                        req.call_options_mut().set_deadline(d);
                    }
                    call(&mut service, req).await
                };
                let (result, elapsed) = match (deadline, inherited) {
                    (Some(d), true) => with_deadline(d, run).await,
                    _ => run.await,
                };
                let outcome = match result {
                    Ok(_) => Expect::Ok,
                    Err(e) if e.is::<TimedOut>() => Expect::TimedOut(timed_out(&e).limit()),
                    Err(e) => match deadline_exceeded(&e).budget() {
                        Some(b) => Expect::Deadline(b),
                        None => Expect::NotSent,
                    },
                };
                (outcome, elapsed)
            });
            let (expect, expect_elapsed) = model(layer, route, per_call, deadline_left, handler);
            prop_assert_eq!(outcome, expect);
            prop_assert_eq!(elapsed, Duration::from_millis(expect_elapsed));
        }
    }
}

#[derive(Debug)]
struct InnerError(&'static str);
impl std::fmt::Display for InnerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for InnerError {}

/// An http service that fails with `InnerError` after `after` (at once for zero).
fn failing_http_after(
    after: Duration,
) -> impl Service<http::Request<Empty<Bytes>>, Response = http::Response<Empty<Bytes>>, Error = BoxError> + Clone {
    service_fn(move |_: http::Request<Empty<Bytes>>| async move {
        if !after.is_zero() {
            tokio::time::sleep(after).await;
        }
        Err::<http::Response<Empty<Bytes>>, BoxError>(Box::new(InnerError("the channel's own timer fired")))
    })
}

#[tokio::test(start_paused = true)]
async fn an_inner_grpc_error_at_the_limit_is_reported_as_the_limit() {
    // This call wrote `grpc-timeout`, and the inner service (as tonic's
    // channel does with that header) fails at the same moment as our timer.
    let layer = TimeoutLayer::builder().grpc().timeout(Some(secs(1))).build().unwrap();
    let mut service = layer.layer(failing_http_after(secs(1)));
    let err = call(&mut service, request()).await.0.unwrap_err();
    assert_eq!(
        (timed_out(&err).kind(), timed_out(&err).limit()),
        (TimeoutKind::Attempt, secs(1))
    );
    // The same with a deadline as the limit.
    let mut req = request();
    req.call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(700)));
    let mut service = layer.layer(failing_http_after(Duration::from_millis(700)));
    let err = call(&mut service, req).await.0.unwrap_err();
    assert_eq!(deadline_exceeded(&err).budget(), Some(Duration::from_millis(700)));
    // An error well before the limit is the inner service's own.
    let mut service = layer.layer(failing_http_after(Duration::from_millis(900)));
    let err = call(&mut service, request()).await.0.unwrap_err();
    assert!(err.is::<InnerError>());
    // A shorter `grpc-timeout` already on the request is kept, so this call
    // wrote none: an error at the limit is not ours to claim. (One equal to
    // our limit, as a retry above writes from the same deadline, is ours.)
    let mut req = request();
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("900m"));
    let mut service = layer.layer(failing_http_after(secs(1)));
    let err = call(&mut service, req).await.0.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn http_and_plain_inner_errors_at_the_limit_pass_through_untouched() {
    // Http: no grpc-timeout written, so nobody below enforces our limit.
    let mut service = TimeoutLayer::builder()
        .http()
        .timeout(Some(secs(1)))
        .build()
        .unwrap()
        .layer(failing_http_after(secs(1)));
    let err = call(&mut service, request()).await.0.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
    // Plain: any request type, same.
    let mut service = TimeoutLayer::new(secs(1)).layer(service_fn(|()| async {
        tokio::time::sleep(secs(1)).await;
        Err::<(), _>(InnerError("connection refused"))
    }));
    let err = service.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
    // An immediate error with 500 µs left: the call was never pending.
    let mut service = TimeoutLayer::new(Duration::from_micros(500))
        .layer(service_fn(|()| async { Err::<(), _>(InnerError("circuit open")) }));
    let err = service.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_immediate_inner_error_with_little_time_left_passes_through() {
    // gRPC, header written, 500 µs left, but the inner error is immediate:
    // the timer was never armed, so it is not our limit firing.
    let layer = TimeoutLayer::builder().grpc().build().unwrap();
    let mut req = request();
    req.call_options_mut()
        .set_deadline(Deadline::after(Duration::from_micros(500)));
    let mut service = layer.layer(failing_http_after(Duration::ZERO));
    let err = call(&mut service, req).await.0.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
    // The same with a 500 µs timeout.
    let mut req = request();
    req.call_options_mut().set_timeout(Duration::from_micros(500));
    let err = call(&mut service, req).await.0.unwrap_err();
    assert!(err.is::<InnerError>(), "{err}");
    // A DeadlineExceeded from below is claimed only at our own limit: an
    // immediate one passes through as it is.
    let mut service = layer.layer(service_fn(|_: http::Request<Empty<Bytes>>| async {
        Err::<http::Response<Empty<Bytes>>, BoxError>(DeadlineExceeded::before_send().into())
    }));
    let err = call(&mut service, request()).await.0.unwrap_err();
    assert!(!deadline_exceeded(&err).was_sent());
}

#[tokio::test(start_paused = true)]
async fn a_total_limit_reaches_the_attempt_layer_below() {
    let total = |grpc_timeout: bool| {
        TimeoutLayer::builder()
            .grpc()
            .kind(TimeoutKind::Total)
            .timeout(Some(secs(1)))
            .propagate_grpc_timeout(grpc_timeout)
            .build()
            .unwrap()
    };
    // A default (30 s) per-attempt layer below a 1 s total one.
    let attempt = TimeoutLayer::builder().grpc().build().unwrap();
    for grpc_timeout in [false, true] {
        let seen = Seen::default();
        let probe = Probe::default();
        let mut service = total(grpc_timeout).layer(attempt.layer(slow_http(secs(10), probe.clone(), seen.clone())));
        let start = Instant::now();
        let (result, elapsed) = call(&mut service, request()).await;
        let err = result.unwrap_err();
        assert_eq!(
            (timed_out(&err).kind(), timed_out(&err).limit()),
            (TimeoutKind::Total, secs(1)),
            "propagate {grpc_timeout}"
        );
        assert_eq!(elapsed, secs(1));
        assert_eq!(probe.dropped(), 1, "the inner call is cancelled");
        let (header, deadline) = seen.lock()[0].clone();
        let header = palisade_timeout::grpc_timeout::parse_header(&header.unwrap()).unwrap();
        assert!(header <= secs(1), "the attempt sent {header:?}");
        assert_eq!(
            deadline,
            Some(Deadline::at(start + secs(1))),
            "the total's deadline travels"
        );
    }

    // Over http, the layer below fails with DeadlineExceeded at the total's
    // limit: reported as the total's TimedOut.
    let seen = Seen::default();
    let total = TimeoutLayer::builder()
        .http()
        .kind(TimeoutKind::Total)
        .timeout(Some(secs(1)))
        .build()
        .unwrap();
    let attempt = TimeoutLayer::builder().http().build().unwrap();
    let mut service = total.layer(attempt.layer(slow_http(secs(10), Probe::default(), seen.clone())));
    let err = call(&mut service, request()).await.0.unwrap_err();
    assert_eq!(timed_out(&err).kind(), TimeoutKind::Total);

    // A shorter attempt below fires first and is reported as the attempt's.
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut service = total.layer(attempt.layer(slow_http(secs(10), Probe::default(), seen)));
    let (result, elapsed) = call(&mut service, request()).await;
    let err = result.unwrap_err();
    assert_eq!(timed_out(&err).kind(), TimeoutKind::Attempt);
    assert_eq!(elapsed, Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn nested_deadline_scopes_take_the_minimum_when_polled() {
    // Built outside any scope with 5 s, awaited inside a 1 s scope: 1 s.
    let inner = with_deadline(Deadline::after(secs(5)), async { current_deadline() });
    let outer = Deadline::after(secs(1));
    assert_eq!(with_deadline(outer, inner).await, Some(outer));
    // The other way round: the inner, earlier one wins.
    let early = Deadline::after(secs(1));
    let inner = with_deadline(early, async { current_deadline() });
    assert_eq!(with_deadline(Deadline::after(secs(5)), inner).await, Some(early));
    assert_eq!(current_deadline(), None);

    // A server future built outside a scope and awaited inside one keeps
    // the outer deadline instead of wiping it.
    let mut server = DeadlineServerLayer::new().layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(current_deadline()))
    }));
    let future = server.ready().await.unwrap().call(http::Request::new(()));
    let response = with_deadline(outer, future).await.unwrap();
    assert_eq!(*response.body().get_ref(), Some(outer));
    // And a request with a later grpc-timeout does not extend it.
    let req = http::Request::builder().header("grpc-timeout", "9S").body(()).unwrap();
    let future = server.ready().await.unwrap().call(req);
    let response = with_deadline(outer, future).await.unwrap();
    assert_eq!(*response.body().get_ref(), Some(outer));
}

#[test]
fn invalid_deadline_headers_are_reported_at_debug_level() {
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut server = DeadlineServerLayer::new().layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
    }));
    tracing::subscriber::with_default(subscriber, || {
        let req = http::Request::builder()
            .header("grpc-timeout", "123456789S")
            .body(())
            .unwrap();
        let response = rt.block_on(server.call(req)).unwrap();
        assert_eq!(response.body().deadline(), None);
    });
    let logged = String::from_utf8(capture.0.lock().clone()).unwrap();
    assert!(logged.contains("DEBUG"), "{logged}");
    assert!(logged.contains("invalid_deadline_header"), "{logged}");
    assert!(logged.contains("grpc-timeout"), "{logged}");
}

#[tokio::test(start_paused = true)]
async fn polling_after_completion_fails_with_the_typed_error() {
    use palisade_core::error::PolledAfterCompletion;
    use std::task::Poll;
    // Polled again, the future answers with the one typed error every
    // Palisade future uses (it used to stay pending forever).
    fn polled_again(poll: Poll<Result<impl std::fmt::Debug, palisade_core::BoxError>>) {
        match poll {
            Poll::Ready(Err(err)) => assert!(err.is::<PolledAfterCompletion>(), "{err}"),
            other => panic!("expected PolledAfterCompletion, got {other:?}"),
        }
    }
    // A response.
    let mut service = TimeoutLayer::new(secs(1)).layer(service_fn(|()| async { Ok::<_, Infallible>(7) }));
    let mut future = tokio_test::task::spawn(service.ready().await.unwrap().call(()));
    assert!(matches!(future.poll(), Poll::Ready(Ok(7))));
    polled_again(future.poll());
    // A timeout.
    let mut service = TimeoutLayer::new(secs(1)).layer(slow_http(secs(5), Probe::default(), Seen::default()));
    let mut future = tokio_test::task::spawn(service.ready().await.unwrap().call(request()));
    assert!(future.poll().is_pending());
    tokio::time::advance(secs(1)).await;
    match future.poll() {
        Poll::Ready(Err(err)) => assert_eq!(timed_out(&err).limit(), secs(1)),
        _ => panic!("expected the timeout"),
    }
    polled_again(future.poll());
    // A call refused before send answers once.
    let mut service =
        TimeoutLayer::builder()
            .http()
            .build()
            .unwrap()
            .layer(slow_http(secs(5), Probe::default(), Seen::default()));
    let mut req = request();
    req.call_options_mut().set_deadline(Deadline::after(Duration::ZERO));
    let mut future = tokio_test::task::spawn(service.ready().await.unwrap().call(req));
    match future.poll() {
        Poll::Ready(Err(err)) => assert!(!deadline_exceeded(&err).was_sent()),
        _ => panic!("expected DeadlineExceeded before send"),
    }
    polled_again(future.poll());
}
