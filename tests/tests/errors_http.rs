//! Palisade's errors answered to an http caller with a fitting status.
//!
//! A real gateway: a hyper server on loopback whose handler calls a real
//! upstream hyper server through the stack a user builds (bulkhead ->
//! breaker -> attempt timeout over a hyper client), and turns a failed call
//! into its answer the documented way ([`PalisadeError::find`], its
//! `http_status()` and `retry_after_header()`). The test reads what the
//! gateway's own caller got, and what the upstream saw.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use palisade_bulkhead::BulkheadLayer;
use palisade_circuit_breaker::CircuitBreakerLayer;
use palisade_core::error::{BoxError, PalisadeError};
use palisade_testkit::{HttpClient, HttpServer, http1_client};
use palisade_timeout::TimeoutLayer;
use tokio::net::TcpListener;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Upstream = BoxCloneService<http::Request<Full<Bytes>>, http::Response<Bytes>, BoxError>;

/// The user's stack over a hyper client, collecting each answer's body (so
/// every layer settles its verdict before the gateway answers).
fn upstream_stack(upstream: &HttpServer, bulkhead: usize) -> Upstream {
    let stack = ServiceBuilder::new()
        .layer(
            BulkheadLayer::builder()
                .http()
                .max_concurrent(bulkhead)
                .max_queue(0)
                .build()
                .unwrap(),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .http()
                .peer(upstream.addr())
                .failure_threshold(1)
                .cooldown(Duration::from_millis(4500))
                .build()
                .unwrap(),
        )
        .layer(
            TimeoutLayer::builder()
                .http()
                .timeout(Some(Duration::from_millis(100)))
                .build()
                .unwrap(),
        )
        .service(http1_client());
    BoxCloneService::new(stack.and_then(collect))
}

async fn collect<B>(response: http::Response<B>) -> Result<http::Response<Bytes>, BoxError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let (head, body) = response.into_parts();
    let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
    Ok(http::Response::from_parts(head, bytes))
}

/// What the gateway answers when its upstream call failed: the documented way.
fn answer_error(error: &BoxError) -> http::Response<Full<Bytes>> {
    let Some(found) = PalisadeError::find(error.as_ref()) else {
        return http::Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::from(error.to_string())))
            .unwrap();
    };
    let mut response = http::Response::builder().status(found.http_status());
    if let Some(wait) = found.retry_after_header() {
        response = response.header(http::header::RETRY_AFTER, wait);
    }
    response.body(Full::new(Bytes::from(error.to_string()))).unwrap()
}

/// Starts the gateway: every request is forwarded to `upstream_uri` through `stack`.
async fn start_gateway(stack: Upstream, upstream_uri: http::Uri) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stack = stack.clone();
            let upstream_uri = upstream_uri.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
                    let stack = stack.clone();
                    let request = http::Request::get(upstream_uri.clone())
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    async move {
                        let answer = match stack.oneshot(request).await {
                            Ok(response) => response.map(Full::new),
                            Err(error) => answer_error(&error),
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn call_gateway(client: &HttpClient, gateway: std::net::SocketAddr) -> (StatusCode, http::HeaderMap, String) {
    let request = http::Request::get(format!("http://{gateway}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (head, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (head.status, head.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_open_breaker_is_answered_503_with_retry_after_and_the_upstream_is_spared() {
    let upstream = HttpServer::start("up").await.unwrap();
    let gateway = start_gateway(upstream_stack(&upstream, 4), upstream.uri("/echo").unwrap()).await;
    let client = http1_client();

    // The upstream's own 503 trips the breaker (threshold 1) and is passed on.
    upstream.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let (status, _, _) = call_gateway(&client, gateway).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let seen = upstream.stats().requests();

    // Now our breaker answers: 503, Retry-After from the cooldown (4.5 s, rounded up), the peer named.
    let (status, headers, body) = call_gateway(&client, gateway).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[http::header::RETRY_AFTER], "5", "{body}");
    assert!(body.contains(&upstream.addr().to_string()), "names the peer: {body}");
    assert_eq!(upstream.stats().requests(), seen, "the upstream was not called");
}

#[tokio::test]
async fn an_attempt_timeout_is_answered_504() {
    let upstream = HttpServer::start("up").await.unwrap();
    upstream.faults().set_latency(Some(Duration::from_secs(5)));
    let gateway = start_gateway(upstream_stack(&upstream, 4), upstream.uri("/echo").unwrap()).await;

    let (status, headers, body) = call_gateway(&http1_client(), gateway).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(headers.get(http::header::RETRY_AFTER).is_none());
    assert!(body.contains("100ms"), "names the limit: {body}");
}

#[tokio::test]
async fn a_full_bulkhead_is_answered_429() {
    let upstream = HttpServer::start("up").await.unwrap();
    upstream.faults().set_hang(true);
    let stack = upstream_stack(&upstream, 1);
    let gateway = start_gateway(stack, upstream.uri("/echo").unwrap()).await;
    let client = http1_client();

    // The first call holds the only slot (the upstream hangs; the attempt
    // timeout ends it after 100 ms); the second arrives while it is held.
    let first = tokio::spawn({
        let client = client.clone();
        async move { call_gateway(&client, gateway).await }
    });
    while upstream.stats().in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let (status, _, body) = call_gateway(&client, gateway).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("1 calls in flight"), "names the limit: {body}");
    let (first_status, _, _) = first.await.unwrap();
    assert_eq!(first_status, StatusCode::GATEWAY_TIMEOUT);
}
