//! The preset client with its settings read from a file:
//! `examples/config/preset.toml` holds every section (breaker, timeouts,
//! retry, bulkhead, balancer), durations in human form.
//!
//! Three test-kit echo servers on loopback register in an in-memory
//! registry; the preset is built from the file and makes a few calls. Then a
//! file with a typo shows the error: it names the field's path.
//!
//! Run: `cargo run -p palisade-examples --example config_file`

use palisade::BoxError;
use palisade::discovery::{InMemoryRegistry, Instance, Registry};
use palisade::preset::{GrpcClient, PresetConfig};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/preset.toml");

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let text = std::fs::read_to_string(FILE)?;
    let config = PresetConfig::from_deserializer(toml::Deserializer::parse(&text)?)?;
    println!(
        "read {FILE}: {} retries, bulkhead {:?}",
        config.retries.unwrap_or(1),
        config.bulkhead.max_concurrent
    );

    let servers = EchoServer::start_many("echo", 3).await?;
    let registry = InMemoryRegistry::without_ttl();
    let mut registrations = Vec::new();
    for server in &servers {
        registrations.push(registry.register(Instance::new("echo", server.addr())).await?);
    }
    let client = GrpcClient::builder(registry, "echo").config(&config).build()?;
    let mut echo = EchoClient::new(client.clone());
    for _ in 0..6 {
        let request = EchoRequest {
            message: "hi".into(),
            payload: Default::default(),
        };
        println!("served by {}", echo.unary(request).await?.into_inner().server);
    }
    println!("bulkhead limit in the health view: {}", client.health().bulkhead_limit);

    let typo = "[breaker]\ncooldwn = \"5s\"\n";
    match PresetConfig::from_deserializer(toml::Deserializer::parse(typo)?) {
        Ok(_) => return Err("a typo was accepted".into()),
        Err(error) => println!("a file with a typo: {error}"),
    }
    Ok(())
}
