//! Classify real gRPC calls by how they really ended.
//!
//! Starts a test-kit echo server on loopback, wraps a tonic `Channel` so that
//! every response is followed to its end by `palisade_body::track`, and
//! prints each call's outcome: a unary success, an `UNAVAILABLE` answer (a
//! trailers-only response), a `NOT_FOUND` (the caller's business, not a
//! failure of the peer) and a server stream that fails after three messages
//! (one failure, counted when the stream errors, not when headers arrive).
//!
//! Run: `cargo run -p palisade-examples --example grpc_outcomes`

use palisade_body::{BodyLimits, Settle, track};
use palisade_core::classify::Outcome;
use palisade_core::protocol::Grpc;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use tower::ServiceBuilder;

/// Prints the outcome of the call it was attached to, when it is known.
struct Print;

impl Settle for Print {
    fn settle(self, outcome: Outcome) {
        println!("    -> {}", outcome.as_str());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = EchoServer::start("example").await?;
    let channel = ServiceBuilder::new()
        .map_result(|result| track(&Grpc::default(), result, Print, BodyLimits::NONE))
        .service(server.channel());
    let mut client = EchoClient::new(channel);

    println!("unary ok");
    client.unary(EchoRequest::default()).await?;

    println!("unary UNAVAILABLE");
    server.faults().fail_next(1, tonic::Code::Unavailable);
    let _ = client.unary(EchoRequest::default()).await;

    println!("unary NOT_FOUND");
    server.faults().fail_next(1, tonic::Code::NotFound);
    let _ = client.unary(EchoRequest::default()).await;

    println!("stream failing after 3");
    server.faults().fail_stream_after(3, tonic::Code::Unavailable);
    let mut stream = client
        .server_stream(StreamRequest {
            message: "tick".into(),
            count: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Ok(Some(reply)) = stream.message().await {
        println!("    message {}", reply.sequence);
    }
    Ok(())
}
