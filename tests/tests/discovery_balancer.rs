//! The discovery balancer over three real tonic servers behind the in-memory
//! registry, with a per-peer circuit breaker (palisade-circuit-breaker's
//! `CircuitBreakerLayer::for_peer`, which implements `CheckAvailability`).
//!
//! Time is paused; the registry used with the breaker has no TTL so that no
//! timer but the breakers' (which are lazy) exists, and time moves only when
//! the test advances it.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::time::Duration;

use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::backoff::Jitter;
use palisade_core::options::CallOptionsExt;
use palisade_core::peer::{AttemptRecord, PeerId};
use palisade_core::protocol::Grpc;
use palisade_discovery::{
    InMemoryRegistry, Instance, PeerDiscovery, PeerDiscoveryLayer, Registration, Registry, RegistryDiscover,
};
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::{EchoServer, SERVER_HEADER};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::Layer;

type MakeFn = Box<dyn FnMut(&Instance) -> Result<CircuitBreaker<Channel, Grpc>, palisade_core::BoxError> + Send>;
type Balancer = PeerDiscovery<RegistryDiscover<MakeFn>, Grpc>;

const COOLDOWN: Duration = Duration::from_secs(10);

struct Fleet {
    servers: Vec<EchoServer>,
    registrations: Vec<Option<Registration>>,
    registry: InMemoryRegistry,
    /// Server name -> peer id (its address).
    peers: HashMap<String, PeerId>,
}

impl Fleet {
    async fn start(registry: InMemoryRegistry) -> Fleet {
        let servers = EchoServer::start_many("peer", 3).await.unwrap();
        let mut registrations = Vec::new();
        let mut peers = HashMap::new();
        for server in &servers {
            let instance = Instance::new("echo", server.addr()).with_zone("local");
            peers.insert(server.name().to_owned(), instance.id());
            registrations.push(Some(registry.register(instance).await.unwrap()));
        }
        Fleet {
            servers,
            registrations,
            registry,
            peers,
        }
    }

    fn client(&self, failure_threshold: u32) -> (EchoClient<Balancer>, Balancer) {
        let breaker = CircuitBreakerLayer::new(
            CircuitBreakerConfig::builder()
                .failure_threshold(failure_threshold)
                .cooldown(COOLDOWN)
                .jitter(Jitter::None)
                .success_threshold(2)
                .build()
                .unwrap(),
        )
        .protocol(Grpc::default());
        let make: MakeFn = Box::new(move |instance: &Instance| {
            let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
            Ok(breaker.for_peer(instance.id()).layer(channel))
        });
        let discover = RegistryDiscover::new(&self.registry, "echo", make);
        let balancer = PeerDiscoveryLayer::builder()
            .grpc()
            .service_name("echo")
            .registry_status(discover.status())
            .build()
            .unwrap()
            .layer(discover);
        (EchoClient::new(balancer.clone()), balancer)
    }

    fn peer(&self, i: usize) -> PeerId {
        self.peers[self.servers[i].name()].clone()
    }

    fn requests(&self) -> Vec<u64> {
        self.servers.iter().map(|s| s.stats().requests()).collect()
    }
}

/// One attempt: the name of the server that answered, or the status and the
/// server that failed (from its `x-testkit-server` metadata).
async fn attempt(client: &mut EchoClient<Balancer>, record: &AttemptRecord) -> Result<String, (Code, Option<String>)> {
    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    });
    *request.attempt_record_mut() = record.clone();
    match client.unary(request).await {
        Ok(reply) => Ok(reply.into_inner().server),
        Err(status) => {
            let server = status
                .metadata()
                .get(SERVER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Err((status.code(), server))
        }
    }
}

/// A call with one retry, driven by hand as the retry layer would: the second
/// attempt carries the record of the first. Returns the servers of both attempts.
async fn call_with_retry(fleet: &Fleet, client: &mut EchoClient<Balancer>) -> (Option<String>, String) {
    let record = AttemptRecord::new();
    match attempt(client, &record).await {
        Ok(server) => (None, server),
        Err((code, server)) => {
            let server = server.unwrap_or_else(|| panic!("first attempt failed with {code:?} without a server"));
            record.record(fleet.peers[&server].clone());
            match attempt(client, &record).await {
                Ok(second) => (Some(server), second),
                Err(e) => panic!("the retry failed too: {e:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_peer_is_routed_around_until_its_cooldown_then_probed_and_used_again() {
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    let (mut client, balancer) = fleet.client(3);
    for _ in 0..30 {
        call_with_retry(&fleet, &mut client).await;
    }
    assert!(fleet.requests().iter().all(|&n| n > 0), "{:?}", fleet.requests());

    // Server 0 starts answering UNAVAILABLE.
    fleet.servers[0].faults().set_status(Some(Code::Unavailable));
    let before = fleet.requests()[0];
    for _ in 0..60 {
        // Every call succeeds with one retry.
        call_with_retry(&fleet, &mut client).await;
    }
    let reached = fleet.requests()[0] - before;
    assert!((1..=3).contains(&reached), "the failing peer got {reached} requests");
    let health = balancer.health();
    let bad = health.peer(&fleet.peer(0)).unwrap();
    assert!(!bad.availability.is_available(), "{health}");
    assert!(bad.failures >= 1, "{health}");
    // The latest failure, described by its status.
    assert_eq!(
        bad.last_error.as_deref(),
        Some("gRPC status 14 (UNAVAILABLE): palisade-testkit fault"),
        "{health}"
    );
    assert_eq!(health.peers.len(), 3, "an open peer stays known");

    // Until its cooldown, no further request reaches it.
    let open_at = fleet.requests()[0];
    tokio::time::advance(COOLDOWN - Duration::from_secs(1)).await;
    for _ in 0..40 {
        let (first, _) = call_with_retry(&fleet, &mut client).await;
        assert!(first.is_none(), "a call failed while the bad peer was open");
    }
    assert_eq!(fleet.requests()[0], open_at);

    // It recovers; once the cooldown has passed it gets a probe, then traffic.
    fleet.servers[0].faults().set_status(None);
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..60 {
        let (first, _) = call_with_retry(&fleet, &mut client).await;
        assert!(first.is_none());
    }
    let after = fleet.requests()[0] - open_at;
    assert!(
        after >= 10,
        "the recovered peer got only {after} of 60 calls: {}",
        balancer.health()
    );
    assert!(
        balancer
            .health()
            .peer(&fleet.peer(0))
            .unwrap()
            .availability
            .is_available()
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_never_lands_on_the_peer_that_just_failed_while_another_is_healthy() {
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    // A breaker that never trips here, so only the attempt record keeps the
    // retry away from the failing peer.
    let (mut client, _balancer) = fleet.client(1_000);
    fleet.servers[1].faults().set_status(Some(Code::Unavailable));
    let bad = fleet.servers[1].name().to_owned();
    let mut retried = 0;
    for _ in 0..60 {
        let (first, second) = call_with_retry(&fleet, &mut client).await;
        if let Some(first) = first {
            assert_eq!(first, bad);
            assert_ne!(second, bad, "the retry went back to the peer that just failed");
            retried += 1;
        }
    }
    assert!(retried > 5, "the failing peer was hardly picked ({retried})");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_removes_its_peer_and_a_silent_provider_expires_after_the_ttl() {
    let ttl = Duration::from_secs(6);
    let mut fleet = Fleet::start(InMemoryRegistry::with_ttl(ttl).unwrap()).await;
    let (mut client, balancer) = fleet.client(3);
    for _ in 0..20 {
        call_with_retry(&fleet, &mut client).await;
    }
    assert_eq!(balancer.health().peers.len(), 3);

    // Provider 0 shuts down: its handle is dropped.
    drop(fleet.registrations[0].take());
    let before = fleet.requests()[0];
    for _ in 0..30 {
        call_with_retry(&fleet, &mut client).await;
    }
    assert_eq!(fleet.requests()[0], before, "a deregistered peer still got calls");
    let ids: Vec<_> = balancer.health().peers.iter().map(|p| p.peer.clone()).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&fleet.peer(0)));

    // Provider 1 is "killed": its heartbeats stop, the registration stays
    // until the TTL passes.
    fleet.registrations[1].take().unwrap().abandon();
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let before = fleet.requests()[1];
    for _ in 0..30 {
        call_with_retry(&fleet, &mut client).await;
    }
    assert_eq!(fleet.requests()[1], before, "an expired peer still got calls");
    let health = balancer.health();
    assert_eq!(health.peers.len(), 1, "{health}");
    assert_eq!(health.peers[0].peer, fleet.peer(2));
    // Provider 2's heartbeats kept it alive through all of this.
    assert_eq!(fleet.registry.instances("echo").len(), 1);
}

type RetryClient =
    EchoClient<palisade_retry::Retry<Balancer, Grpc, palisade_retry::DefaultPredicate, palisade_retry::TonicBody>>;

// The real retry layer over the real balancer: the balancer names the peer on
// the response (`TagPeer`), the retry layer records it in the attempt record
// before it builds the next attempt, and the balancer avoids it.
#[tokio::test(start_paused = true)]
async fn under_palisade_retry_every_call_succeeds_and_no_retry_goes_back_to_the_failed_peer() {
    use palisade_core::backoff::Backoff;
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    // The breaker never trips here: only the attempt record and the peer named
    // on the response keep the retry away from the failing peer.
    let (_, balancer) = fleet.client(1_000);
    let retry = palisade_retry::RetryLayer::builder()
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
    let mut client: RetryClient = EchoClient::new(retry.layer(balancer));
    fleet.servers[2].faults().set_status(Some(Code::Unavailable));
    for _ in 0..60 {
        let reply = client
            .unary(EchoRequest {
                message: "hi".into(),
                payload: Default::default(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a call failed although two peers are healthy and one retry is allowed: {e:?} {:?}",
                    fleet.requests()
                )
            });
        assert_ne!(reply.into_inner().server, fleet.servers[2].name());
    }
    let bad = fleet.requests()[2];
    assert!(
        bad > 5,
        "the failing peer was hardly tried ({bad}), so no retry was tested"
    );
}

/// Per attempt: how many attempts of its call came before it, and its peer.
type AttemptLog = std::sync::Arc<parking_lot::Mutex<Vec<(usize, Option<PeerId>)>>>;

/// Between the retry layer and the balancer: logs, for every attempt, how many
/// attempts of its call came before it and the peer the balancer chose (read
/// from the shared attempt record the balancer just wrote to).
#[derive(Clone)]
struct Spy<S> {
    inner: S,
    log: AttemptLog,
}

impl<S, B> tower::Service<http::Request<B>> for Spy<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        let record = request.extensions().get::<AttemptRecord>().cloned();
        let prior = record.as_ref().map_or(0, AttemptRecord::len);
        let future = self.inner.call(request);
        self.log.lock().push((prior, record.and_then(|r| r.last())));
        future
    }
}

type SpyRetryClient =
    EchoClient<palisade_retry::Retry<Spy<Balancer>, Grpc, palisade_retry::DefaultPredicate, palisade_retry::TonicBody>>;

// A STOPPED peer (connections refused) fails its attempts with a transport
// error, not a response: the retry layer still learns the peer, through the
// attempt record it shares with the balancer, so its retry goes elsewhere.
#[tokio::test(start_paused = true)]
async fn under_palisade_retry_a_stopped_peer_is_not_retried_even_when_it_fails_with_an_error() {
    use palisade_core::backoff::Backoff;
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    // Breakers that never trip: only the attempt record steers the retry.
    let (_, balancer) = fleet.client(1_000_000);
    let retry = palisade_retry::RetryLayer::builder()
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
    let log = AttemptLog::default();
    let spy = Spy {
        inner: balancer,
        log: log.clone(),
    };
    let mut client: SpyRetryClient = EchoClient::new(retry.layer(spy));
    fleet.servers[2].refuse_connections().await;
    let stopped = fleet.peer(2);
    for _ in 0..60 {
        let reply = client
            .unary(EchoRequest {
                message: "hi".into(),
                payload: Default::default(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a call failed although two peers are healthy and one retry is allowed: {e:?} {:?}",
                    log.lock()
                )
            });
        assert_ne!(reply.into_inner().server, fleet.servers[2].name());
    }
    let log = log.lock();
    let first_tries = log
        .iter()
        .filter(|(prior, peer)| *prior == 0 && peer.as_ref() == Some(&stopped))
        .count();
    let retries_to_stopped = log
        .iter()
        .filter(|(prior, peer)| *prior > 0 && peer.as_ref() == Some(&stopped))
        .count();
    let retries = log.iter().filter(|(prior, _)| *prior > 0).count();
    assert_eq!(retries_to_stopped, 0, "a retry went back to the stopped peer: {log:?}");
    assert!(
        first_tries > 5 && retries >= first_tries,
        "the stopped peer was hardly tried ({first_tries} first attempts, {retries} retries): no retry was tested"
    );
    assert_eq!(fleet.servers[2].stats().requests(), 0);
}

/// Each per-peer breaker `make` built, by address, in order.
type Made = std::sync::Arc<parking_lot::Mutex<Vec<(String, palisade_circuit_breaker::CircuitBreakerHandle)>>>;

impl Fleet {
    /// Like [`Fleet::client`], recording every breaker made.
    fn recording_client(&self, failure_threshold: u32) -> (EchoClient<Balancer>, Balancer, Made) {
        let made = Made::default();
        let log = made.clone();
        let breaker = CircuitBreakerLayer::new(
            CircuitBreakerConfig::builder()
                .failure_threshold(failure_threshold)
                .cooldown(COOLDOWN)
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .protocol(Grpc::default());
        let make: MakeFn = Box::new(move |instance: &Instance| {
            let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
            let peer = breaker.for_peer(instance.id()).layer(channel);
            log.lock().push((instance.addr().to_owned(), peer.handle()));
            Ok(peer)
        });
        let discover = RegistryDiscover::new(&self.registry, "echo", make);
        let balancer = PeerDiscoveryLayer::builder()
            .grpc()
            .service_name("echo")
            .registry_status(discover.status())
            .build()
            .unwrap()
            .layer(discover);
        (EchoClient::new(balancer.clone()), balancer, made)
    }
}

// Issue 14, item 3: a metadata change re-inserted the instance, which built a
// new client and breaker: an open peer came back closed, its history lost.
#[tokio::test(start_paused = true)]
async fn an_open_peer_whose_metadata_changes_stays_open_with_its_history() {
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    let (mut client, balancer, made) = fleet.recording_client(3);
    fleet.servers[0].faults().set_status(Some(Code::Unavailable));
    for _ in 0..60 {
        call_with_retry(&fleet, &mut client).await;
    }
    let addr = fleet.servers[0].addr().to_string();
    let handle = made.lock().iter().find(|(a, _)| *a == addr).unwrap().1.clone();
    assert_eq!(handle.state(), palisade_circuit_breaker::CircuitState::Open);
    let before = handle.snapshot();
    let health = balancer.health();
    let entry = health.peer(&fleet.peer(0)).unwrap().clone();
    assert!(
        matches!(entry.state, palisade_discovery::PeerState::Open { .. }),
        "{health}"
    );

    // The provider re-registers with new metadata (same address).
    let _again = fleet
        .registry
        .register(
            Instance::new("echo", fleet.servers[0].addr())
                .with_zone("local")
                .with_metadata("version", "2")
                .with_weight(2),
        )
        .await
        .unwrap();
    let reached = fleet.requests()[0];
    for _ in 0..40 {
        let (first, _) = call_with_retry(&fleet, &mut client).await;
        assert!(first.is_none(), "a call reached the open peer");
    }
    assert_eq!(fleet.requests()[0], reached, "the open peer got traffic again");
    // Same breaker (make was not called again), same state and history.
    assert_eq!(
        made.lock().iter().filter(|(a, _)| *a == addr).count(),
        1,
        "a new client was made"
    );
    let after = handle.snapshot();
    assert_eq!(after.state, palisade_circuit_breaker::CircuitState::Open);
    assert_eq!(
        (after.times_opened, after.generation),
        (before.times_opened, before.generation)
    );
    let health = balancer.health();
    let now = health.peer(&fleet.peer(0)).unwrap();
    assert_eq!(
        (now.state, now.failures, now.weight),
        (entry.state, entry.failures, 2),
        "{health}"
    );
}

// Issue 14, item 7: the latest error with its whole cause chain, never a
// stale one.
#[tokio::test(start_paused = true)]
async fn the_health_report_shows_the_latest_failure_with_its_cause_chain() {
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    // Breakers that never trip: the peer keeps being tried.
    let (mut client, balancer) = fleet.client(1_000);
    fleet.servers[2].refuse_connections().await;
    for _ in 0..30 {
        let _ = attempt(&mut client, &AttemptRecord::new()).await;
    }
    let health = balancer.health();
    let refused = health.peer(&fleet.peer(2)).unwrap();
    let error = refused.last_error.as_deref().unwrap_or_else(|| panic!("{health}"));
    // Not just "transport error": the cause that says what happened.
    assert!(error.starts_with("transport error: "), "{error}");
    assert!(error.to_lowercase().contains("connection refused"), "{error}");
    let first_at = refused.last_error_at.unwrap();

    // It comes back but answers UNAVAILABLE: the report shows that now.
    fleet.servers[2].resume_connections().unwrap();
    fleet.servers[2].faults().set_status(Some(Code::Unavailable));
    tokio::time::advance(Duration::from_secs(1)).await;
    let failed = fleet.servers[2].stats().requests();
    for _ in 0..60 {
        let _ = attempt(&mut client, &AttemptRecord::new()).await;
    }
    assert!(
        fleet.servers[2].stats().requests() > failed,
        "the peer was not tried again"
    );
    let health = balancer.health();
    let now = health.peer(&fleet.peer(2)).unwrap();
    assert_eq!(
        now.last_error.as_deref(),
        Some("gRPC status 14 (UNAVAILABLE): palisade-testkit fault"),
        "{health}"
    );
    assert!(now.last_error_at.unwrap() > first_at);
}

// Review of issue 14, item 7: a gRPC failure that comes at the end of a
// stream (the status in the trailers, after replies were sent) is the
// peer's latest error in the health report, with its code and message; not
// the older trailers-only error, nor a vague "failed at the end of its
// stream".
#[tokio::test(start_paused = true)]
async fn a_status_in_the_trailers_of_a_stream_is_the_peers_latest_error() {
    let fleet = Fleet::start(InMemoryRegistry::without_ttl()).await;
    // Breakers that never trip: every peer keeps being tried.
    let (mut client, balancer) = fleet.client(1_000);
    for server in &fleet.servers {
        server.faults().set_status(Some(Code::Internal));
    }
    for _ in 0..12 {
        let _ = attempt(&mut client, &AttemptRecord::new()).await;
    }
    let health = balancer.health();
    assert!(
        health
            .peers
            .iter()
            .filter_map(|p| p.last_error.as_deref())
            .any(|e| e.starts_with("gRPC status 13 (INTERNAL)")),
        "{health}"
    );
    for server in &fleet.servers {
        server.faults().set_status(None);
        server.faults().fail_stream_after(1, Code::Unavailable);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let request = palisade_testkit::echo::StreamRequest {
        message: "hi".into(),
        count: 3,
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream did not fail"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    let health = balancer.health();
    let latest = health
        .peers
        .iter()
        .max_by_key(|p| p.last_error_at)
        .unwrap_or_else(|| panic!("{health}"));
    let error = latest.last_error.as_deref().unwrap_or_else(|| panic!("{health}"));
    assert!(
        error.starts_with("gRPC status 14 (UNAVAILABLE): ") && error.ends_with("(in the trailers)"),
        "{health}"
    );
}
