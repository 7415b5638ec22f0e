//! The precedence table of the crate docs, row by row, for both kinds of
//! layer: a per-call timeout bounds each attempt (an `Attempt` layer honours
//! it, a `Total` layer ignores it); route override, layer timeout and the
//! deadlines apply to both. Paused time.
#![allow(clippy::disallowed_types, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_timeout::{DeadlineExceeded, TimedOut, TimeoutKind, TimeoutLayer, with_deadline};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const ROUTE: &str = "/echo.Echo/Unary";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn layer(kind: TimeoutKind, route: Option<Duration>) -> TimeoutLayer<palisade_core::protocol::Grpc> {
    let mut builder = TimeoutLayer::builder().grpc().kind(kind).timeout(Some(secs(8)));
    if let Some(route) = route {
        builder = builder.route(ROUTE, Some(route));
    }
    builder.build().unwrap()
}

/// Calls a handler that takes 100 s through `layer`: which limit fired, and when.
async fn limit_of(
    layer: &TimeoutLayer<palisade_core::protocol::Grpc>,
    request: http::Request<Empty<Bytes>>,
) -> (BoxError, Duration) {
    let mut service = layer.layer(service_fn(|_: http::Request<Empty<Bytes>>| async {
        tokio::time::sleep(secs(100)).await;
        Ok::<_, BoxError>(http::Response::new(Empty::<Bytes>::new()))
    }));
    let start = Instant::now();
    let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    (err, start.elapsed())
}

fn request(per_call: Option<Duration>, deadline: Option<Duration>) -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::post(format!("http://peer{ROUTE}"))
        .body(Empty::new())
        .unwrap();
    if let Some(timeout) = per_call {
        request.call_options_mut().set_attempt_timeout(timeout);
    }
    if let Some(deadline) = deadline {
        request.call_options_mut().set_deadline(Deadline::after(deadline));
    }
    request
}

fn timed_out(err: &BoxError) -> &TimedOut {
    err.downcast_ref::<TimedOut>()
        .unwrap_or_else(|| panic!("not TimedOut: {err}"))
}

#[tokio::test(start_paused = true)]
async fn an_attempt_layer_honours_the_per_call_timeout_and_a_total_layer_ignores_it() {
    // Row 1: the per-call timeout.
    let (err, elapsed) = limit_of(
        &layer(TimeoutKind::Attempt, Some(secs(4))),
        request(Some(secs(2)), None),
    )
    .await;
    assert_eq!(timed_out(&err), &TimedOut::new(TimeoutKind::Attempt, secs(2)));
    assert_eq!(elapsed, secs(2));
    let (err, elapsed) = limit_of(&layer(TimeoutKind::Total, Some(secs(4))), request(Some(secs(2)), None)).await;
    assert_eq!(
        timed_out(&err),
        &TimedOut::new(TimeoutKind::Total, secs(4)),
        "a total layer keeps its route's limit"
    );
    assert_eq!(elapsed, secs(4));
    let (err, _) = limit_of(&layer(TimeoutKind::Total, None), request(Some(secs(2)), None)).await;
    assert_eq!(
        timed_out(&err),
        &TimedOut::new(TimeoutKind::Total, secs(8)),
        "or its own"
    );

    // Disabling the per-attempt timeout leaves a total layer's limit alone.
    let mut disabled = request(None, None);
    disabled.call_options_mut().disable_timeout();
    let (err, _) = limit_of(&layer(TimeoutKind::Total, None), disabled).await;
    assert_eq!(timed_out(&err).limit(), secs(8));
}

#[tokio::test(start_paused = true)]
async fn route_then_layer_timeout_for_both_kinds() {
    for kind in [TimeoutKind::Attempt, TimeoutKind::Total] {
        let (err, _) = limit_of(&layer(kind, Some(secs(4))), request(None, None)).await;
        assert_eq!(timed_out(&err), &TimedOut::new(kind, secs(4)), "{kind:?}: the route's");
        let (err, _) = limit_of(&layer(kind, None), request(None, None)).await;
        assert_eq!(timed_out(&err), &TimedOut::new(kind, secs(8)), "{kind:?}: the layer's");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadlines_bound_both_kinds() {
    for kind in [TimeoutKind::Attempt, TimeoutKind::Total] {
        // The call's own deadline.
        let (err, elapsed) = limit_of(&layer(kind, None), request(Some(secs(6)), Some(secs(3)))).await;
        let exceeded = err.downcast_ref::<DeadlineExceeded>().expect("DeadlineExceeded");
        assert_eq!((exceeded.budget(), elapsed), (Some(secs(3)), secs(3)), "{kind:?}");

        // The inherited deadline of the request being handled.
        let layer = layer(kind, None);
        let (err, elapsed) = with_deadline(Deadline::after(secs(5)), limit_of(&layer, request(None, None))).await;
        assert!(err.is::<DeadlineExceeded>(), "{kind:?}: {err}");
        assert_eq!(elapsed, secs(5));
    }
}
