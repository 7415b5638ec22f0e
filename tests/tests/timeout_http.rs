//! `palisade-timeout` over a real hyper client and server speaking HTTP/2 on
//! loopback: a timeout cancels the server's handler, the time left travels in
//! a millisecond header, and a body limit ends a slow stream.
#![allow(clippy::disallowed_types, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use http_body_util::{BodyExt, Full};
use palisade_core::error::{TimedOut, TimeoutKind};
use palisade_testkit::{HttpServer, http2_client};
use palisade_timeout::TimeoutLayer;
use tokio::time::{Instant, timeout_at};
use tower::{Layer, Service, ServiceExt};

/// How long after a client's limit the server's work must have stopped:
/// one loopback round trip for the reset, plus slack for a loaded 2-core
/// machine running other builds and tests at the same time.
const SLACK: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn get(server: &HttpServer, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(server.uri(path).unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http2_timeout_cancels_the_handler_and_sends_the_time_left() {
    let server = HttpServer::start("slow").await.unwrap();
    server.faults().set_hang(true);
    let layer = TimeoutLayer::builder()
        .http()
        .timeout(Some(ms(200)))
        .propagate_header(HeaderName::from_static("x-timeout-ms"))
        .build()
        .unwrap();
    let mut client = layer.layer(http2_client());
    let start = Instant::now();
    let err = client
        .ready()
        .await
        .unwrap()
        .call(get(&server, "/echo"))
        .await
        .unwrap_err();
    let timed_out = err.downcast_ref::<TimedOut>().expect("TimedOut");
    assert_eq!((timed_out.kind(), timed_out.limit()), (TimeoutKind::Attempt, ms(200)));
    timeout_at(start + ms(200) + SLACK, server.stats().wait_for_cancelled(1))
        .await
        .expect("the handler is cancelled within SLACK of the client's timeout");
    assert_eq!(server.stats().finished(), 0);
    let headers = server.stats().last_headers();
    assert_eq!(headers.get("x-timeout-ms").unwrap(), "200");
    assert!(headers.get("grpc-timeout").is_none());
}

#[tokio::test]
async fn http2_body_idle_limit_ends_a_slow_stream_and_cancels_it() {
    let server = HttpServer::start("stream").await.unwrap();
    let layer = TimeoutLayer::builder()
        .http()
        .timeout(Some(Duration::from_secs(5)))
        .body_idle_timeout(ms(150))
        .build()
        .unwrap();
    let mut client = layer.layer(http2_client());
    // Chunks 1 s apart: the first arrives, then the body goes idle.
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(&server, "/stream?n=100&delay_ms=1000"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    // The idle limit counts from this frame.
    let start = Instant::now();
    assert!(first.is_data());
    let err = body.frame().await.unwrap().unwrap_err();
    let timed_out = err.downcast_ref::<TimedOut>().expect("TimedOut");
    assert_eq!((timed_out.kind(), timed_out.limit()), (TimeoutKind::BodyIdle, ms(150)));
    drop(body);
    timeout_at(start + ms(150) + SLACK, server.stats().wait_for_cancelled(1))
        .await
        .expect("the server's stream is cancelled after the body limit");
    assert_eq!(server.stats().streams_completed(), 0);
}
