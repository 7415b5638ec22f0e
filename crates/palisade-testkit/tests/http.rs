//! The hyper server, its faults and counters, through a real hyper client,
//! over HTTP/1.1 and HTTP/2.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade_testkit::{HttpClient, HttpServer, SERVER_HEADER, http1_client, http2_client};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("timed out")
}

async fn send(
    client: &HttpClient,
    server: &HttpServer,
    path: &str,
    body: &'static [u8],
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let request = Request::post(server.uri(path).unwrap())
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    client.request(request).await
}

async fn body(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn clients() -> [(&'static str, HttpClient); 2] {
    [("http1", http1_client()), ("http2", http2_client())]
}

#[tokio::test]
async fn echoes_body_over_http1_and_http2() {
    let server = HttpServer::start("web").await.unwrap();
    for (proto, client) in clients() {
        let response = send(&client, &server, "/any/path?q=1", b"hello body").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{proto}");
        assert_eq!(response.headers()[SERVER_HEADER], "web");
        let expected = if proto == "http2" {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(body(response).await, "hello body");
        let stats = server.stats();
        assert_eq!(stats.requests(), 1);
        assert_eq!(stats.last_payload().unwrap(), "hello body");
        assert_eq!(stats.last_path().as_deref(), Some("/any/path"));

        // An empty body gets the server's name.
        let response = send(&client, &server, "/", b"").await.unwrap();
        assert_eq!(body(response).await, "web");
        server.stats().reset();
    }
}

#[tokio::test]
async fn records_request_headers() {
    let server = HttpServer::start("web").await.unwrap();
    let request = Request::get(server.uri("/").unwrap())
        .header("x-request-id", "7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    http2_client().request(request).await.unwrap();
    assert_eq!(server.stats().last_headers()["x-request-id"], "7");
}

#[tokio::test]
async fn streams_n_chunks() {
    let server = HttpServer::start("st").await.unwrap();
    for (i, (proto, client)) in clients().into_iter().enumerate() {
        let response = send(&client, &server, "/stream?n=5", b"").await.unwrap();
        let mut body = response.into_body();
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                chunks.push(data);
            }
        }
        let all: Vec<u8> = chunks.concat();
        assert_eq!(all, b"st:0\nst:1\nst:2\nst:3\nst:4\n", "{proto}");
        within(server.stats().wait_for_streams_completed(i as u64 + 1)).await;
    }
    assert_eq!(server.stats().cancelled(), 0);
}

#[tokio::test]
async fn status_fault_and_fail_next() {
    let server = HttpServer::start("f").await.unwrap();
    let client = http1_client();
    server.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let response = send(&client, &server, "/", b"x").await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[SERVER_HEADER], "f");
    server.faults().set_status(None);

    server.faults().fail_next(2, StatusCode::INTERNAL_SERVER_ERROR);
    for expected in [500, 500, 200, 200] {
        let response = send(&client, &server, "/", b"x").await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
    }
    assert_eq!(server.stats().finished(), 5);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let server = HttpServer::start("l").await.unwrap();
    let client = http2_client();
    server.faults().set_latency(Some(Duration::from_millis(120)));
    let start = Instant::now();
    send(&client, &server, "/", b"x").await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn hang_then_client_drop_counts_cancelled_over_http2() {
    let server = HttpServer::start("h").await.unwrap();
    let client = http2_client();
    server.faults().set_hang(true);
    let uri = server.uri("/").unwrap();
    let call = tokio::spawn(async move {
        client
            .request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
            .await
    });
    within(server.stats().wait_for_requests(1)).await;
    call.abort();
    within(server.stats().wait_for_cancelled(1)).await;
    assert_eq!(server.stats().in_flight(), 0);
}

#[tokio::test]
async fn hang_then_client_drop_counts_cancelled_over_http1() {
    let server = HttpServer::start("h").await.unwrap();
    let client = http1_client();
    server.faults().set_hang(true);
    let uri = server.uri("/").unwrap();
    let call = tokio::spawn(async move {
        client
            .request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
            .await
    });
    within(server.stats().wait_for_requests(1)).await;
    // Dropping the HTTP/1 request closes its connection.
    call.abort();
    within(server.stats().wait_for_cancelled(1)).await;
}

#[tokio::test]
async fn hang_is_released() {
    let server = HttpServer::start("h").await.unwrap();
    let client = http2_client();
    server.faults().set_hang(true);
    let uri = server.uri("/").unwrap();
    let call = tokio::spawn(async move {
        client
            .request(Request::get(uri).body(Full::new(Bytes::new())).unwrap())
            .await
    });
    within(server.stats().wait_for_in_flight(1)).await;
    server.faults().clear();
    let response = within(call).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn stream_fails_after_n_chunks() {
    let server = HttpServer::start("sf").await.unwrap();
    server.faults().fail_stream_after(2);
    for (i, (proto, client)) in clients().into_iter().enumerate() {
        let response = send(&client, &server, "/stream?n=5", b"").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut data = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(error)) => break error,
                None => panic!("{proto}: body ended without error"),
            }
        };
        assert_eq!(data, b"sf:0\nsf:1\n", "{proto}: {error}");
        within(server.stats().wait_for_streams_failed(i as u64 + 1)).await;
    }
    assert_eq!(server.stats().streams_completed(), 0);
}

#[tokio::test]
async fn close_connection_fault() {
    let server = HttpServer::start("c").await.unwrap();
    for (proto, client) in clients() {
        server.faults().close_next(1);
        let result = send(&client, &server, "/", b"x").await;
        assert!(result.is_err(), "{proto}: {result:?}");
        // Recovered: the next request succeeds on a new connection.
        let response = send(&client, &server, "/", b"x").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(server.stats().cancelled(), 2);
    assert!(server.stats().connections() >= 3);
}

#[tokio::test]
async fn refuse_then_resume_on_same_port() {
    let server = HttpServer::start("r").await.unwrap();
    let addr = server.addr();
    let client = http1_client();
    send(&client, &server, "/", b"x").await.unwrap();

    server.refuse_connections().await;
    server.close_connections().await;
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let err = send(&client, &server, "/", b"x").await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    server.resume_connections().unwrap();
    assert_eq!(server.addr(), addr);
    let response = send(&client, &server, "/", b"x").await.unwrap();
    assert_eq!(response.headers()[SERVER_HEADER], "r");
}

#[tokio::test]
async fn drop_shuts_the_server_down() {
    let server = HttpServer::start("d").await.unwrap();
    let addr = server.addr();
    send(&http1_client(), &server, "/", b"x").await.unwrap();
    drop(server);
    within(async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn several_servers() {
    let servers = HttpServer::start_many("web", 2).await.unwrap();
    let client = http2_client();
    for (i, server) in servers.iter().enumerate() {
        let response = send(&client, server, "/", b"").await.unwrap();
        assert_eq!(body(response).await, format!("web-{i}"));
    }
}
