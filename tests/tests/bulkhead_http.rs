//! The bulkhead over a real hyper client: an http response keeps its permit
//! until its body ends or is dropped.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade_bulkhead::error::BulkheadFull;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_core::protocol::Http;
use palisade_testkit::{HttpServer, http2_client};
use tower::{Layer, Service, ServiceExt};

#[tokio::test]
async fn a_streamed_http_body_holds_its_permit_until_its_end() {
    let server = HttpServer::start("h").await.unwrap();
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(0)
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config).protocol(Http::default());
    let handle = layer.handle();
    let mut svc = layer.layer(http2_client());
    let request = || {
        http::Request::get(server.uri("/stream?n=3").unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    for read_to_end in [true, false] {
        let response = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "h:0\n");
        assert_eq!(handle.in_flight(), 1, "the body is still being read");
        let refused = svc.ready().await.unwrap().call(request()).await.unwrap_err();
        assert!(refused.is::<BulkheadFull>());
        if read_to_end {
            let rest = body.collect().await.unwrap().to_bytes();
            assert_eq!(rest, "h:1\nh:2\n");
        } else {
            drop(body);
        }
        assert_eq!(handle.in_flight(), 0, "released (read to end: {read_to_end})");
    }
}
