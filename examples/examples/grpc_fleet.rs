//! The preset client over a registry of three instances, while one fails,
//! one is stopped and one is deregistered: the calls keep succeeding.
//!
//! Three test-kit echo servers on loopback register in an in-memory registry
//! (the same `Registry` trait as etcd, DNS or a static list). One
//! `GrpcClient` balances over them with a breaker per instance and a retry to
//! another instance. Each phase makes 40 calls and prints who served them,
//! how many failed, and the client's health view.
//!
//! Run: `cargo run -p palisade-examples --example grpc_fleet`

use std::collections::BTreeMap;
use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{InMemoryRegistry, Instance, Registry};
use palisade::preset::GrpcClient;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let servers = EchoServer::start_many("echo", 3).await?;
    let registry = InMemoryRegistry::without_ttl();
    let mut registrations = Vec::new();
    for server in &servers {
        registrations.push(registry.register(Instance::new("echo", server.addr())).await?);
    }

    // The seed system's defaults, but a 1 s cooldown so that the example's
    // recovery phase does not wait 10 s.
    let client = GrpcClient::builder(registry.clone(), "echo")
        .breaker(|b| b.cooldown(Duration::from_secs(1)))
        .build()?;
    let mut echo = EchoClient::new(client.clone());

    let mut failed = phase("all three healthy", &mut echo, &client).await;

    servers[0].faults().set_status(Some(Code::Unavailable));
    failed += phase("echo-0 answers UNAVAILABLE", &mut echo, &client).await;

    let stopped = &servers[1];
    stopped.refuse_connections().await;
    stopped.close_connections().await;
    // A request hyper had not written when the server closed its connection
    // is canceled, and the retry sends it to another instance.
    failed += phase("echo-1 stopped (connections refused)", &mut echo, &client).await;

    servers[0].faults().set_status(None);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    failed += phase(
        "echo-0 recovered (its breaker probes after the cooldown)",
        &mut echo,
        &client,
    )
    .await;

    let deregistered = registrations.pop().ok_or("three registrations")?;
    deregistered.shutdown().await?;
    failed += phase("echo-2 deregistered", &mut echo, &client).await;
    if failed > 0 {
        return Err(format!("{failed} calls failed").into());
    }
    Ok(())
}

/// Makes 40 calls, prints who served them, the failures and the health view;
/// returns how many failed.
async fn phase(title: &str, echo: &mut EchoClient<GrpcClient>, client: &GrpcClient) -> usize {
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..40 {
        let request = EchoRequest {
            message: "hello".into(),
            payload: Default::default(),
        };
        match echo.unary(request).await {
            Ok(reply) => *served.entry(reply.into_inner().server).or_default() += 1,
            Err(status) => failures.push(format!("{:?}: {}", status.code(), status.message())),
        }
    }
    println!("== {title}");
    println!("   served: {served:?}; failed: {}", failures.len());
    for failure in &failures {
        println!("   failure: {failure}");
    }
    // Every instance with its breaker state, calls and latest error.
    if let Some(peers) = client.health().peers {
        println!("   {peers}");
    }
    failures.len()
}
