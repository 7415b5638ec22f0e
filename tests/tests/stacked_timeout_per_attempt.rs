//! A per-call timeout bounds each attempt, not the whole call (issue 13,
//! item 4), over two real tonic servers behind the preset's stack:
//!
//! ```text
//! Total(1 s) -> Retry(1) -> PeerDiscovery -> [Breaker -> Attempt timeout] -> Channel
//! ```
//!
//! A call that sets only a 50 ms timeout against handlers of 200 ms times out
//! at 50 ms on one peer and is retried once on the other; before the fix the
//! total layer took the 50 ms too, ended the call with the first attempt and
//! no retry was made.
#![allow(clippy::disallowed_types)]

mod stacked;

use std::error::Error as _;
use std::time::Duration;

use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{BoxError, TimedOut, TimeoutKind};
use palisade_core::options::CallOptionsExt;
use palisade_core::protocol::Grpc;
use palisade_discovery::{InMemoryRegistry, Instance, PeerDiscovery, PeerDiscoveryLayer, Registry, RegistryDiscover};
use palisade_retry::RetryLayer;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::{Timeout, TimeoutLayer};
use stacked::{ManualClock, RetryEvents, within};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower::{Layer, ServiceBuilder};

type PerPeer = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;
type MakeFn = Box<dyn FnMut(&Instance) -> Result<PerPeer, BoxError> + Send>;
type Balancer = PeerDiscovery<RegistryDiscover<MakeFn>, Grpc>;

fn balancer(registry: &InMemoryRegistry) -> Balancer {
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap()).protocol(Grpc::default());
    // The per-attempt timeout: its own default (30 s) is overridden per call.
    let attempt = TimeoutLayer::builder().grpc().build().unwrap();
    let make: MakeFn = Box::new(move |instance: &Instance| {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        Ok(breaker.for_peer(instance.id()).layer(attempt.layer(channel)))
    });
    let discover = RegistryDiscover::new(registry, "echo", make);
    PeerDiscoveryLayer::builder()
        .grpc()
        .service_name("echo")
        .registry_status(discover.status())
        .build()
        .unwrap()
        .layer(discover)
}

#[tokio::test(start_paused = true)]
async fn a_per_call_timeout_bounds_each_attempt_and_the_call_is_retried_on_another_peer() {
    // rustc cannot prove this stack's future `Send` (higher-ranked lifetime
    // inference through the balancer's make function): the call runs as a
    // local task.
    tokio::task::LocalSet::new()
        .run_until(per_call_timeout_scenario())
        .await;
}

async fn per_call_timeout_scenario() {
    let _clock = ManualClock::hold();
    let servers = EchoServer::start_many("peer", 2).await.unwrap();
    let registry = InMemoryRegistry::without_ttl();
    let mut registrations = Vec::new();
    for server in &servers {
        server.faults().set_latency(Some(Duration::from_millis(200)));
        registrations.push(registry.register(Instance::new("echo", server.addr())).await.unwrap());
    }
    let events = RetryEvents::new();
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(1)))
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .retries(1)
                .backoff(
                    Backoff::constant(Duration::from_millis(10))
                        .jitter(Jitter::None)
                        .build()
                        .unwrap(),
                )
                .listener(events.clone())
                .build()
                .unwrap(),
        )
        .service(balancer(&registry));
    let mut client = EchoClient::new(stack);

    let mut request = tonic::Request::new(EchoRequest {
        message: "slow".into(),
        payload: Default::default(),
    });
    request.call_options_mut().set_timeout(Duration::from_millis(50));
    let start = Instant::now();
    let mut call = tokio::task::spawn_local(async move { client.unary(request).await });

    let requests = || servers.iter().map(|s| s.stats().requests()).sum::<u64>();
    within("the first attempt reaches a server", async {
        tokio::select! {
            () = servers[0].stats().wait_for_requests(1) => {}
            () = servers[1].stats().wait_for_requests(1) => {}
        }
    })
    .await;
    let first = usize::from(servers[1].stats().requests() == 1);
    let other = 1 - first;

    // 50 ms: the attempt times out (its handler is cancelled), and the call
    // is retried after its 10 ms backoff, on the other peer.
    tokio::time::advance(Duration::from_millis(50)).await;
    tokio::select! {
        () = events.wait_for(1) => {}
        ended = &mut call => panic!("the call ended at the first attempt's timeout, unretried: {ended:?}"),
    }
    within(
        "the first handler is cancelled",
        servers[first].stats().wait_for_cancelled(1),
    )
    .await;
    tokio::time::advance(Duration::from_millis(10)).await;
    within(
        "the retry reaches the other peer",
        servers[other].stats().wait_for_requests(1),
    )
    .await;
    assert_eq!(requests(), 2);

    // 50 ms more: the retry times out too, and the call ends with its error.
    tokio::time::advance(Duration::from_millis(50)).await;
    let status = within("the call ends", call).await.unwrap().unwrap_err();
    assert_eq!(
        Instant::now() - start,
        Duration::from_millis(110),
        "well within the total 1 s"
    );
    let timed_out = status
        .source()
        .and_then(|e| e.downcast_ref::<TimedOut>())
        .unwrap_or_else(|| panic!("not an attempt's TimedOut: {status:?}"));
    assert_eq!(
        (timed_out.kind(), timed_out.limit()),
        (TimeoutKind::Attempt, Duration::from_millis(50))
    );
    within(
        "the retry's handler is cancelled",
        servers[other].stats().wait_for_cancelled(1),
    )
    .await;
    for server in &servers {
        let stats = server.stats();
        assert_eq!(
            (stats.requests(), stats.cancelled(), stats.finished()),
            (1, 1, 0),
            "{}: one attempt each, cut at 50 ms",
            server.name()
        );
    }
}
