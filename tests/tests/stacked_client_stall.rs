//! A client that stalls does not blame its peer (issue 18, "also seen"):
//! over a real tonic server that takes its time, through the quickstart's
//! per-peer layers,
//!
//! ```text
//! CircuitBreaker (1 failure opens) -> Timeout (per attempt, 300 ms) -> Channel
//! ```
//!
//! an attempt whose timer fires on time is the peer's failure and opens the
//! breaker; one whose timer fires far past its deadline (the clock jumps 2 s
//! at once, as when the client's runtime did not run) still fails the call
//! with `TimedOut`, but the breaker stays closed.
#![allow(clippy::disallowed_types)]

mod stacked;

use std::time::Duration;

use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
use palisade_core::error::TimedOut;
use palisade_core::protocol::Grpc;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::TimeoutLayer;
use stacked::{ManualClock, within};
use tower::Layer;

fn status_is_timed_out(status: &tonic::Status) -> Option<TimedOut> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = next {
        if let Some(timed_out) = error.downcast_ref::<TimedOut>() {
            return Some(timed_out.clone());
        }
        next = error.source();
    }
    None
}

/// Calls once through a fresh breaker over a 300 ms attempt timeout while the
/// server takes 10 s; once the request is at the server, moves the clock by
/// `jump` at once. Returns the caller's error and the breaker's state after.
async fn one_timed_out_call(server: &EchoServer, jump: Duration) -> (TimedOut, CircuitState) {
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap())
        .protocol(Grpc::default());
    let handle = breaker.handle();
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(breaker.layer(attempt.layer(server.channel())));
    let before = server.stats().requests();
    let call = tokio::spawn(async move { client.unary(EchoRequest::default()).await });
    within("the request reaches the server", async {
        while server.stats().requests() == before {
            tokio::task::yield_now().await;
        }
    })
    .await;
    tokio::time::advance(jump).await;
    let status = within("the call ends", call).await.unwrap().unwrap_err();
    let timed_out = status_is_timed_out(&status).unwrap_or_else(|| panic!("not a TimedOut: {status:?}"));
    (timed_out, handle.state())
}

#[tokio::test(start_paused = true)]
async fn a_timer_that_fires_far_past_its_deadline_is_the_clients_stall_not_the_peers_failure() {
    let _clock = ManualClock::hold();
    let server = EchoServer::start("slow").await.unwrap();
    server.faults().set_latency(Some(Duration::from_secs(10)));

    // On time: the peer's failure.
    let (timed_out, state) = one_timed_out_call(&server, Duration::from_millis(300)).await;
    assert!(!timed_out.is_client_stall(), "{timed_out:?}");
    assert_eq!(
        state,
        CircuitState::Open,
        "an attempt timeout on time opens the breaker"
    );

    // 1.7 s late: the client did not run; the caller still gets TimedOut.
    let (timed_out, state) = one_timed_out_call(&server, Duration::from_secs(2)).await;
    assert!(timed_out.is_client_stall(), "{timed_out:?}");
    assert!(timed_out.late_by() >= Duration::from_millis(1_700), "{timed_out:?}");
    assert!(timed_out.to_string().contains("client stalled"), "{timed_out}");
    assert_eq!(
        state,
        CircuitState::Closed,
        "a stalled client's timeout is not the peer's failure"
    );
}
