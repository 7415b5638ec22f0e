//! The circuit breaker over a real hyper client to the testkit's http server.
#![allow(missing_docs)]

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, CircuitState};
use palisade_core::protocol::Http;
use palisade_testkit::{HttpServer, http1_client, http2_client};
use tower::{Layer, Service, ServiceExt};

fn get(server: &HttpServer, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(server.uri(path).unwrap())
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn a_body_failing_mid_stream_is_one_failure_counted_at_its_end_and_5xx_trip() {
    for client in [http1_client(), http2_client()] {
        let server = HttpServer::start("http").await.unwrap();
        server.faults().fail_stream_after(2);
        let layer = CircuitBreakerLayer::new(
            CircuitBreakerConfig::builder()
                .peer(server.addr())
                .failure_threshold(2)
                .build()
                .unwrap(),
        )
        .protocol(Http::default());
        let handle = layer.handle();
        let mut svc = layer.layer(client);

        let response = svc
            .ready()
            .await
            .unwrap()
            .call(get(&server, "/stream?n=5"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(handle.snapshot().consecutive_failures, 0, "not at headers");
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(
            handle.snapshot().consecutive_failures,
            1,
            "one failure, at the body error"
        );

        // A 503 is the second failure in a row: open.
        server.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
        let response = svc.ready().await.unwrap().call(get(&server, "/echo")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        response.into_body().collect().await.unwrap();
        assert_eq!(handle.state(), CircuitState::Open);

        let before = server.stats().requests();
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(get(&server, "/echo"))
            .await
            .unwrap_err();
        let open = err.downcast_ref::<CircuitOpen>().expect("refused by the breaker");
        assert_eq!(
            open.peer().map(|p| p.as_str()),
            Some(server.addr().to_string().as_str())
        );
        assert_eq!(server.stats().requests(), before, "the server was not called");
    }
}

#[tokio::test]
async fn a_4xx_is_not_a_failure_and_a_complete_stream_is_a_success() {
    let server = HttpServer::start("http").await.unwrap();
    let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap())
        .protocol(Http::default());
    let handle = layer.handle();
    let mut svc = layer.layer(http2_client());
    server.faults().set_status(Some(StatusCode::NOT_FOUND));
    for _ in 0..3 {
        let r = svc.ready().await.unwrap().call(get(&server, "/echo")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        r.into_body().collect().await.unwrap();
    }
    server.faults().set_status(None);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(get(&server, "/stream?n=4"))
        .await
        .unwrap();
    r.into_body().collect().await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 0);
}
