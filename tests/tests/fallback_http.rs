//! The fallback layer in front of a real hyper client: another backend answers
//! with a request rebuilt from the kept head, for a refused connection and for
//! a 503.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use palisade_core::error::BoxError;
use palisade_fallback::extract::RequestHead;
use palisade_fallback::{FallbackLayer, FallbackReason, FromFallback};
use palisade_testkit::{HttpClient, HttpServer, SERVER_HEADER, http1_client};
use tower::{ServiceBuilder, ServiceExt};

type ClientResponse = <HttpClient as tower::Service<http::Request<Full<Bytes>>>>::Response;

/// A service sending the kept head (with an empty body) to `backup` instead.
fn backup_for(
    backup: &HttpServer,
) -> impl tower::Service<RequestHead, Response = ClientResponse, Error = impl Into<BoxError>, Future: Send> + Clone {
    let authority = backup.addr().to_string();
    http1_client().map_request(move |head: RequestHead| {
        let mut request = head.into_request(Full::new(Bytes::new()));
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        *request.uri_mut() = format!("http://{authority}{path}").parse().unwrap();
        request
    })
}

fn get(server: &HttpServer, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(server.uri(path).unwrap())
        .header("x-request-id", "42")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_refused_peer_is_answered_by_another_backend_with_the_kept_head() {
    let primary = HttpServer::start("primary").await.unwrap();
    primary.refuse_connections().await;
    let secondary = HttpServer::start("secondary").await.unwrap();

    let layer = FallbackLayer::builder()
        .http()
        .keep_head()
        .from_service(backup_for(&secondary))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http1_client());

    let response = client.oneshot(get(&primary, "/items/7")).await.unwrap();
    assert_eq!(
        response.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::Error)
    );
    assert_eq!(response.headers()[SERVER_HEADER], "secondary");
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "secondary");
    assert_eq!(secondary.stats().last_path().as_deref(), Some("/items/7"));
    assert_eq!(secondary.stats().last_headers()["x-request-id"], "42");
    assert_eq!(primary.stats().requests(), 0);
}

#[tokio::test]
async fn a_503_head_is_answered_by_another_backend_other_statuses_pass() {
    let primary = HttpServer::start("primary").await.unwrap();
    let secondary = HttpServer::start("secondary").await.unwrap();
    primary.faults().fail_next(1, StatusCode::SERVICE_UNAVAILABLE);

    let layer = FallbackLayer::builder()
        .http()
        .on_failed_response()
        .keep_head()
        .from_service(backup_for(&secondary))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http1_client());

    let first = client.clone().oneshot(get(&primary, "/a")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.extensions().get::<FromFallback>().map(|f| f.reason),
        Some(FallbackReason::FailedResponse)
    );
    assert_eq!(first.headers()[SERVER_HEADER], "secondary");

    let second = client.oneshot(get(&primary, "/b")).await.unwrap();
    assert!(second.extensions().get::<FromFallback>().is_none());
    assert_eq!(second.headers()[SERVER_HEADER], "primary");
    assert_eq!(primary.stats().requests(), 2);
    assert_eq!(secondary.stats().requests(), 1);
}
