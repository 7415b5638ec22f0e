//! Real servers for Palisade's integration tests.
//!
//! Every server listens on `127.0.0.1` with an ephemeral port, and lets a test
//! switch faults on and off at run time through its handle:
//!
//! - [`EchoServer`]: a tonic gRPC server for the [`echo`] service
//!   (`palisade.testkit.echo.v1.Echo`: unary, server streaming and client
//!   streaming calls).
//! - [`HttpServer`]: a hyper server speaking HTTP/1.1 and HTTP/2 (prior
//!   knowledge, auto-detected on each connection) that echoes the request body
//!   and can stream a response in chunks (`/stream?n=5&delay_ms=10`).
//!
//! Both share:
//!
//! - [`Faults`]: answer with a status ([`Faults::set_status`],
//!   [`Faults::fail_next`], a seeded random share with
//!   [`Faults::set_failure_rate`]), add latency ([`Faults::set_latency`]), hang until
//!   cancelled or released ([`Faults::set_hang`]), close the connection
//!   ([`Faults::set_close_connection`], [`Faults::close_next`]) and fail a
//!   response stream after N messages (`fail_stream_after`).
//! - [`Stats`]: counters (requests, finished, cancelled, streams completed or
//!   failed, connections), what the last request carried (headers,
//!   `grpc-timeout`, payload, path), the arrival times of requests tagged with
//!   a [`TAG_HEADER`] per tag (to tell several callers of one server apart),
//!   and `wait_for_*` methods that await a count without polling.
//! - Lifecycle: `refuse_connections` drops the listener (connects are refused),
//!   `resume_connections` binds the same port again, `close_connections` drops
//!   every open connection, and dropping the handle aborts the accept loop and
//!   every connection task, so nothing a test starts outlives it.
//!
//! Which server answered is visible to clients: the `server` field of
//! [`echo::EchoReply`], and the `x-testkit-server` header (gRPC: response
//! metadata, also on error statuses; HTTP: a response header).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_testkit::{EchoServer, echo::EchoRequest};
//! use tonic::Code;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = EchoServer::start("a").await.unwrap();
//! let mut client = server.client();
//!
//! // The next request fails with UNAVAILABLE, the one after succeeds.
//! server.faults().fail_next(1, Code::Unavailable);
//! let request = || EchoRequest { message: "hi".into(), payload: b"abc".to_vec().into() };
//! let err = client.unary(request()).await.unwrap_err();
//! assert_eq!(err.code(), Code::Unavailable);
//! let reply = client.unary(request()).await.unwrap().into_inner();
//! assert_eq!(reply.server, "a");
//! assert_eq!(&reply.payload[..], b"abc");
//!
//! // Counters can be awaited instead of polled.
//! tokio::time::timeout(Duration::from_secs(5), server.stats().wait_for_requests(2))
//!     .await
//!     .unwrap();
//! assert_eq!(server.stats().last_payload().as_deref(), Some(&b"abc"[..]));
//! # }
//! ```

mod faults;
mod grpc;
mod http_server;
mod net;
mod stats;

/// The generated protobuf messages and tonic client and server for
/// `proto/echo.proto` (package `palisade.testkit.echo.v1`).
///
/// The client is [`echo::echo_client::EchoClient`]; the server side is
/// [`echo::echo_server::Echo`] (implemented by [`EchoServer`]).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod echo {
    tonic::include_proto!("palisade.testkit.echo.v1");
}

pub use faults::Faults;
pub use grpc::EchoServer;
pub use http_server::{HttpClient, HttpServer, http1_client, http2_client};
pub use stats::Stats;

/// The header (HTTP) or metadata key (gRPC) carrying the name of the server
/// that answered.
pub const SERVER_HEADER: &str = "x-testkit-server";

/// The request header (HTTP) or metadata key (gRPC) that tags a request with
/// the name of the caller that sent it: [`Stats::tagged`] records, per tag,
/// when each tagged request reached the server.
pub const TAG_HEADER: &str = "x-testkit-tag";
