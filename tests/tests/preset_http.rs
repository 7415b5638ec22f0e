//! The http preset (`HttpClient`, issue 16) over three real test-kit hyper
//! servers behind the in-memory registry, and over one hyper client: what
//! the caller sees and what the servers saw.
//!
//! Time is paused (the servers run on the test's runtime), so cooldowns pass
//! with `tokio::time::advance`.
#![allow(clippy::disallowed_types, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use palisade::core::error::{BulkheadFull, CircuitOpen, find_error};
use palisade::discovery::{InMemoryRegistry, Instance, Registration, Registry};
use palisade::preset::HttpClient;
use palisade_circuit_breaker::CircuitState;
use palisade_discovery::PeerState;
use palisade_testkit::HttpServer;
use tower::{Service, ServiceExt};

struct Fleet {
    servers: Vec<HttpServer>,
    registrations: Vec<Option<Registration>>,
    registry: InMemoryRegistry,
}

impl Fleet {
    async fn start(service: &str) -> Fleet {
        let servers = HttpServer::start_many("peer", 3).await.unwrap();
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

    fn requests(&self) -> u64 {
        self.servers.iter().map(|s| s.stats().requests()).sum()
    }
}

fn put(body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::put("/orders/1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// One call: the status, the server that answered, the body.
async fn call(client: &mut HttpClient, request: http::Request<Full<Bytes>>) -> (StatusCode, String, Bytes) {
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    let server = response
        .headers()
        .get("x-testkit-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, server, response.into_body().collect().await.unwrap().to_bytes())
}

/// Makes `n` PUTs that must all succeed with their body echoed; returns who served them.
async fn calls(client: &mut HttpClient, n: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(n);
    for i in 0..n {
        let (status, server, body) = call(client, put("order")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"order"[..]), "call {i}");
        served.push(server);
    }
    served
}

#[tokio::test(start_paused = true)]
async fn a_failing_a_stopped_and_a_deregistered_instance_never_fail_a_call() {
    let mut fleet = Fleet::start("orders").await;
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders").build().unwrap();
    let served = calls(&mut client, 30).await;
    for server in &fleet.servers {
        assert!(
            served.iter().any(|s| s == server.name()),
            "{} never served",
            server.name()
        );
    }

    // peer-0 answers 503: each PUT is retried on another instance with its
    // body replayed, and the breaker takes peer-0 out after 3 failures.
    fleet.servers[0]
        .faults()
        .set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let served = calls(&mut client, 50).await;
    assert!(!served.iter().any(|s| s == "peer-0"));
    let at_peer0 = fleet.servers[0].stats().requests();
    let _ = calls(&mut client, 30).await;
    assert_eq!(fleet.servers[0].stats().requests(), at_peer0, "an open peer was called");
    let peers = client.health().peers.expect("a registry client reports its peers");
    let peer0 = peers
        .peers
        .iter()
        .find(|p| p.peer.as_str() == fleet.servers[0].addr().to_string())
        .expect("peer-0 in the report");
    assert!(matches!(peer0.state, PeerState::Open { .. }), "{:?}", peer0.state);

    // peer-1 refuses connections: every call still succeeds, on peer-2.
    fleet.servers[1].refuse_connections().await;
    fleet.servers[1].close_connections().await;
    let served = calls(&mut client, 30).await;
    assert!(served.iter().all(|s| s == "peer-2"), "{served:?}");

    // peer-0 and peer-1 recover, peer-2 is deregistered: after the cooldown
    // every call is served by the other two and none reaches peer-2.
    fleet.servers[0].faults().set_status(None);
    fleet.servers[1].resume_connections().unwrap();
    tokio::time::advance(Duration::from_secs(41)).await;
    fleet.registrations[2].take().unwrap().shutdown().await.unwrap();
    tokio::task::yield_now().await;
    let _ = calls(&mut client, 20).await;
    let at_peer2 = fleet.servers[2].stats().requests();
    let served = calls(&mut client, 40).await;
    assert_eq!(
        fleet.servers[2].stats().requests(),
        at_peer2,
        "a deregistered instance was called"
    );
    assert!(
        served.iter().any(|s| s == "peer-0") && served.iter().any(|s| s == "peer-1"),
        "{served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_registry_unreachable_keeps_the_last_known_set_serving() {
    let fleet = Fleet::start("orders").await;
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders").build().unwrap();
    let _ = calls(&mut client, 10).await;
    fleet.registry.set_reachable(false);
    tokio::time::advance(Duration::from_secs(5)).await;
    let served = calls(&mut client, 30).await;
    assert_eq!(served.len(), 30);
    let health = client.health().peers.unwrap();
    assert_eq!(health.peers.len(), 3, "the last known set is kept");
    fleet.registry.set_reachable(true);
    let _ = calls(&mut client, 10).await;
}

#[tokio::test(start_paused = true)]
async fn a_post_is_not_retried_once_a_server_answered_but_a_put_is_with_its_body() {
    let server = HttpServer::start("solo").await.unwrap();
    let registry = InMemoryRegistry::without_ttl();
    let _registration = registry.register(Instance::new("solo", server.addr())).await.unwrap();
    let mut client = HttpClient::builder(registry, "solo").retries(2).build().unwrap();

    server.faults().fail_next(2, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = call(&mut client, put("order #1")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"order #1"[..]));
    assert_eq!(server.stats().requests(), 3, "two 503s, then the replayed PUT");
    assert_eq!(server.stats().last_payload().as_deref(), Some(&b"order #1"[..]));

    server.faults().fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    let post = http::Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"new")))
        .unwrap();
    let (status, _, _) = call(&mut client, post).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a POST the server answered is not retried"
    );
    assert_eq!(server.stats().requests(), 4);
}

#[tokio::test(start_paused = true)]
async fn over_one_hyper_client_the_breaker_opens_and_refuses_without_a_request() {
    let server = HttpServer::start("solo").await.unwrap();
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut client = HttpClient::over_hyper(hyper).retries(0).build().unwrap();
    let get = || {
        http::Request::get(server.uri("/").unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, _, body) = call(&mut client, get()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"solo"[..]));

    server.faults().set_status(Some(StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..3 {
        assert_eq!(call(&mut client, get()).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(client.health().breaker.unwrap().state, CircuitState::Open);
    let reached = server.stats().requests();
    let error = client.ready().await.unwrap().call(get()).await.unwrap_err();
    assert!(find_error::<CircuitOpen>(error.as_ref()).is_some(), "{error}");
    assert_eq!(server.stats().requests(), reached, "an open breaker let a call through");

    server.faults().set_status(None);
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..3 {
        assert_eq!(call(&mut client, get()).await.0, StatusCode::OK);
    }
    assert_eq!(client.health().breaker.unwrap().state, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_rejects_beyond_its_limit_and_a_hanging_call_times_out() {
    let fleet = Fleet::start("orders").await;
    for server in &fleet.servers {
        server.faults().set_hang(true);
    }
    let client = HttpClient::builder(fleet.registry.clone(), "orders")
        .bulkhead(|b| b.max_concurrent(2))
        .attempt_timeout(Duration::from_millis(300))
        .retries(0)
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = client.clone();
        held.push(tokio::spawn(async move {
            client.ready().await?.call(put("held")).await.map(|_| ())
        }));
    }
    while client.health().bulkhead_in_flight < 2 {
        tokio::task::yield_now().await;
    }
    let error = client
        .clone()
        .ready()
        .await
        .unwrap()
        .call(put("third"))
        .await
        .unwrap_err();
    assert!(find_error::<BulkheadFull>(error.as_ref()).is_some(), "{error}");
    for task in held {
        let error = task.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("300ms"), "{error}");
    }
    assert_eq!(client.health().bulkhead_in_flight, 0, "every permit is back");
}

#[tokio::test(start_paused = true)]
async fn a_stream_failing_midway_is_counted_once_and_not_replayed() {
    let fleet = Fleet::start("orders").await;
    for server in &fleet.servers {
        server.faults().fail_stream_after(2);
    }
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders").build().unwrap();
    let request = http::Request::get("/stream?n=5").body(Full::new(Bytes::new())).unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut chunks = 0;
    let failed = loop {
        match body.frame().await {
            Some(Ok(frame)) if frame.is_data() => chunks += 1,
            Some(Ok(_)) => {}
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(failed, "the stream was cut");
    assert_eq!(chunks, 2);
    assert_eq!(fleet.requests(), 1, "a started stream is not replayed");
    let failures: u64 = client.health().peers.unwrap().peers.iter().map(|p| p.failures).sum();
    assert_eq!(failures, 1, "the cut stream is one failure, counted at its end");
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_reaches_the_server_as_the_time_left() {
    let fleet = Fleet::start("orders").await;
    let header = http::HeaderName::from_static("x-timeout-ms");
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders")
        .attempt_timeout_layer(|t| t.propagate_header(header.clone()))
        .build()
        .unwrap();
    let mut request = put("order");
    palisade::core::options::CallOptionsExt::call_options_mut(&mut request)
        .set_deadline(palisade::core::options::Deadline::after(Duration::from_millis(800)));
    let _ = call(&mut client, request).await;
    let seen: Vec<u64> = fleet
        .servers
        .iter()
        .filter_map(|s| {
            s.stats()
                .last_headers()
                .get("x-timeout-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok())
        })
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0] <= 800 && seen[0] > 700, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_serves_again_after_its_cooldown() {
    let fleet = Fleet::start("orders").await;
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders").build().unwrap();
    let _ = calls(&mut client, 6).await;
    fleet.servers[0].refuse_connections().await;
    fleet.servers[0].close_connections().await;
    let served = calls(&mut client, 30).await;
    assert!(!served.iter().any(|s| s == "peer-0"), "{served:?}");
    fleet.servers[0].resume_connections().unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    let served = calls(&mut client, 60).await;
    assert!(
        served.iter().any(|s| s == "peer-0"),
        "peer-0 never served again: {served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_instance_failing_then_recovering_serves_again() {
    let fleet = Fleet::start("orders").await;
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders")
        .retries(0)
        .build()
        .unwrap();
    let _ = calls(&mut client, 6).await;
    for server in &fleet.servers {
        server.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    for _ in 0..20 {
        match client.ready().await.unwrap().call(put("order")).await {
            Ok(response) => assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE),
            Err(error) => assert!(
                find_error::<CircuitOpen>(error.as_ref()).is_some() || error.to_string().contains("no available"),
                "{error}"
            ),
        }
    }
    for server in &fleet.servers {
        server.faults().set_status(None);
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    let served = calls(&mut client, 60).await;
    for server in &fleet.servers {
        assert!(
            served.iter().any(|s| s == server.name()),
            "{} never served: {served:?}",
            server.name()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_its_path_and_leaves_the_others_alone() {
    let fleet = Fleet::start("orders").await;
    let mut client = HttpClient::builder(fleet.registry.clone(), "orders")
        .fallback("/orders/1", |error| {
            http::Response::new(Bytes::from(format!("cached ({error})")))
        })
        .build()
        .unwrap();
    let _ = calls(&mut client, 6).await;
    for server in &fleet.servers {
        server.faults().set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    // The stack gives up (every instance answers 503): the path with a
    // fallback gets its answer, marked as such.
    let response = client.ready().await.unwrap().call(put("order")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .extensions()
            .get::<palisade::fallback::FromFallback>()
            .is_some()
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"cached"), "{body:?}");
    // Another path has no fallback: its caller sees the failure.
    let other = http::Request::put("/orders/2")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let response = client.ready().await.unwrap().call(other).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
