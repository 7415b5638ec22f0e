//! A caller's deadline is nobody's fault, through the stack a user builds:
//!
//! ```text
//! Retry -> Bulkhead -> PeerDiscovery -> per peer [CircuitBreaker -> attempt Timeout] -> Channel
//! ```
//!
//! over three real, healthy tonic servers. Calls whose deadline passes while
//! they wait in the bulkhead's queue, calls whose deadline has passed before
//! they are sent, and calls whose deadline (not the attempt timeout) is the
//! binding limit all fail with `DEADLINE_EXCEEDED`, and no breaker opens, no
//! failure is counted against any peer, and the servers see exactly the
//! calls that reached them.
//!
//! These tests run in real time: the calls race real timers against real
//! sockets, and paused time would jump the clock to the next timer whenever
//! a request is on the wire. No assertion is about how long anything took;
//! every wait is bounded.
#![allow(clippy::disallowed_types, missing_docs)]

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use palisade_bulkhead::{Bulkhead, BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{BoxError, DeadlineExceeded};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::peer::PeerId;
use palisade_core::protocol::Grpc;
use palisade_discovery::{
    InMemoryRegistry, Instance, PeerDiscovery, PeerDiscoveryLayer, Registration, Registry, RegistryDiscover,
};
use palisade_retry::{DefaultPredicate, Retry, RetryLayer, TonicBody};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::{Timeout, TimeoutLayer};
use parking_lot::Mutex;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::Layer;

type PerPeer = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;
type MakeFn = Box<dyn FnMut(&Instance) -> Result<PerPeer, BoxError> + Send>;
type Balancer = PeerDiscovery<RegistryDiscover<MakeFn>, Grpc>;
type Stack = Retry<Bulkhead<Balancer, Grpc>, Grpc, DefaultPredicate, TonicBody>;

/// How long a bounded wait may take before the test fails: far beyond any
/// limit below, so a loaded machine does not fail the test, while a call
/// that waits for something that never comes (a queued call nobody releases)
/// still does.
const BOUND: Duration = Duration::from_secs(10);

struct Fleet {
    servers: Vec<EchoServer>,
    _registrations: Vec<Registration>,
    client: EchoClient<Stack>,
    balancer: Balancer,
    bulkhead: BulkheadHandle,
    breakers: Arc<Mutex<Vec<(PeerId, CircuitBreakerHandle)>>>,
}

impl Fleet {
    async fn start() -> Fleet {
        let registry = InMemoryRegistry::without_ttl();
        let servers = EchoServer::start_many("peer", 3).await.unwrap();
        let mut registrations = Vec::new();
        for server in &servers {
            registrations.push(registry.register(Instance::new("echo", server.addr())).await.unwrap());
        }
        // Two failures in a row would open a peer's breaker.
        let breaker = CircuitBreakerLayer::new(
            CircuitBreakerConfig::builder()
                .failure_threshold(2)
                .cooldown(Duration::from_secs(60))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .protocol(Grpc::default());
        // The attempt timeout is generous: the deadlines below are tighter.
        let attempt = TimeoutLayer::builder()
            .grpc()
            .timeout(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        let breakers = Arc::new(Mutex::new(Vec::new()));
        let seen = breakers.clone();
        let make: MakeFn = Box::new(move |instance: &Instance| {
            let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
            let per_peer = breaker.for_peer(instance.id());
            seen.lock().push((instance.id(), per_peer.handle()));
            Ok(per_peer.layer(attempt.layer(channel)))
        });
        let discover = RegistryDiscover::new(&registry, "echo", make);
        let balancer = PeerDiscoveryLayer::builder()
            .grpc()
            .service_name("echo")
            .registry_status(discover.status())
            .build()
            .unwrap()
            .layer(discover);
        // One slot and a queue: concurrent calls wait their turn.
        let bulkhead = BulkheadLayer::new(
            BulkheadConfig::builder()
                .max_concurrent(1)
                .max_queue(8)
                .build()
                .unwrap(),
        )
        .protocol(Grpc::default());
        let bulkhead_handle = bulkhead.handle();
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
            .build()
            .unwrap();
        let stack: Stack = retry.layer(bulkhead.layer(balancer.clone()));
        Fleet {
            servers,
            _registrations: registrations,
            client: EchoClient::new(stack),
            balancer,
            bulkhead: bulkhead_handle,
            breakers,
        }
    }

    fn requests(&self) -> u64 {
        self.servers.iter().map(|s| s.stats().requests()).sum()
    }

    fn cancelled(&self) -> u64 {
        self.servers.iter().map(|s| s.stats().cancelled()).sum()
    }

    /// Waits (bounded) until `condition` holds for the fleet's stats: it is
    /// checked after every change of any server's stats.
    async fn until(&self, what: &str, condition: impl Fn(&Fleet) -> bool) {
        let waits = self
            .servers
            .iter()
            .map(|s| Box::pin(s.stats().wait_until(|_| condition(self))));
        tokio::time::timeout(BOUND, futures::future::select_all(waits))
            .await
            .unwrap_or_else(|_| panic!("{what}: requests {}, cancelled {}", self.requests(), self.cancelled()));
    }

    /// No breaker opened or counted a failure, and the balancer counted no
    /// failure against any peer.
    fn assert_no_peer_was_blamed(&self, phase: &str) {
        let breakers = self.breakers.lock();
        assert_eq!(breakers.len(), 3, "{phase}: a breaker per peer");
        for (peer, breaker) in breakers.iter() {
            let snapshot = breaker.snapshot();
            assert_eq!(snapshot.state, CircuitState::Closed, "{phase}: the breaker of {peer}");
            assert_eq!(
                snapshot.consecutive_failures, 0,
                "{phase}: failures counted against {peer}"
            );
        }
        let health = self.balancer.health();
        for peer in &health.peers {
            assert!(peer.availability.is_available(), "{phase}: {health}");
            assert_eq!(peer.failures, 0, "{phase}: the balancer blamed {}: {health}", peer.peer);
        }
    }
}

fn echo(deadline: Option<Duration>) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    });
    if let Some(budget) = deadline {
        request.call_options_mut().set_deadline(Deadline::after(budget));
    }
    request
}

/// The call failed with `DEADLINE_EXCEEDED` and our typed error behind it.
fn deadline_of(result: Result<tonic::Response<palisade_testkit::echo::EchoReply>, tonic::Status>) -> DeadlineExceeded {
    let status = result.expect_err("the deadline passed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    status
        .source()
        .and_then(|e| palisade_core::error::find_error::<DeadlineExceeded>(e))
        .unwrap_or_else(|| panic!("not our deadline: {status:?}"))
        .clone()
}

async fn until_in_flight(handle: &BulkheadHandle, n: usize) {
    tokio::time::timeout(BOUND, async {
        while handle.in_flight() != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the bulkhead's permits reached the count");
}

#[tokio::test]
async fn deadlines_that_pass_while_queued_before_send_or_in_flight_blame_no_peer() {
    let mut fleet = Fleet::start().await;

    // A healthy call first: every peer's client is made and works.
    for _ in 0..6 {
        fleet.client.unary(echo(None)).await.unwrap();
    }
    let baseline = fleet.requests();
    fleet.assert_no_peer_was_blamed("warm-up");

    // 1. Deadlines that pass while queued. A call that hangs at its server
    //    holds the bulkhead's only slot; five calls with 100 ms deadlines
    //    queue behind it and leave the queue at their deadline, never sent.
    for server in &fleet.servers {
        server.faults().set_hang(true);
    }
    // (The calls run in this task: the stack's futures are polled together
    // with `select!` rather than spawned.)
    let mut holder_client = fleet.client.clone();
    let mut holder = Box::pin(holder_client.unary(echo(None)));
    tokio::select! {
        result = &mut holder => panic!("the holder ended: {result:?}"),
        () = until_in_flight(&fleet.bulkhead, 1) => {}
    }
    let queued = futures::future::join_all((0..5).map(|_| {
        let mut client = fleet.client.clone();
        async move { client.unary(echo(Some(Duration::from_millis(100)))).await }
    }));
    let results = tokio::select! {
        result = &mut holder => panic!("the holder ended: {result:?}"),
        results = tokio::time::timeout(BOUND, queued) => {
            results.expect("a queued call ends at its deadline, not when the slot frees")
        }
    };
    for result in results {
        assert!(!deadline_of(result).was_sent());
    }
    assert_eq!(fleet.bulkhead.queued(), 0, "their queue places were given back");
    tokio::select! {
        result = &mut holder => panic!("the holder ended: {result:?}"),
        () = fleet.until("the holder reached a server", |f| f.requests() == baseline + 1) => {}
    }
    // The caller gives up on the holder: a cancelled call blames nobody either.
    drop(holder);
    until_in_flight(&fleet.bulkhead, 0).await;
    assert_eq!(fleet.requests(), baseline + 1, "only the holder reached a server");
    fleet.assert_no_peer_was_blamed("deadlines passed while queued");

    // 2. Deadlines already passed when the call is made: refused before send
    //    (at the latest by the attempt timeout under the breaker).
    for server in &fleet.servers {
        server.faults().set_hang(false);
    }
    let before = fleet.requests();
    for _ in 0..6 {
        let result = fleet.client.unary(echo(Some(Duration::ZERO))).await;
        assert!(!deadline_of(result).was_sent());
    }
    assert_eq!(fleet.requests(), before, "nothing was sent");
    fleet.assert_no_peer_was_blamed("deadlines passed before send");

    // 3. The deadline, not the attempt timeout, is the binding limit: healthy
    //    servers that take 2 s, calls that allow 100 ms. Each call reaches a
    //    server, the attempt timeout fires at the deadline and cancels it.
    for server in &fleet.servers {
        server.faults().set_latency(Some(Duration::from_secs(2)));
    }
    let before = fleet.requests();
    let cancelled = fleet.cancelled();
    for _ in 0..6 {
        let result = fleet.client.unary(echo(Some(Duration::from_millis(100)))).await;
        let deadline = deadline_of(result);
        assert!(deadline.was_sent(), "sent with the time left: {deadline}");
    }
    fleet
        .until("every call reached a server and was cancelled there", |f| {
            f.requests() == before + 6 && f.cancelled() == cancelled + 6
        })
        .await;
    fleet.assert_no_peer_was_blamed("deadlines binding in flight");

    // The peers still serve: nothing was excluded.
    for server in &fleet.servers {
        server.faults().set_latency(None);
    }
    for _ in 0..6 {
        fleet.client.unary(echo(None)).await.unwrap();
    }
    fleet.assert_no_peer_was_blamed("afterwards");
}
