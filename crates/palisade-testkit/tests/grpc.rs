//! The tonic echo server, its faults and counters, through a real tonic client.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use futures::StreamExt;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use palisade_testkit::{EchoServer, SERVER_HEADER, TAG_HEADER};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;

/// Bounds every wait: a failing test fails fast instead of hanging.
async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("timed out")
}

fn req(message: &str, payload: &[u8]) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: payload.to_vec().into(),
    }
}

fn stream_req(count: u32, interval_ms: u32) -> StreamRequest {
    StreamRequest {
        message: "s".into(),
        count,
        payload: b"p".to_vec().into(),
        interval_ms,
    }
}

/// Waits until connecting to `addr` is refused (the listener is gone).
async fn wait_refused(addr: std::net::SocketAddr) {
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
async fn unary_echoes_payload_and_names_server() {
    let server = EchoServer::start("alpha").await.unwrap();
    let payload: Vec<u8> = (0..=255).collect();
    let response = server.client().unary(req("hi", &payload)).await.unwrap();
    assert_eq!(response.metadata().get(SERVER_HEADER).unwrap(), "alpha");
    let reply = response.into_inner();
    assert_eq!(reply.message, "hi");
    assert_eq!(&reply.payload[..], &payload[..]);
    assert_eq!(reply.server, "alpha");
    assert_eq!(reply.count, 1);

    let stats = server.stats();
    within(stats.wait_for_finished(1)).await;
    assert_eq!(stats.requests(), 1);
    assert_eq!(stats.cancelled(), 0);
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.connections(), 1);
    assert_eq!(stats.last_payload().unwrap(), &payload[..]);
    assert_eq!(
        stats.last_path().as_deref(),
        Some("/palisade.testkit.echo.v1.Echo/Unary")
    );
    assert_eq!(server.name(), "alpha");
    assert_eq!(server.url(), format!("http://{}", server.addr()));
}

#[tokio::test]
async fn records_grpc_timeout_and_metadata() {
    let server = EchoServer::start("a").await.unwrap();
    let mut request = tonic::Request::new(req("x", b""));
    request.set_timeout(Duration::from_millis(1500));
    request.metadata_mut().insert("x-request-id", "42".parse().unwrap());
    server.connect().await.unwrap().unary(request).await.unwrap();

    let stats = server.stats();
    assert!(stats.last_grpc_timeout_raw().is_some());
    assert_eq!(stats.last_grpc_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(stats.last_headers().get("x-request-id").unwrap(), "42");

    // A request without a deadline carries no grpc-timeout.
    server.client().unary(req("y", b"")).await.unwrap();
    assert_eq!(stats.last_grpc_timeout(), None);
}

#[tokio::test]
async fn server_stream_sends_count_replies() {
    let server = EchoServer::start("s").await.unwrap();
    let mut stream = server
        .client()
        .server_stream(stream_req(5, 0))
        .await
        .unwrap()
        .into_inner();
    let mut sequences = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.server, "s");
        assert_eq!(&reply.payload[..], b"p");
        sequences.push(reply.sequence);
    }
    assert_eq!(sequences, vec![0, 1, 2, 3, 4]);
    within(server.stats().wait_for_streams_completed(1)).await;
    assert_eq!(server.stats().finished(), 1);
    assert_eq!(server.stats().cancelled(), 0);
}

#[tokio::test]
async fn client_stream_concatenates() {
    let server = EchoServer::start("c").await.unwrap();
    let requests = futures::stream::iter(vec![req("a", b"1"), req("b", b"22"), req("c", b"333")]);
    let reply = server.client().client_stream(requests).await.unwrap().into_inner();
    assert_eq!(reply.message, "abc");
    assert_eq!(&reply.payload[..], b"122333");
    assert_eq!(reply.count, 3);
    assert_eq!(reply.server, "c");
    let stats = server.stats();
    assert_eq!(stats.requests(), 1);
    assert_eq!(stats.last_payload().unwrap(), &b"122333"[..]);
    assert_eq!(
        stats.last_path().as_deref(),
        Some("/palisade.testkit.echo.v1.Echo/ClientStream")
    );
}

#[tokio::test]
async fn status_fault_is_observed_and_cleared() {
    let server = EchoServer::start("f").await.unwrap();
    let mut client = server.client();

    server.faults().set_status(Some(Code::ResourceExhausted));
    let err = client.unary(req("x", b"")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.metadata().get(SERVER_HEADER).unwrap(), "f");
    let err = client.server_stream(stream_req(3, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let err = client
        .client_stream(futures::stream::iter(vec![req("a", b"")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    server.faults().set_status(None);
    client.unary(req("x", b"")).await.unwrap();
    assert_eq!(server.stats().requests(), 4);
    assert_eq!(server.stats().finished(), 4);
}

#[tokio::test]
async fn fail_next_then_recover() {
    let server = EchoServer::start("f").await.unwrap();
    let mut client = server.client();
    server.faults().fail_next(2, Code::Unavailable);
    assert_eq!(server.faults().remaining_failures(), 2);
    for _ in 0..2 {
        let err = client.unary(req("x", b"")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    assert_eq!(server.faults().remaining_failures(), 0);
    client.unary(req("x", b"")).await.unwrap();
    client.unary(req("x", b"")).await.unwrap();
    assert_eq!(server.stats().requests(), 4);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let server = EchoServer::start("l").await.unwrap();
    let mut client = server.connect().await.unwrap();
    server.faults().set_latency(Some(Duration::from_millis(150)));
    let start = Instant::now();
    client.unary(req("x", b"")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));

    server.faults().set_latency(None);
    let start = Instant::now();
    client.unary(req("x", b"")).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(150));
}

#[tokio::test(start_paused = true)]
async fn latency_follows_paused_time() {
    let server = EchoServer::start("l").await.unwrap();
    let mut client = server.connect().await.unwrap();
    server.faults().set_latency(Some(Duration::from_secs(30)));
    let start = Instant::now();
    client.unary(req("x", b"")).await.unwrap();
    // Paused time auto-advances over the server's sleep.
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_then_client_drop_counts_cancelled() {
    let server = EchoServer::start("h").await.unwrap();
    let mut client = server.connect().await.unwrap();
    server.faults().set_hang(true);
    let call = tokio::spawn(async move { client.unary(req("x", b"")).await });
    within(server.stats().wait_for_requests(1)).await;
    assert_eq!(server.stats().in_flight(), 1);
    // Dropping the call makes the client reset the HTTP/2 stream.
    call.abort();
    within(server.stats().wait_for_cancelled(1)).await;
    assert_eq!(server.stats().finished(), 0);
    assert_eq!(server.stats().in_flight(), 0);
}

#[tokio::test]
async fn hang_is_released() {
    let server = EchoServer::start("h").await.unwrap();
    let mut client = server.connect().await.unwrap();
    server.faults().set_hang(true);
    let call = tokio::spawn(async move { client.unary(req("x", b"")).await });
    within(server.stats().wait_for_in_flight(1)).await;
    server.faults().set_hang(false);
    let reply = within(call).await.unwrap().unwrap().into_inner();
    assert_eq!(reply.server, "h");
    assert_eq!(server.stats().cancelled(), 0);
}

#[tokio::test]
async fn dropped_server_stream_counts_cancelled() {
    let server = EchoServer::start("s").await.unwrap();
    let mut client = server.connect().await.unwrap();
    let mut stream = client.server_stream(stream_req(1000, 10)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 0);
    drop(stream);
    within(server.stats().wait_for_cancelled(1)).await;
    assert_eq!(server.stats().streams_completed(), 0);
    assert_eq!(server.stats().finished(), 0);
}

#[tokio::test]
async fn stream_fails_after_n_messages() {
    let server = EchoServer::start("s").await.unwrap();
    let mut client = server.client();
    server.faults().fail_stream_after(2, Code::Unavailable);
    let mut stream = client.server_stream(stream_req(5, 0)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 0);
    assert_eq!(stream.message().await.unwrap().unwrap().sequence, 1);
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    within(server.stats().wait_for_streams_failed(1)).await;
    assert_eq!(server.stats().cancelled(), 0);

    // A stream no longer than N completes normally.
    let replies: Vec<_> = client
        .server_stream(stream_req(2, 0))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(Result::is_ok));

    server.faults().clear_stream_failure();
    let replies: Vec<_> = client
        .server_stream(stream_req(5, 0))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(replies.iter().all(Result::is_ok));
    assert_eq!(replies.len(), 5);
    within(server.stats().wait_for_streams_completed(2)).await;
}

#[tokio::test]
async fn close_connection_fails_the_call() {
    let server = EchoServer::start("c").await.unwrap();
    let mut client = server.client();
    client.unary(req("x", b"")).await.unwrap();

    server.faults().close_next(1);
    let err = client.unary(req("x", b"")).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal),
        "{err:?}"
    );
    within(server.stats().wait_for_cancelled(1)).await;

    // The channel reconnects; the fault has run out.
    within(async { while client.unary(req("x", b"")).await.is_err() {} }).await;
    assert!(server.stats().connections() >= 2);

    server.faults().set_close_connection(true);
    assert!(client.unary(req("x", b"")).await.is_err());
    server.faults().clear();
    within(async { while client.unary(req("x", b"")).await.is_err() {} }).await;
}

#[tokio::test]
async fn close_connections_aborts_in_flight_calls() {
    let server = EchoServer::start("c").await.unwrap();
    let mut client = server.connect().await.unwrap();
    server.faults().set_hang(true);
    let call = tokio::spawn(async move { client.unary(req("x", b"")).await });
    within(server.stats().wait_for_requests(1)).await;
    server.close_connections().await;
    assert_eq!(server.stats().cancelled(), 1);
    let err = within(call).await.unwrap().unwrap_err();
    assert_ne!(err.code(), Code::Ok);
}

#[tokio::test]
async fn refuse_then_resume_on_same_port() {
    let server = EchoServer::start("r").await.unwrap();
    let addr = server.addr();
    let mut client = server.client();
    client.unary(req("x", b"")).await.unwrap();

    server.refuse_connections().await;
    server.close_connections().await;
    assert!(!server.is_accepting());
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let err = client.unary(req("x", b"")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    server.resume_connections().unwrap();
    assert!(server.is_accepting());
    assert_eq!(server.addr(), addr);
    // The same channel connects again.
    let reply = within(async {
        loop {
            if let Ok(reply) = client.unary(req("x", b"")).await {
                return reply;
            }
        }
    })
    .await;
    assert_eq!(reply.into_inner().server, "r");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_shuts_the_server_down() {
    let server = EchoServer::start("d").await.unwrap();
    let addr = server.addr();
    let mut client = server.connect().await.unwrap();
    server.faults().set_hang(true);
    let call = tokio::spawn(async move { client.unary(req("x", b"")).await });
    within(server.stats().wait_for_requests(1)).await;
    drop(server);
    wait_refused(addr).await;
    // The hanging call ends with an error instead of hanging forever.
    assert!(within(call).await.unwrap().is_err());
}

#[tokio::test]
async fn shutdown_waits_for_everything() {
    let server = EchoServer::start("d").await.unwrap();
    let addr = server.addr();
    server.client().unary(req("x", b"")).await.unwrap();
    server.shutdown().await;
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn several_servers_answer_with_their_names() {
    let servers = EchoServer::start_many("peer", 3).await.unwrap();
    for (i, server) in servers.iter().enumerate() {
        let reply = server.client().unary(req("x", b"")).await.unwrap().into_inner();
        assert_eq!(reply.server, format!("peer-{i}"));
    }
    servers[1].faults().set_status(Some(Code::Unavailable));
    assert!(servers[1].client().unary(req("x", b"")).await.is_err());
    assert!(servers[0].client().unary(req("x", b"")).await.is_ok());
}

#[tokio::test]
async fn a_seeded_failure_rate_fails_about_that_share_the_same_way_every_run() {
    async fn run(seed: u64) -> Vec<bool> {
        let server = EchoServer::start("brownout").await.unwrap();
        let mut client = server.client();
        server.faults().set_failure_rate(0.3, Code::Unavailable, seed);
        let mut failed = Vec::new();
        for _ in 0..200 {
            let result = client
                .unary(EchoRequest {
                    message: "hi".into(),
                    payload: Default::default(),
                })
                .await;
            if let Err(status) = &result {
                assert_eq!(status.code(), Code::Unavailable);
            }
            failed.push(result.is_err());
        }
        server.faults().set_failure_rate(0.0, Code::Unavailable, seed);
        assert!(
            client
                .unary(EchoRequest {
                    message: "hi".into(),
                    payload: Default::default(),
                })
                .await
                .is_ok()
        );
        failed
    }
    let first = run(7).await;
    let share = first.iter().filter(|f| **f).count();
    assert!((40..80).contains(&share), "{share} of 200 failed at a 30% rate");
    assert_eq!(run(7).await, first, "the same seed fails the same requests");
    assert_ne!(run(8).await, first);
}

/// A unary request whose metadata tags it with `tag`.
fn tagged_req(tag: &'static str) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(req("t", b""));
    request
        .metadata_mut()
        .insert(TAG_HEADER, tonic::metadata::MetadataValue::from_static(tag));
    request
}

#[tokio::test]
async fn tagged_requests_are_counted_per_caller_with_their_arrival_times() {
    let server = EchoServer::start("t").await.unwrap();
    let mut client = server.connect().await.unwrap();
    let before = Instant::now();
    client.unary(tagged_req("one")).await.unwrap();
    server.faults().set_status(Some(Code::Unavailable));
    // Failed requests reached the server too, so they count.
    client.unary(tagged_req("two")).await.unwrap_err();
    client.unary(tagged_req("one")).await.unwrap_err();
    client.unary(req("untagged", b"")).await.unwrap_err();
    let after = Instant::now();
    let stats = server.stats();
    assert_eq!(
        (
            stats.tagged_requests("one"),
            stats.tagged_requests("two"),
            stats.requests()
        ),
        (2, 1, 4)
    );
    let one = stats.tagged("one");
    assert!(one[0] >= before && one[0] <= one[1] && one[1] <= after, "{one:?}");
    assert!(stats.tagged("three").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_capacity_runs_at_most_that_many_handlers_per_connection() {
    let server = EchoServer::start_with_capacity("c", 2).await.unwrap();
    let a = server.connect().await.unwrap();
    server.faults().set_hang(true);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut a = a.clone();
            tokio::spawn(async move { a.unary(tagged_req("a")).await })
        })
        .collect();
    within(server.stats().wait_for_requests(2)).await;
    // Another connection has slots of its own. Its request is sent after the
    // five above, over a connection that must first be opened, so by the time
    // it arrives the other three would have too, were they not waiting.
    let mut b = server.connect().await.unwrap();
    let b_call = tokio::spawn(async move { b.unary(tagged_req("b")).await });
    within(server.stats().wait_until(|s| s.tagged_requests("b") == 1)).await;
    assert_eq!(
        server.stats().tagged_requests("a"),
        2,
        "only two handlers run on connection a"
    );
    assert_eq!(server.stats().in_flight(), 3);

    // Released, the hung handlers finish and the waiting requests run.
    server.faults().set_hang(false);
    for call in calls {
        within(call).await.unwrap().unwrap();
    }
    within(b_call).await.unwrap().unwrap();
    assert_eq!((server.stats().tagged_requests("a"), server.stats().finished()), (5, 6));
}
