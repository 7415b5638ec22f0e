//! Abandoned calls through the stack, over real servers: a hyper client that
//! checks `status()` and drops the body, and a gRPC client that only streams.
//!
//! ```text
//! Bulkhead -> CircuitBreaker -> hyper client (HTTP/1.1 and HTTP/2) -> HttpServer
//! CircuitBreaker -> tonic Channel -> EchoServer (server streaming)
//! ```
//!
//! With the default `AbandonPolicy`, a 2xx whose body is dropped unread is a
//! success: it resets the breaker's run of failures and closes a half-open
//! breaker, and the bulkhead permit it held comes back; a streamed probe is
//! judged at the end of its stream, but one whose head was healthy and whose
//! stream is still open at `probe_timeout` is a success then, so a breaker
//! whose client only streams closes while the streams are still open.
//!
//! Time is paused and advanced by the tests: no timer exists here but the
//! breakers' cooldowns, which are lazy, so the clock moves only when a test
//! moves it.
#![allow(missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState};
use palisade_core::backoff::Jitter;
use palisade_core::protocol::{Grpc, Http};
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use palisade_testkit::{EchoServer, HttpClient, HttpServer, http1_client, http2_client};
use tonic::Code;
use tower::{Service, ServiceBuilder, ServiceExt};

const COOLDOWN: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn breaker_config(failure_threshold: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .failure_threshold(failure_threshold)
        .success_threshold(2)
        .cooldown(COOLDOWN)
        .probe_timeout(PROBE_TIMEOUT)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn get(server: &HttpServer) -> http::Request<Full<Bytes>> {
    http::Request::get(server.uri("/echo").unwrap())
        .body(Full::default())
        .unwrap()
}

async fn hyper_client_that_drops_bodies(client: HttpClient, name: &str) {
    let server = HttpServer::start(name).await.unwrap();
    let breaker = CircuitBreakerLayer::new(breaker_config(2)).protocol(Http::default());
    let breaker_handle = breaker.handle();
    // One slot, no queue: a permit that a dropped body kept would refuse the next call.
    let bulkhead = BulkheadLayer::new(
        BulkheadConfig::builder()
            .max_concurrent(1)
            .max_queue(0)
            .build()
            .unwrap(),
    )
    .protocol(Http::default());
    let bulkhead_handle = bulkhead.handle();
    let mut svc = ServiceBuilder::new().layer(bulkhead).layer(breaker).service(client);

    // Every third call is a 503; every body is dropped unread, as a webhook
    // or health-check client does. The 2xx in between are successes, so the
    // 503s are never two in a row.
    for i in 0..21 {
        if i % 3 == 0 {
            server.faults().fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
        }
        let response = svc.ready().await.unwrap().call(get(&server)).await.unwrap_or_else(|e| {
            panic!("{name}: call {i} refused: {e}");
        });
        let expected = if i % 3 == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(response.status(), expected, "{name}: call {i}");
        drop(response);
        assert_eq!(
            bulkhead_handle.in_flight(),
            0,
            "{name}: the dropped body gave its permit back"
        );
    }
    assert_eq!(breaker_handle.state(), CircuitState::Closed, "{name}");
    assert_eq!(
        breaker_handle.snapshot().consecutive_failures,
        0,
        "{name}: the last 2xx reset the run"
    );
    assert_eq!(server.stats().requests(), 21, "{name}");

    // Two 503s in a row trip it; then nothing reaches the server.
    server.faults().fail_next(2, StatusCode::SERVICE_UNAVAILABLE);
    for _ in 0..2 {
        drop(svc.ready().await.unwrap().call(get(&server)).await.unwrap());
    }
    assert_eq!(breaker_handle.state(), CircuitState::Open, "{name}");
    let err = svc.ready().await.unwrap().call(get(&server)).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{name}: {err}");
    assert_eq!(server.stats().requests(), 23, "{name}");

    // After the cooldown, two probes whose bodies are dropped unread close it.
    tokio::time::advance(COOLDOWN).await;
    for probe in 0..2 {
        let response = svc.ready().await.unwrap().call(get(&server)).await.unwrap_or_else(|e| {
            panic!("{name}: probe {probe} refused: {e}");
        });
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        assert_eq!(
            breaker_handle.snapshot().probes_in_flight,
            0,
            "{name}: the probe slot came back"
        );
    }
    assert_eq!(
        breaker_handle.state(),
        CircuitState::Closed,
        "{name}: a half-open breaker closes"
    );
    assert_eq!(server.stats().requests(), 25, "{name}");
    assert_eq!(bulkhead_handle.in_flight(), 0, "{name}");
}

#[tokio::test(start_paused = true)]
async fn a_hyper_client_that_checks_the_status_and_drops_bodies_records_its_successes() {
    hyper_client_that_drops_bodies(http1_client(), "http1").await;
    hyper_client_that_drops_bodies(http2_client(), "http2").await;
}

fn long_stream() -> StreamRequest {
    // Far more than flow control lets the server send unread: the stream stays open.
    StreamRequest {
        message: "s".into(),
        count: 100_000,
        payload: Default::default(),
        interval_ms: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn a_grpc_client_that_only_streams_closes_its_breaker_while_the_streams_are_open() {
    let server = EchoServer::start("streams").await.unwrap();
    let breaker = CircuitBreakerLayer::new(breaker_config(1)).protocol(Grpc::default());
    let handle = breaker.handle();
    let client = EchoClient::new(ServiceBuilder::new().layer(breaker).service(server.channel()));

    server.faults().fail_next(1, Code::Unavailable);
    let status = client
        .clone()
        .unary(EchoRequest {
            message: "x".into(),
            payload: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(COOLDOWN).await;

    // The first probe: a healthy head; its verdict waits for the end of its
    // stream, so it holds the probe slot while the stream goes on.
    let mut first = client.clone().server_stream(long_stream()).await.unwrap().into_inner();
    assert_eq!(first.message().await.unwrap().unwrap().sequence, 0);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::HalfOpen);
    assert_eq!((snapshot.probes_in_flight, snapshot.probe_successes), (1, 0));
    let busy = client
        .clone()
        .unary(EchoRequest {
            message: "busy".into(),
            payload: Default::default(),
        })
        .await;
    assert_eq!(busy.unwrap_err().code(), Code::Unavailable, "the slot is held");

    // At probe_timeout, still streaming healthily: a success, not a failure,
    // and the slot comes back for the second probe.
    tokio::time::advance(PROBE_TIMEOUT).await;
    let mut second = client
        .clone()
        .server_stream(long_stream())
        .await
        .unwrap_or_else(|status| panic!("the second probe was refused: {status:?}"))
        .into_inner();
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, CircuitState::HalfOpen);
    assert_eq!((snapshot.probes_in_flight, snapshot.probe_successes), (1, 1));
    assert_eq!(second.message().await.unwrap().unwrap().sequence, 0);

    // The second healthy stream at its probe_timeout closes the breaker; the
    // call that found it so goes through. Both streams are still open.
    tokio::time::advance(PROBE_TIMEOUT).await;
    let reply = client
        .clone()
        .unary(EchoRequest {
            message: "closed".into(),
            payload: Default::default(),
        })
        .await
        .unwrap_or_else(|status| panic!("refused after the healthy streams: {status:?}"));
    assert_eq!(reply.into_inner().message, "closed");
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(first.message().await.unwrap().unwrap().sequence, 1);
    assert_eq!(second.message().await.unwrap().unwrap().sequence, 1);
    assert_eq!(server.stats().streams_completed(), 0, "the streams are still running");
    assert_eq!(handle.snapshot().times_opened, 1, "never reopened");

    // Dropped half-read: still closed, and closed calls keep flowing.
    drop((first, second));
    assert_eq!(handle.state(), CircuitState::Closed);
    let reply = client
        .clone()
        .unary(EchoRequest {
            message: "after".into(),
            payload: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "after");
}
