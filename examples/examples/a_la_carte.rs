//! One layer alone: a circuit breaker around a tonic `Channel`, nothing else.
//!
//! Every layer works on its own (pick one a-la-carte); this one judges each
//! gRPC call by its real status, which a gRPC server sends at the end of the
//! response (in the trailers) even when the http status is 200. A test-kit
//! echo server on loopback answers `UNAVAILABLE`: after three such calls the
//! breaker opens and the next call fails at once with `UNAVAILABLE` and a
//! `CircuitOpen` behind it, without reaching the server. Once the server
//! is healthy again and the cooldown has passed, a probe closes it.
//!
//! Run: `cargo run -p palisade-examples --example a_la_carte`

use std::time::Duration;

use palisade::BoxError;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::core::error::{CircuitOpen, find_error};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;
use tower::Layer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = EchoServer::start("backend").await?;
    let breaker = CircuitBreakerLayer::builder()
        .grpc()
        .failure_threshold(3)
        .cooldown(Duration::from_millis(300))
        .success_threshold(1)
        .build()?;
    let state = breaker.handle();
    let mut echo = EchoClient::new(breaker.layer(server.channel()));
    let hello = || EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    };

    server.faults().set_status(Some(Code::Unavailable));
    for i in 1..=3 {
        let status = echo.unary(hello()).await.err().ok_or("a failing server succeeded")?;
        println!("call {i}: {:?}; breaker {:?}", status.code(), state.state());
    }
    let seen = server.stats().requests();
    let status = echo
        .unary(hello())
        .await
        .err()
        .ok_or("an open breaker let a call through")?;
    let open: &CircuitOpen = find_error(&status).ok_or("not refused by the breaker")?;
    println!("call 4: {:?}, refused at once: {open}", status.code());
    if server.stats().requests() != seen || state.state() != CircuitState::Open {
        return Err("the open breaker did not keep the call from the server".into());
    }

    server.faults().set_status(None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let reply = echo.unary(hello()).await?;
    println!(
        "after the cooldown, a probe: {:?}; breaker {:?}",
        reply.get_ref().message,
        state.state()
    );
    if state.state() != CircuitState::Closed {
        return Err("a successful probe did not close the breaker".into());
    }
    Ok(())
}
