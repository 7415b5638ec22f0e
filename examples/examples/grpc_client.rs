//! The Palisade client stack around one tonic `Channel`.
//!
//! Outermost first: a total timeout, retries under a budget, a bulkhead, a
//! circuit breaker and a per-attempt timeout, all speaking gRPC (`Grpc`): per
//! call options, `grpc-timeout` propagation and verdicts from the trailers.
//! A test-kit echo server on loopback fails the first two calls with
//! `UNAVAILABLE`; the retries absorb them. Then it hangs: the per-attempt
//! timeout fires, the breaker counts the timeouts and opens, and the next
//! call is refused at once with `CircuitOpen` without reaching the server.
//!
//! Run: `cargo run -p palisade-examples --example grpc_client`

use std::time::Duration;

use palisade::BoxError;
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::core::backoff::{Backoff, Jitter};
use palisade::core::error::{CircuitOpen, TimedOut, find_error};
use palisade::retry::RetryLayer;
use palisade::stack::GrpcStack;
use palisade::timeout::{TimeoutKind, TimeoutLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::{EchoRequest, echo_client::EchoClient};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = EchoServer::start("backend").await?;

    let breaker = CircuitBreakerLayer::builder()
        .grpc()
        .peer(server.addr().to_string())
        .failure_threshold(3)
        .cooldown(Duration::from_secs(5))
        .build()?;
    let breaker_state = breaker.handle();

    let stack: GrpcStack = ServiceBuilder::new() // a named type, no box: a struct field can hold it
        // The whole call, every attempt and backoff included.
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(2)))
                .build()?,
        )
        // Replayable request bodies, handed to the channel as tonic's body type.
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .retries(2)
                .backoff(
                    Backoff::exponential(Duration::from_millis(20))
                        .jitter(Jitter::Full)
                        .build()?,
                )
                .build()?,
        )
        // `.protocol(Joined(Grpc::default()))` would join the breaker's body (as the preset does).
        .layer(
            BulkheadLayer::builder()
                .grpc()
                .max_concurrent(16)
                .max_queue(64)
                .build()?,
        )
        .layer(breaker)
        // One attempt.
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .timeout(Some(Duration::from_millis(300)))
                .build()?,
        )
        .service(server.channel());
    let mut client = EchoClient::new(stack);
    let hello = || EchoRequest {
        message: "hello".into(),
        payload: b"payload".to_vec().into(),
    };

    // Two UNAVAILABLE answers, absorbed by the retries.
    server.faults().fail_next(2, tonic::Code::Unavailable);
    let reply = client.unary(hello()).await?.into_inner();
    println!(
        "1. answered by {:?} after the server failed twice ({} requests reached it)",
        reply.server,
        server.stats().requests()
    );

    // The server hangs: attempts time out and each timeout is a breaker failure.
    server.faults().set_hang(true);
    let status = client.unary(hello()).await.unwrap_err();
    // The status code is the one a gRPC caller expects (DEADLINE_EXCEEDED),
    // and the typed error is still behind it (tonic keeps it as the source).
    let timed_out = find_error::<TimedOut>(&status).map(ToString::to_string);
    println!(
        "2. the hanging server: {:?}, {}",
        status.code(),
        timed_out.unwrap_or_else(|| status.to_string())
    );
    println!("   breaker is now {:?}", breaker_state.state());

    // Open: refused at once, the server sees nothing.
    let before = server.stats().requests();
    let status = client.unary(hello()).await.unwrap_err();
    let refused = find_error::<CircuitOpen>(&status).map(ToString::to_string);
    println!(
        "3. refused without a request ({} new requests): {:?}, {}",
        server.stats().requests() - before,
        status.code(),
        refused.unwrap_or_else(|| status.to_string())
    );
    server.faults().set_hang(false);
    Ok(())
}
