//! http and gRPC responses are judged at the end of their body; abandoned
//! calls (bodies dropped, futures dropped, streamed probes) as the protocol's
//! `AbandonPolicy` says.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState, KeyedCircuitBreakerLayer};
use palisade_core::classify::{AbandonPolicy, Outcome, ProbeVerdict};
use palisade_core::error::{BoxError, CircuitOpen};
use palisade_core::protocol::{Grpc, Http};
use tower::{Layer, Service, ServiceExt};

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn body(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Body {
    StreamBody::new(futures::stream::iter(frames))
}

fn trailers(status: &'static str) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", http::HeaderValue::from_static(status));
    Frame::trailers(map)
}

/// Answers `/status/<grpc-status>` with a 200, a data frame and those trailers;
/// `/error` with a body that fails after one frame; `/http/<code>` with that status.
fn grpc_server()
-> impl Service<http::Request<()>, Response = http::Response<Body>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|req: http::Request<()>| async move {
        let path = req.uri().path().to_owned();
        let data = Ok(Frame::data(Bytes::from_static(b"msg")));
        let response = if let Some(code) = path.strip_prefix("/status/") {
            let code: &'static str = if code == "14" { "14" } else { "0" };
            http::Response::new(body(vec![data, Ok(trailers(code))]))
        } else if let Some(code) = path.strip_prefix("/http/") {
            let mut r = http::Response::new(body(vec![]));
            *r.status_mut() = http::StatusCode::from_u16(code.parse().unwrap()).unwrap();
            r
        } else {
            http::Response::new(body(vec![data, Err(std::io::Error::other("reset mid-stream"))]))
        };
        Ok::<_, Infallible>(response)
    })
}

fn req(path: &str) -> http::Request<()> {
    http::Request::post(format!("http://peer{path}")).body(()).unwrap()
}

fn config(threshold: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .failure_threshold(threshold)
        .success_threshold(1)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_200_with_grpc_status_14_trailers_fails_at_end_of_stream_not_at_headers() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), Grpc::default());
    let response = svc.ready().await.unwrap().call(req("/status/14")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        svc.handle().state(),
        CircuitState::Closed,
        "headers alone decide nothing"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_some());
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_body_error_mid_stream_is_a_failure() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), Grpc::default());
    let response = svc.ready().await.unwrap().call(req("/error")).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

/// Trips `svc`'s breaker (failure threshold 1) with a gRPC UNAVAILABLE and
/// waits out the cooldown: the next call is a probe.
async fn trip_and_cool_down<S, B>(svc: &mut S, handle: &palisade_circuit_breaker::CircuitBreakerHandle)
where
    S: Service<http::Request<()>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let r = svc.ready().await.unwrap().call(req("/status/14")).await.unwrap();
    r.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn a_grpc_body_dropped_before_its_trailers_is_neither() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), Grpc::default());
    let handle = svc.handle();
    // Its trailers would say UNAVAILABLE, but they were never read.
    let response = svc.ready().await.unwrap().call(req("/status/14")).await.unwrap();
    drop(response);
    assert_eq!(handle.snapshot().consecutive_failures, 0);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn with_probes_judged_at_the_head_a_streamed_probe_gives_its_slot_back_at_once() {
    let grpc = Grpc::default().with_abandon_policy(AbandonPolicy::new().with_probe_verdict(ProbeVerdict::AtHead));
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), grpc);
    let handle = svc.handle();
    trip_and_cool_down(&mut svc, &handle).await;

    // The probe's head arrives: its status waits for the trailers, but a probe
    // is judged at its head with `AtHead`, so the stream still open closes it.
    let probe = svc.ready().await.unwrap().call(req("/status/0")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed, "closed while the stream is open");
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    let mut body = probe.into_body();
    assert!(body.frame().await.is_some());
    drop(body);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_head_is_a_failure_reopens_at_once() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), Grpc::default());
    let handle = svc.handle();
    trip_and_cool_down(&mut svc, &handle).await;
    let probe = svc.ready().await.unwrap().call(req("/http/503")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "a 503 head needs no body");
    drop(probe);
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn by_default_a_probe_holds_its_slot_until_its_body_ends() {
    assert_eq!(AbandonPolicy::DEFAULT.probe_verdict(), ProbeVerdict::AtEnd);
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(1), Grpc::default());
    let handle = svc.handle();
    trip_and_cool_down(&mut svc, &handle).await;

    let probe = svc.ready().await.unwrap().call(req("/status/0")).await.unwrap();
    let mut body = probe.into_body();
    assert!(body.frame().await.is_some());
    let err = svc.ready().await.unwrap().call(req("/status/0")).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "the probe slot is held until the body ends");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // Dropped before its trailers: neither, and the slot comes back.
    drop(body);
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let r = svc.ready().await.unwrap().call(req("/status/0")).await.unwrap();
    r.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_2xx_dropped_unread_is_a_success_that_resets_the_run_and_closes_a_half_open_breaker() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(2), Http::default());
    let handle = svc.handle();
    // failure, success (dropped unread), failure: no two in a row.
    for path in ["/http/503", "/http/200", "/http/503"] {
        let response = svc.ready().await.unwrap().call(req(path)).await.unwrap();
        drop(response);
    }
    assert_eq!(handle.state(), CircuitState::Closed, "the dropped 200 reset the run");
    assert_eq!(handle.snapshot().consecutive_failures, 1);

    // Trip it, then close it with probes whose bodies are never read.
    let response = svc.ready().await.unwrap().call(req("/http/503")).await.unwrap();
    drop(response);
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = svc.ready().await.unwrap().call(req("/http/200")).await.unwrap();
    drop(response);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_counts_as_the_policy_says() {
    // A service that never answers: the caller gives up and drops the future.
    let hang =
        tower::service_fn(|_: http::Request<()>| std::future::pending::<Result<http::Response<Body>, Infallible>>());
    let cancel = |svc: &mut CircuitBreaker<_, Grpc>| {
        use futures::FutureExt;
        let mut future = Box::pin(svc.call(req("/hang")));
        assert!((&mut future).now_or_never().is_none());
        drop(future);
    };
    let mut svc = CircuitBreaker::with_protocol(hang, config(2), Grpc::default());
    cancel(&mut svc);
    cancel(&mut svc);
    assert_eq!(svc.handle().state(), CircuitState::Closed, "ignored by default");

    let strict = Grpc::default().with_abandon_policy(AbandonPolicy::new().with_call_dropped(Outcome::Failure));
    let mut svc = CircuitBreaker::with_protocol(hang, config(2), strict);
    cancel(&mut svc);
    assert_eq!(svc.handle().snapshot().consecutive_failures, 1);
    cancel(&mut svc);
    assert_eq!(
        svc.handle().state(),
        CircuitState::Open,
        "two cancellations in a row trip it"
    );
}

#[tokio::test(start_paused = true)]
async fn http_5xx_fail_and_4xx_do_not() {
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config(2), Http::default());
    let r = svc.ready().await.unwrap().call(req("/http/404")).await.unwrap();
    r.into_body().collect().await.unwrap();
    let r = svc.ready().await.unwrap().call(req("/http/503")).await.unwrap();
    r.into_body().collect().await.unwrap();
    assert_eq!(svc.handle().snapshot().consecutive_failures, 1);
    let r = svc.ready().await.unwrap().call(req("/http/500")).await.unwrap();
    r.into_body().collect().await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_trip_per_route_with_overrides_and_stay_bounded() {
    let layer = KeyedCircuitBreakerLayer::builder()
        .grpc()
        .config(
            CircuitBreakerConfig::builder()
                .failure_threshold(2)
                .success_threshold(1),
        )
        .key_config("/status/14", config(1))
        .max_keys(2)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(grpc_server());
    let mut other = layer.layer(grpc_server());
    async fn run<S, B>(svc: &mut S, path: &str) -> Result<(), BoxError>
    where
        S: Service<http::Request<()>, Response = http::Response<B>, Error = BoxError>,
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        let r = svc.ready().await?.call(req(path)).await?;
        r.into_body().collect().await.map(|_| ()).map_err(Into::into)
    }
    // The override trips "/status/14" at its first failure; "/status/0" is unaffected.
    run(&mut svc, "/status/14").await.unwrap();
    let err = run(&mut other, "/status/14").await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("open for that route");
    assert_eq!(open.peer().map(|p| p.as_str()), Some("/status/14"));
    run(&mut svc, "/status/0").await.unwrap();
    assert_eq!(handle.get("/status/14").unwrap().state(), CircuitState::Open);
    assert_eq!(handle.get("/status/0").unwrap().state(), CircuitState::Closed);
    assert_eq!(handle.len(), 2);

    // A third key evicts the least recently used *closed* breaker: the open
    // one is older but stays, so eviction does not lift its protection.
    tokio::time::advance(Duration::from_secs(1)).await;
    run(&mut svc, "/status/0").await.unwrap();
    run(&mut svc, "/http/404").await.unwrap();
    assert_eq!(handle.len(), 2);
    assert_eq!(handle.get("/status/14").unwrap().state(), CircuitState::Open);
    assert!(handle.get("/status/0").is_none());
    let err = run(&mut svc, "/status/14").await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "still open: {err}");

    // Idle keys go when a new key arrives and the map is full, the open one
    // too once its cooldown has passed (its next call would be a probe).
    tokio::time::advance(Duration::from_secs(61)).await;
    run(&mut svc, "/http/500").await.unwrap();
    assert_eq!(handle.keys(), vec!["/http/500".to_owned()]);
}

/// A probe whose head was healthy and whose stream is still open when
/// `probe_timeout` passes counts as a success then: a long healthy stream
/// neither holds the breaker half-open nor counts as a failure, and its later
/// end changes nothing.
#[tokio::test(start_paused = true)]
async fn a_probe_still_streaming_healthily_at_probe_timeout_is_a_success() {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .success_threshold(1)
        .probe_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config, Grpc::default());
    let handle = svc.handle();
    trip_and_cool_down(&mut svc, &handle).await;

    let probe = svc.ready().await.unwrap().call(req("/status/14")).await.unwrap();
    let mut body = probe.into_body();
    assert!(body.frame().await.is_some(), "the stream is open");
    assert_eq!(handle.state(), CircuitState::HalfOpen, "not judged at the head");
    tokio::time::advance(Duration::from_secs(5)).await;
    // The next call finds the probe overdue: its healthy stream is a success.
    let next = svc.ready().await.unwrap().call(req("/status/0")).await;
    assert_eq!(handle.state(), CircuitState::Closed, "closed by the healthy stream");
    assert!(next.is_ok(), "admitted once closed");
    // Its trailers (UNAVAILABLE) arrive late: they belong to an earlier state.
    while body.frame().await.is_some() {}
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 0);
}

/// A probe that never got its head by `probe_timeout` is reclaimed as
/// nothing: the breaker stays half-open and admits a new probe.
#[tokio::test(start_paused = true)]
async fn a_probe_without_a_head_at_probe_timeout_is_reclaimed_as_nothing() {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(1)
        .success_threshold(1)
        .probe_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = CircuitBreaker::with_protocol(grpc_server(), config, Grpc::default());
    let handle = svc.handle();
    trip_and_cool_down(&mut svc, &handle).await;
    // Admitted, never polled: no head ever arrives.
    let pending = svc.ready().await.unwrap().call(req("/status/0"));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    let r = svc.ready().await.unwrap().call(req("/status/0")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen, "reclaimed, not a success");
    r.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    drop(pending);
}
