//! A peer's `DEADLINE_EXCEEDED` caused by our own limit is ours (brief
//! fix13, item 2), over a real tonic server that honours `grpc-timeout` as
//! grpc-go and grpcio do: it answers a trailers-only `DEADLINE_EXCEEDED`
//! when the time the header gave it runs out (here a millisecond early, as
//! a server whose clock started on receipt, with the header rounded down,
//! does).
//!
//! ```text
//! Retry -> CircuitBreaker -> attempt Timeout -> Channel
//! ```
//!
//! - The caller's deadline is the binding limit: the call fails with our
//!   `DeadlineExceeded`, the breaker counts nothing, nothing is retried.
//! - The attempt timeout is the binding limit: each attempt is our
//!   `TimedOut` (a failure, as if our timer had fired), and it is retried.
//!
//! Before the fix the peer's answer passed through as the peer's failure in
//! both cases, and was not retried.
//!
//! Paused time: the clock moves only by `advance` ([`ManualClock`]).
#![allow(clippy::disallowed_types, missing_docs)]

mod stacked;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{DeadlineExceeded, TimedOut, TimeoutKind, find_error};
use palisade_core::grpc_timeout;
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::protocol::Grpc;
use palisade_retry::{RetryLayer, TonicRetryLayer};
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::echo_server::{Echo, EchoServer as EchoService};
use palisade_testkit::echo::{EchoReply, EchoRequest, StreamRequest};
use palisade_timeout::TimeoutLayer;
use stacked::{ManualClock, RetryEvents, within};
use tonic::transport::{Endpoint, Server, server::TcpIncoming};
use tonic::{Code, Request, Response, Status};
use tower::ServiceBuilder;

/// Answers `DEADLINE_EXCEEDED` a millisecond before the `grpc-timeout` it
/// was given runs out; counts the requests it got.
#[derive(Clone, Default)]
struct Strict {
    requests: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Echo for Strict {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout::parse(v.as_bytes()))
            .ok_or_else(|| Status::invalid_argument("no grpc-timeout"))?;
        tokio::time::sleep(timeout.saturating_sub(Duration::from_millis(1))).await;
        Err(Status::deadline_exceeded("the time the header gave ran out"))
    }

    type ServerStreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

    async fn server_stream(&self, _: Request<StreamRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    async fn client_stream(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("unary only"))
    }
}

async fn start() -> (Strict, tonic::transport::Channel) {
    let strict = Strict::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(EchoService::new(strict.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    (strict, channel)
}

fn hello() -> Request<EchoRequest> {
    Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    })
}

async fn requests_reach(strict: &Strict, n: u64) {
    within(&format!("{n} requests reach the server"), async {
        while strict.requests.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

fn layers(
    attempt: Duration,
    events: &Arc<RetryEvents>,
) -> (TonicRetryLayer, CircuitBreakerLayer<Grpc>, TimeoutLayer<Grpc>) {
    let retry = RetryLayer::builder()
        .grpc()
        .tonic_body()
        .retries(1)
        .backoff(
            Backoff::constant(Duration::from_millis(1))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .no_budget()
        .listener(events.clone())
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(10).build().unwrap())
        .protocol(Grpc::default());
    let timeout = TimeoutLayer::builder().grpc().timeout(Some(attempt)).build().unwrap();
    (retry, breaker, timeout)
}

#[tokio::test(start_paused = true)]
async fn the_peers_deadline_exceeded_at_the_callers_deadline_is_nobodys_fault() {
    let _clock = ManualClock::hold();
    let (strict, channel) = start().await;
    let events = RetryEvents::new();
    let (retry, breaker, timeout) = layers(Duration::from_secs(1), &events);
    let state = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .layer(timeout)
        .service(channel);
    let mut client = EchoClient::new(stack);

    let mut request = hello();
    request
        .call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(50)));
    let call = tokio::spawn(async move { client.unary(request).await });
    requests_reach(&strict, 1).await;
    // The server answers at 49 ms, before our own timer (50 ms) fires.
    tokio::time::advance(Duration::from_millis(49)).await;
    let status = within("the call ends", call).await.unwrap().unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    let ours = find_error::<DeadlineExceeded>(&status).unwrap_or_else(|| panic!("not our deadline: {status:?}"));
    assert!(ours.was_sent());
    let snapshot = state.snapshot();
    assert_eq!(snapshot.state, CircuitState::Closed);
    assert_eq!(
        snapshot.consecutive_failures, 0,
        "the caller's deadline is not the peer's fault"
    );
    assert_eq!(events.count(), 0, "a deadline is not retried");
    assert_eq!(strict.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_peers_deadline_exceeded_at_our_attempt_timeout_is_a_timed_out_attempt() {
    let _clock = ManualClock::hold();
    let (strict, channel) = start().await;
    let events = RetryEvents::new();
    let (retry, breaker, timeout) = layers(Duration::from_millis(50), &events);
    let state = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .layer(timeout)
        .service(channel);
    let mut client = EchoClient::new(stack);

    let call = tokio::spawn(async move { client.unary(hello()).await });
    requests_reach(&strict, 1).await;
    tokio::time::advance(Duration::from_millis(49)).await;
    // As if our timer had fired: a retryable attempt timeout.
    events.wait_for(1).await;
    tokio::time::advance(Duration::from_millis(1)).await;
    requests_reach(&strict, 2).await;
    tokio::time::advance(Duration::from_millis(49)).await;
    let status = within("the call ends", call).await.unwrap().unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    let ours = find_error::<TimedOut>(&status).unwrap_or_else(|| panic!("not our timeout: {status:?}"));
    assert_eq!(ours.kind(), TimeoutKind::Attempt);
    assert_eq!(ours.limit(), Duration::from_millis(50));
    assert_eq!(
        state.snapshot().consecutive_failures,
        2,
        "each timed-out attempt is the peer's failure"
    );
    assert_eq!(strict.requests.load(Ordering::SeqCst), 2);
}
