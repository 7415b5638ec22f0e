//! `.tonic_body()`: attempts reach the inner service as
//! `http::Request<tonic::body::Body>`, the body replayed inside it.
#![cfg(feature = "tonic")]
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use palisade_core::error::BoxError;
use palisade_retry::{Attempts, DefaultPredicate, RetryLayer, TonicBody};
use parking_lot::Mutex;
use tower::{Layer, ServiceExt, service_fn};

fn grpc_response(status: &'static str) -> http::Response<http_body_util::Empty<Bytes>> {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", status)
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// A tonic-typed service: UNAVAILABLE first, then OK; records every body.
fn channel_like(
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> impl tower::Service<
    http::Request<tonic::body::Body>,
    Response = http::Response<http_body_util::Empty<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone {
    service_fn(move |request: http::Request<tonic::body::Body>| {
        let bodies = bodies.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let n = {
                let mut bodies = bodies.lock();
                bodies.push(body);
                bodies.len()
            };
            Ok::<_, BoxError>(grpc_response(if n == 1 { "14" } else { "0" }))
        }
    })
}

fn request(body: &'static [u8]) -> http::Request<tonic::body::Body> {
    http::Request::post("http://peer/echo.Echo/Unary")
        .body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from_static(
            body,
        ))))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_tonic_body_layer_replays_the_body_with_no_map_request() {
    for layer in [
        RetryLayer::tonic(),
        RetryLayer::builder().grpc().tonic_body().build().unwrap(),
    ] {
        let layer: RetryLayer<palisade_core::protocol::Grpc, DefaultPredicate, TonicBody> = layer;
        let bodies = Arc::default();
        let svc = layer.layer(channel_like(Arc::clone(&bodies)));
        let response = svc.oneshot(request(b"hello")).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "0");
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
        let bodies = bodies.lock();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0], Bytes::from_static(b"hello"));
        assert_eq!(bodies[1], Bytes::from_static(b"hello"), "the body was replayed");
    }
}
