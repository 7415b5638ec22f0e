//! An open breaker's `retry_in` is honoured like server pushback (issue 13,
//! item 6), over real tonic servers.
//!
//! - The README's quickstart stack (no balancer):
//!   `Total -> Retry -> Bulkhead -> Breaker -> attempt Timeout -> Channel`.
//!   With the breaker open for its 10 s cooldown and 2 s left to the call,
//!   each call makes one attempt, refused at once, and spends no retry
//!   budget. Before the fix every call made all three of its attempts
//!   against the open breaker, each through the bulkhead and out of the
//!   shared budget.
//! - With a balancer that records its pick in the attempt record, a peer
//!   whose breaker refuses is left for another peer at once (after the
//!   ordinary backoff), however long its `retry_in`.
#![allow(clippy::disallowed_types)]

mod stacked;

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{BoxError, CircuitOpen, TimeoutKind};
use palisade_core::options::CallOptionsExt;
use palisade_core::peer::PeerId;
use palisade_core::protocol::Grpc;
use palisade_retry::{RetryLayer, TonicRetryLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::{Timeout, TimeoutLayer};
use stacked::{ManualClock, RetryEvents, within};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn total() -> TimeoutLayer<Grpc> {
    TimeoutLayer::builder()
        .grpc()
        .kind(TimeoutKind::Total)
        .timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap()
}

/// The quickstart's retry layer, with a budget whose balance is easy to
/// read: each call deposits one retry, each retry withdraws one.
fn retry(events: &std::sync::Arc<RetryEvents>) -> TonicRetryLayer {
    RetryLayer::builder()
        .grpc()
        .tonic_body()
        .retries(2)
        .backoff(
            Backoff::exponential(Duration::from_millis(20))
                .jitter(Jitter::Full)
                .build()
                .unwrap(),
        )
        .budget(1.0, 0, Duration::from_secs(10))
        .listener(events.clone())
        .build()
        .unwrap()
}

fn bulkhead() -> BulkheadLayer<Grpc> {
    BulkheadLayer::new(
        BulkheadConfig::builder()
            .max_concurrent(16)
            .max_queue(64)
            .build()
            .unwrap(),
    )
    .protocol(Grpc::default())
}

fn breaker() -> CircuitBreakerLayer<Grpc> {
    CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(3).build().unwrap())
        .protocol(Grpc::default())
}

fn attempt_timeout() -> TimeoutLayer<Grpc> {
    TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap()
}

fn hello(retries: Option<u32>) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    });
    if let Some(retries) = retries {
        request.call_options_mut().set_retries(retries);
    }
    request
}

#[tokio::test(start_paused = true)]
async fn the_quickstart_stack_makes_one_attempt_per_call_while_the_breaker_is_open() {
    let clock = ManualClock::hold();
    let server = EchoServer::start("a").await.unwrap();
    let events = RetryEvents::new();
    let retry = retry(&events);
    let breaker = breaker();
    let state = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(total())
        .layer(retry.clone())
        .layer(bulkhead())
        .layer(breaker)
        .layer(attempt_timeout())
        .service(server.channel());
    let mut client = EchoClient::new(stack);

    // Trip the breaker: three failed calls of one attempt each.
    server.faults().set_status(Some(Code::Unavailable));
    for _ in 0..3 {
        let status = within("a failing call", client.unary(hello(Some(0))))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(state.state(), CircuitState::Open);
    assert_eq!(server.stats().requests(), 3);
    let budget = retry.budget().unwrap();
    assert_eq!(budget.available(), 3, "three deposits, no retry");
    // No request reaches the server from here on: time may run on its own
    // (a retry sleeping its backoff would not hang the test).
    drop(clock);

    for call in 1..=5u64 {
        let start = Instant::now();
        let status = client.unary(hello(None)).await.unwrap_err();
        let open = status
            .source()
            .and_then(|e| e.downcast_ref::<CircuitOpen>())
            .unwrap_or_else(|| panic!("not CircuitOpen: {status:?}"));
        assert!(open.retry_in() > Duration::from_secs(2), "longer than the time left");
        assert_eq!(state.rejected(), call, "one attempt per call, not all three");
        assert_eq!(Instant::now(), start, "refused at once, no backoff slept");
    }
    assert_eq!(events.count(), 0, "no retry was made");
    assert_eq!(budget.available(), 8, "five deposits, no withdrawal");
    assert_eq!(server.stats().requests(), 3);
}

type PerPeer = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;
type PerPeerResponse = <PerPeer as Service<http::Request<tonic::body::Body>>>::Response;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A balancer that sends each attempt to the first peer no earlier attempt
/// of the call used, and records its pick in the call's attempt record. It
/// does not ask the peers' breakers first, so a call can meet an open one
/// (as when a breaker opens between a pick and the call).
#[derive(Clone)]
struct FirstUnused {
    peers: Vec<(PeerId, PerPeer)>,
}

impl Service<http::Request<tonic::body::Body>> for FirstUnused {
    type Response = PerPeerResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<PerPeerResponse, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let record = request.attempt_record_mut().clone();
        let (peer, service) = self
            .peers
            .iter()
            .find(|(peer, _)| !record.contains(peer))
            .unwrap_or(&self.peers[0])
            .clone();
        record.record(peer);
        Box::pin(async move { service.oneshot(request).await })
    }
}

#[tokio::test(start_paused = true)]
async fn with_a_balancer_an_open_peer_is_left_for_another_at_once() {
    let _clock = ManualClock::hold();
    let servers = EchoServer::start_many("peer", 2).await.unwrap();
    let events = RetryEvents::new();
    let retry = retry(&events);
    let breaker = breaker();
    let mut handles: Vec<CircuitBreakerHandle> = Vec::new();
    let peers = servers
        .iter()
        .map(|server| {
            let id = PeerId::from(server.addr());
            let per_peer = breaker.for_peer(id.clone());
            handles.push(per_peer.handle());
            (id, per_peer.layer(attempt_timeout().layer(server.channel())))
        })
        .collect();
    let stack = ServiceBuilder::new()
        .layer(total())
        .layer(retry.clone())
        .layer(bulkhead())
        .service(FirstUnused { peers });
    let mut client = EchoClient::new(stack);

    // Peer 0's breaker is open for good (forced): its `retry_in` is a year.
    handles[0].force_open();
    let start = Instant::now();
    let mut call = tokio::spawn(async move { client.unary(hello(None)).await });
    tokio::select! {
        () = events.wait_for(1) => {}
        ended = &mut call => panic!("the call ended without switching peers: {ended:?}"),
    }
    // The first backoff is at most 20 ms (exponential from 20 ms, full jitter).
    tokio::time::advance(Duration::from_millis(20)).await;
    let reply = within("the call ends", call).await.unwrap().unwrap().into_inner();
    assert_eq!(reply.server, servers[1].name(), "retried on the other peer");
    assert!(Instant::now() - start <= Duration::from_millis(20));
    assert_eq!(handles[0].rejected(), 1);
    assert_eq!(servers[0].stats().requests(), 0);
    assert_eq!(servers[1].stats().requests(), 1);
    assert_eq!(retry.budget().unwrap().available(), 0, "one deposit, one retry");
}

/// The quickstart stack without a balancer, over a healthy server, with a
/// breaker tripped at once (cooldown `cooldown`, no jitter) and a constant
/// `backoff`: one call, whose first attempt meets the open breaker. Returns
/// the delays of the retries it decided and its result.
async fn after_an_open_breaker(
    backoff: Duration,
    cooldown: Duration,
    max_pushback: Duration,
) -> (
    Vec<Duration>,
    Result<tonic::Response<palisade_testkit::echo::EchoReply>, tonic::Status>,
) {
    let _clock = ManualClock::hold();
    let server = EchoServer::start("a").await.unwrap();
    let events = RetryEvents::new();
    let retry = RetryLayer::builder()
        .grpc()
        .tonic_body()
        .retries(1)
        .backoff(Backoff::constant(backoff).jitter(Jitter::None).build().unwrap())
        .max_pushback(max_pushback)
        .no_budget()
        .listener(events.clone())
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .success_threshold(1)
            .cooldown(cooldown)
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    )
    .protocol(Grpc::default());
    let state = breaker.handle();
    let stack = ServiceBuilder::new()
        .layer(retry)
        .layer(bulkhead())
        .layer(breaker)
        .layer(attempt_timeout())
        .service(server.channel());
    let mut client = EchoClient::new(stack);
    server.faults().set_status(Some(Code::Unavailable));
    let status = within("the tripping call", client.unary(hello(Some(0))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(state.state(), CircuitState::Open);
    server.faults().set_status(None);

    let mut call = tokio::spawn(async move { client.unary(hello(None)).await });
    tokio::select! {
        () = events.wait_for(1) => {}
        ended = &mut call => {
            let result = ended.unwrap();
            return (events.delays(), result);
        }
    }
    let delay = events.delays()[0];
    tokio::time::advance(delay).await;
    let result = within("the retried call ends", call).await.unwrap();
    (events.delays(), result)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_longer_than_retry_in_is_kept() {
    let ms = Duration::from_millis;
    let (delays, result) = after_an_open_breaker(ms(300), ms(100), ms(10_000)).await;
    assert_eq!(delays, [ms(300)], "max(backoff, retry_in), not retry_in alone");
    assert!(result.is_ok(), "the probe after the backoff succeeds: {result:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_longer_than_the_backoff_is_waited_out() {
    let ms = Duration::from_millis;
    let (delays, result) = after_an_open_breaker(ms(20), ms(100), ms(10_000)).await;
    assert_eq!(delays, [ms(100)], "max(backoff, retry_in)");
    assert!(result.is_ok(), "the probe after retry_in succeeds: {result:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_beyond_the_pushback_cap_is_not_retried() {
    let ms = Duration::from_millis;
    let (delays, result) = after_an_open_breaker(ms(20), ms(100), ms(50)).await;
    assert_eq!(delays, [], "no retry");
    let status = result.unwrap_err();
    assert!(
        status.source().and_then(|e| e.downcast_ref::<CircuitOpen>()).is_some(),
        "the open breaker's answer stands: {status:?}"
    );
}
