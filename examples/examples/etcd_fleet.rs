//! The preset client over a real etcd registry: three loopback servers
//! register, one deregisters, then etcd itself goes away and the last known
//! set keeps serving.
//!
//! Starts an `etcd` process (Debian's `etcd-server`; `scripts/test` installs
//! it) on ephemeral loopback ports with a temporary data directory, and stops
//! it again before it exits.
//!
//! Run: `cargo run -p palisade-examples --features etcd --example etcd_fleet`

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade::BoxError;
use palisade::discovery::{EtcdRegistry, Instance, Registry};
use palisade::preset::GrpcClient;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;

/// An etcd server on loopback, killed (and its data removed) when dropped.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    endpoint: String,
}

impl Etcd {
    fn start() -> Result<Etcd, BoxError> {
        let port = || -> std::io::Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (client, peer) = (
            format!("http://127.0.0.1:{}", port()?),
            format!("http://127.0.0.1:{}", port()?),
        );
        let dir = std::env::temp_dir().join(format!("palisade-etcd-example-{}", std::process::id()));
        let child = Command::new("etcd")
            .args(["--name", "example", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("example={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Etcd {
            child,
            dir,
            endpoint: client,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("etcd_fleet needs the etcd binary (Debian: apt-get install etcd-server; scripts/test installs it)");
        std::process::exit(2);
    }
    let mut etcd = Some(Etcd::start()?);
    let endpoint = etcd.as_ref().map(|e| e.endpoint.clone()).unwrap_or_default();
    let registry = EtcdRegistry::builder([endpoint])
        .lease_ttl(Duration::from_secs(5))
        .build()?;

    let servers = EchoServer::start_many("echo", 3).await?;
    let mut registrations = Vec::new();
    for server in &servers {
        // etcd takes a moment to start: the first registration waits for it.
        let registration = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match registry.register(Instance::new("echo", server.addr())).await {
                    Ok(registration) => break registration,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await?;
        registrations.push(registration);
    }

    let client = GrpcClient::builder(registry.clone(), "echo").build()?;
    let mut echo = EchoClient::new(client.clone());
    phase("three instances registered in etcd", &mut echo, &client).await?;

    registrations.pop().ok_or("three registrations")?.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phase("echo-2 deregistered", &mut echo, &client).await?;

    drop(etcd.take());
    tokio::time::sleep(Duration::from_millis(500)).await;
    phase("etcd stopped: the last known set keeps serving", &mut echo, &client).await?;
    Ok(())
}

/// Makes 30 calls (every one must succeed) and prints who served them and the health view.
async fn phase(title: &str, echo: &mut EchoClient<GrpcClient>, client: &GrpcClient) -> Result<(), BoxError> {
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let request = EchoRequest {
            message: "hello".into(),
            payload: Default::default(),
        };
        *served
            .entry(echo.unary(request).await?.into_inner().server)
            .or_default() += 1;
    }
    println!("== {title}\n   served: {served:?}");
    if let Some(peers) = client.health().peers {
        println!("   {peers}");
    }
    Ok(())
}
