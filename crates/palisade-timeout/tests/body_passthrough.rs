//! A timeout without body limits hands back the inner response as it came;
//! only the body-limit setters make it wrap the body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade_body::CompletionBody;
use palisade_core::protocol::Grpc;
use palisade_timeout::{BodyLimited, NoBodyLimits, TimedOut, Timeout, TimeoutKind, TimeoutLayer};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

type Inner = http::Response<Full<Bytes>>;

fn answer() -> impl Service<
    http::Request<Full<Bytes>>,
    Response = Inner,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<Inner, std::convert::Infallible>>,
> + Clone {
    service_fn(|_: http::Request<Full<Bytes>>| {
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(b"hi")))))
    })
}

/// The response type of a service, spelled out by the compiler.
fn response_of<S: Service<http::Request<Full<Bytes>>>>(_: &S) -> std::marker::PhantomData<S::Response> {
    std::marker::PhantomData
}

#[tokio::test(start_paused = true)]
async fn without_body_limits_the_response_is_the_inner_one() {
    let layer: TimeoutLayer<Grpc> = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let service: Timeout<_, Grpc, NoBodyLimits> = layer.layer(answer());
    // The same type as the inner service's: no wrapper at all.
    let _: std::marker::PhantomData<Inner> = response_of(&service);
    let response: Inner = service.oneshot(http::Request::new(Full::default())).await.unwrap();
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "hi");
    assert_eq!(layer.body_limits(), palisade_body::BodyLimits::NONE);
}

#[tokio::test(start_paused = true)]
async fn a_body_limit_moves_the_layer_to_wrapping_the_body() {
    let layer: TimeoutLayer<Grpc, BodyLimited> = TimeoutLayer::builder()
        .grpc()
        .body_timeout(Duration::from_millis(200))
        .body_idle_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    assert_eq!(layer.body_limits().total, Some(Duration::from_millis(200)));
    assert_eq!(layer.body_limits().idle, Some(Duration::from_millis(50)));
    let slow = service_fn(|_: http::Request<Full<Bytes>>| async {
        let body =
            http_body_util::StreamBody::new(futures::stream::pending::<Result<http_body::Frame<Bytes>, BoxError>>());
        Ok::<_, BoxError>(http::Response::new(body))
    });
    let response = layer
        .layer(slow)
        .oneshot(http::Request::new(Full::default()))
        .await
        .unwrap();
    let body: CompletionBody<_, _> = response.into_body();
    let error = body.collect().await.unwrap_err();
    let timed_out = error.downcast_ref::<TimedOut>().unwrap();
    assert_eq!(
        (timed_out.kind(), timed_out.limit()),
        (TimeoutKind::BodyIdle, Duration::from_millis(50))
    );
}
