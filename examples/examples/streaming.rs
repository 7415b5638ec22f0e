//! Server streaming through the preset client: a stream that fails after
//! three messages is counted once, at its real end, and is not replayed.
//!
//! A test-kit echo server on loopback answers a 10-message stream but fails
//! it with `UNAVAILABLE` after the third message. The caller gets the three
//! messages and then the status; the server saw one request (a stream that
//! has started is never retried: its messages were already delivered); the
//! breaker counted one failure when the stream ended, not a success when the
//! response head arrived.
//!
//! Run: `cargo run -p palisade-examples --example streaming`

use palisade::BoxError;
use palisade::preset::GrpcClient;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::StreamRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = EchoServer::start("streamer").await?;
    server.faults().fail_stream_after(3, Code::Unavailable);
    let client = GrpcClient::over_channel(server.channel()).build()?;
    let mut echo = EchoClient::new(client.clone());

    let request = StreamRequest {
        message: "tick".into(),
        count: 10,
        payload: Default::default(),
        interval_ms: 10,
    };
    let mut stream = echo.server_stream(request).await?.into_inner();
    let mut received = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                received += 1;
                println!("message {received}: {:?} from {}", reply.message, reply.server);
            }
            Ok(None) => break "end of stream".to_owned(),
            Err(status) => break format!("{:?}: {}", status.code(), status.message()),
        }
    };
    println!("the stream ended with {end} after {received} messages");
    println!(
        "the server saw {} request(s) and failed {} stream(s): not replayed",
        server.stats().requests(),
        server.stats().streams_failed()
    );
    let requests = server.stats().requests();
    if (received, requests) != (3, 1) {
        return Err(format!("expected 3 messages from 1 request, got {received} from {requests}").into());
    }
    if let Some(breaker) = client.health().breaker {
        println!(
            "the breaker, after the stream's end: {:?}, {} consecutive failure(s)",
            breaker.state, breaker.consecutive_failures
        );
    }
    Ok(())
}
