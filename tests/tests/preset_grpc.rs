//! The preset client (issue 16) through a tonic generated client, over
//! three real test-kit servers behind the in-memory registry, and over one
//! channel: what the caller sees and what the servers saw.
//!
//! Time is paused (the servers run on the test's runtime), so the breakers'
//! cooldowns pass with `tokio::time::advance`.
#![allow(clippy::disallowed_types, missing_docs)]

use std::time::Duration;

use palisade::core::error::{BulkheadFull, CircuitOpen, NoAvailablePeers, find_error};
use palisade::discovery::{InMemoryRegistry, Instance, Registration, Registry};
use palisade::preset::{GrpcClient, GrpcClients};
use palisade_circuit_breaker::CircuitState;
use palisade_discovery::PeerState;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;

struct Fleet {
    servers: Vec<EchoServer>,
    registrations: Vec<Option<Registration>>,
    registry: InMemoryRegistry,
}

impl Fleet {
    async fn start(service: &str) -> Fleet {
        let servers = EchoServer::start_many("peer", 3).await.unwrap();
        let registry = InMemoryRegistry::without_ttl();
        let mut registrations = Vec::new();
        for server in &servers {
            registrations.push(Some(
                registry.register(Instance::new(service, server.addr())).await.unwrap(),
            ));
        }
        Fleet {
            servers,
            registrations,
            registry,
        }
    }
}

fn hello() -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    }
}

/// Makes `n` calls; returns the servers that answered them, in order.
async fn calls(client: &mut EchoClient<GrpcClient>, n: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(n);
    for i in 0..n {
        let reply = client
            .unary(hello())
            .await
            .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        served.push(reply.into_inner().server);
    }
    served
}

#[tokio::test(start_paused = true)]
async fn a_failing_a_stopped_and_a_deregistered_instance_never_fail_a_call() {
    let mut fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo").build().unwrap();
    let mut echo = EchoClient::new(client.clone());

    let served = calls(&mut echo, 30).await;
    for server in &fleet.servers {
        assert!(
            served.iter().any(|s| s == server.name()),
            "{} never served: {served:?}",
            server.name()
        );
    }

    // peer-0 answers UNAVAILABLE: the retry goes to another instance; the
    // breaker takes peer-0 out after 3 failures.
    fleet.servers[0].faults().set_status(Some(Code::Unavailable));
    let served = calls(&mut echo, 50).await;
    assert!(!served.iter().any(|s| s == "peer-0"));
    let failed_at_peer0 = fleet.servers[0].stats().requests();
    let _ = calls(&mut echo, 50).await;
    assert_eq!(
        fleet.servers[0].stats().requests(),
        failed_at_peer0,
        "an open peer was called"
    );
    let health = client.health();
    let peers = health.peers.expect("a registry client reports its peers");
    let peer0 = peers
        .peers
        .iter()
        .find(|p| p.peer.as_str() == fleet.servers[0].addr().to_string())
        .expect("peer-0 in the report");
    assert!(matches!(peer0.state, PeerState::Open { .. }), "{:?}", peer0.state);

    // peer-1 stops accepting connections (refused): still every call succeeds.
    fleet.servers[1].refuse_connections().await;
    fleet.servers[1].close_connections().await;
    // The first call may meet the connection the server just closed: hyper
    // cancels the request it had not written, and the retry sends it to
    // another instance. Every call succeeds.
    echo.unary(hello())
        .await
        .expect("a request canceled by a closed connection is retried");
    let served = calls(&mut echo, 50).await;
    assert!(served.iter().all(|s| s == "peer-2"), "{served:?}");

    // peer-0 and peer-1 recover; peer-2 is deregistered: after peer-0's
    // cooldown (10 s, doubling) every call succeeds on the other two.
    fleet.servers[0].faults().set_status(None);
    fleet.servers[1].resume_connections().unwrap();
    tokio::time::advance(Duration::from_secs(41)).await;
    fleet.registrations[2].take().unwrap().shutdown().await.unwrap();
    tokio::task::yield_now().await;
    let _ = calls(&mut echo, 20).await;
    let before = fleet.servers[2].stats().requests();
    let served = calls(&mut echo, 50).await;
    assert_eq!(
        fleet.servers[2].stats().requests(),
        before,
        "a deregistered instance was called"
    );
    assert!(
        served.iter().any(|s| s == "peer-0") && served.iter().any(|s| s == "peer-1"),
        "{served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_client_is_send_and_works_inside_tokio_spawn() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo").build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut echo = EchoClient::new(client.clone());
        tasks.push(tokio::spawn(async move { calls(&mut echo, 10).await.len() }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 10);
    }
    let total: u64 = fleet.servers.iter().map(|s| s.stats().requests()).sum();
    assert_eq!(total, 80);
}

#[tokio::test(start_paused = true)]
async fn over_one_channel_the_breaker_opens_and_callers_see_unavailable_with_the_typed_error() {
    let server = EchoServer::start("solo").await.unwrap();
    let client = GrpcClient::over_channel(server.channel()).retries(0).build().unwrap();
    let mut echo = EchoClient::new(client.clone());
    assert_eq!(calls(&mut echo, 3).await, ["solo"; 3]);

    server.faults().set_status(Some(Code::Unavailable));
    for _ in 0..3 {
        assert_eq!(echo.unary(hello()).await.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(client.health().breaker.unwrap().state, CircuitState::Open);
    let reached = server.stats().requests();
    let status = echo.unary(hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(find_error::<CircuitOpen>(&status).is_some(), "{status:?}");
    assert_eq!(server.stats().requests(), reached, "an open breaker let a call through");

    // After the cooldown a probe goes through and two successes close it.
    server.faults().set_status(None);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(calls(&mut echo, 3).await, ["solo"; 3]);
    assert_eq!(client.health().breaker.unwrap().state, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn every_setting_is_validated_at_build_with_the_layer_and_field_named() {
    let registry = InMemoryRegistry::without_ttl();
    let error = GrpcClient::builder(registry.clone(), "echo")
        .breaker(|b| b.failure_threshold(0))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "failure_threshold");
    let error = GrpcClient::builder(registry.clone(), "echo")
        .bulkhead(|b| b.max_concurrent(0))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "max_concurrent");
    let error = GrpcClients::builder(registry)
        .service("a", |b| b)
        .service("a", |b| b.retries(0))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "service");
    assert!(error.to_string().contains("\"a\""), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_client_set_builds_each_service_once_with_its_own_settings() {
    let fleet = Fleet::start("flaky").await;
    let clients = GrpcClients::builder(fleet.registry.clone())
        .all(|b| b.breaker(|c| c.failure_threshold(100)))
        .service("strict", |b| b.retries(0))
        .build()
        .unwrap();
    // "flaky" keeps the preset's one retry: a failing instance is retried elsewhere.
    fleet.servers[0].faults().set_status(Some(Code::Unavailable));
    let mut flaky = EchoClient::new(clients.get("flaky").unwrap());
    let served = calls(&mut flaky, 30).await;
    assert!(!served.iter().any(|s| s == "peer-0"));
    // The cached client shares its state: the second handle sees the same peers.
    let again = clients.get("flaky").unwrap();
    assert_eq!(again.health().peers.unwrap().peers.len(), 3);

    // "strict" (no retry) over a registry with no instance of it fails at once.
    let mut strict = EchoClient::new(clients.get("strict").unwrap());
    let status = strict.unary(hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(find_error::<NoAvailablePeers>(&status).is_some(), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_rejects_beyond_its_limit_as_resource_exhausted() {
    let fleet = Fleet::start("echo").await;
    for server in &fleet.servers {
        server.faults().set_hang(true);
    }
    let client = GrpcClient::builder(fleet.registry.clone(), "echo")
        .bulkhead(|b| b.max_concurrent(2))
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut echo = EchoClient::new(client.clone());
        held.push(tokio::spawn(async move { echo.unary(hello()).await.map(|_| ()) }));
    }
    while client.health().bulkhead_in_flight < 2 {
        tokio::task::yield_now().await;
    }
    let mut echo = EchoClient::new(client.clone());
    let status = echo.unary(hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(find_error::<BulkheadFull>(&status).is_some());
    for task in held {
        task.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_reaches_the_server_and_each_attempt_gets_the_time_left() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo")
        .attempt_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut echo = EchoClient::new(client);
    let mut request = tonic::Request::new(hello());
    request.set_timeout(Duration::from_millis(800));
    echo.unary(request).await.unwrap();
    let seen: Vec<_> = fleet
        .servers
        .iter()
        .filter_map(|s| s.stats().last_grpc_timeout())
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0] <= Duration::from_millis(800) && seen[0] > Duration::from_millis(700),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_failing_after_three_messages_is_not_replayed() {
    let fleet = Fleet::start("echo").await;
    for server in &fleet.servers {
        server.faults().fail_stream_after(3, Code::Unavailable);
    }
    let client = GrpcClient::builder(fleet.registry.clone(), "echo").build().unwrap();
    let mut echo = EchoClient::new(client);
    let request = palisade_testkit::echo::StreamRequest {
        message: "s".into(),
        count: 10,
        payload: Default::default(),
        interval_ms: 1,
    };
    let mut stream = echo.server_stream(request).await.unwrap().into_inner();
    let mut got = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(got, 3);
    assert_eq!(end.unwrap().code(), Code::Unavailable);
    let streams: u64 = fleet.servers.iter().map(|s| s.stats().streams_failed()).sum();
    let requests: u64 = fleet.servers.iter().map(|s| s.stats().requests()).sum();
    assert_eq!((streams, requests), (1, 1), "a failed stream was replayed");
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_its_method_with_a_typed_reply_and_leaves_the_others_alone() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo")
        .fallback("/palisade.testkit.echo.v1.Echo/Unary", |error| {
            Ok(palisade_testkit::echo::EchoReply {
                message: format!("cached ({error})"),
                server: "fallback".into(),
                ..Default::default()
            })
        })
        .build()
        .unwrap();
    let mut echo = EchoClient::new(client.clone());
    assert_eq!(calls(&mut echo, 6).await.len(), 6);

    // Every instance answers UNAVAILABLE: the stack gives up, and the unary
    // method gets the fallback's typed reply, marked as such.
    for server in &fleet.servers {
        server.faults().set_status(Some(Code::Unavailable));
    }
    let reply = echo.unary(hello()).await.expect("the fallback answered");
    assert!(reply.extensions().get::<palisade::fallback::FromFallback>().is_some());
    let reply = reply.into_inner();
    assert_eq!(reply.server, "fallback");
    assert!(reply.message.starts_with("cached"), "{reply:?}");

    // Another method has no fallback: its caller sees the failure.
    let request = palisade_testkit::echo::StreamRequest {
        message: "s".into(),
        count: 2,
        payload: Default::default(),
        interval_ms: 0,
    };
    let status = echo.server_stream(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Naming a method twice is a configuration error.
    let error = GrpcClient::builder(fleet.registry.clone(), "echo")
        .fallback("/a.B/C", |_| {
            Err::<palisade_testkit::echo::EchoReply, _>(tonic::Status::unavailable("x"))
        })
        .fallback("/a.B/C", |_| {
            Err::<palisade_testkit::echo::EchoReply, _>(tonic::Status::unavailable("y"))
        })
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "fallback");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_instance_costs_one_attempt_timeout_and_the_retry_goes_elsewhere() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo")
        .attempt_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut echo = EchoClient::new(client.clone());
    let _ = calls(&mut echo, 6).await;
    fleet.servers[1].faults().set_hang(true);
    // Every call succeeds; a call that met peer-1 waited one attempt timeout.
    let served = calls(&mut echo, 30).await;
    assert!(!served.iter().any(|s| s == "peer-1"), "{served:?}");
    // Three timeouts open peer-1's breaker: it is left alone after that.
    let peers = client.health().peers.unwrap();
    let peer1 = peers
        .peers
        .iter()
        .find(|p| p.peer.as_str() == fleet.servers[1].addr().to_string())
        .unwrap();
    assert!(matches!(peer1.state, PeerState::Open { .. }), "{:?}", peer1.state);
    assert!(
        peer1.last_error.as_deref().unwrap_or_default().contains("300ms"),
        "{:?}",
        peer1.last_error
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_serves_again_after_its_cooldown() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo").build().unwrap();
    let mut echo = EchoClient::new(client);
    let _ = calls(&mut echo, 6).await;
    // peer-0 goes down (connections refused and closed), then comes back.
    fleet.servers[0].refuse_connections().await;
    fleet.servers[0].close_connections().await;
    echo.unary(hello())
        .await
        .expect("a request canceled by a closed connection is retried");
    let served = calls(&mut echo, 30).await;
    assert!(!served.iter().any(|s| s == "peer-0"), "{served:?}");
    fleet.servers[0].resume_connections().unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let served = calls(&mut echo, 60).await;
    assert!(
        served.iter().any(|s| s == "peer-0"),
        "peer-0 never served again: {served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_registry_unreachable_keeps_the_last_known_set_serving_and_its_return_is_seen() {
    let mut fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo").build().unwrap();
    let mut echo = EchoClient::new(client.clone());
    let _ = calls(&mut echo, 6).await;
    fleet.registry.set_reachable(false);
    tokio::time::advance(Duration::from_secs(5)).await;
    let served = calls(&mut echo, 30).await;
    assert_eq!(served.len(), 30);
    assert_eq!(
        client.health().peers.unwrap().peers.len(),
        3,
        "the last known set is kept"
    );

    // Back: a deregistration made now is seen, and its instance is left alone.
    fleet.registry.set_reachable(true);
    fleet.registrations[2].take().unwrap().shutdown().await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    let _ = calls(&mut echo, 10).await;
    let before = fleet.servers[2].stats().requests();
    let _ = calls(&mut echo, 30).await;
    assert_eq!(
        fleet.servers[2].stats().requests(),
        before,
        "a deregistered instance was called"
    );
}

#[tokio::test(start_paused = true)]
async fn every_instance_failing_then_recovering_serves_again() {
    let fleet = Fleet::start("echo").await;
    let client = GrpcClient::builder(fleet.registry.clone(), "echo")
        .retries(0)
        .build()
        .unwrap();
    let mut echo = EchoClient::new(client.clone());
    let _ = calls(&mut echo, 6).await;
    for server in &fleet.servers {
        server.faults().set_status(Some(Code::Unavailable));
    }
    for _ in 0..20 {
        assert_eq!(echo.unary(hello()).await.unwrap_err().code(), Code::Unavailable);
    }
    for server in &fleet.servers {
        server.faults().set_status(None);
    }
    // Once the fleet answers again, calls succeed (the all-open policy resets
    // the breakers, or their cooldowns pass), on every instance.
    tokio::time::advance(Duration::from_secs(11)).await;
    let served = calls(&mut echo, 60).await;
    for server in &fleet.servers {
        assert!(
            served.iter().any(|s| s == server.name()),
            "{} never served: {served:?}",
            server.name()
        );
    }
}
