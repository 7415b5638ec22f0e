//! The servers of one scenario run, their registry, and the faults applied
//! to them.

use std::io;
use std::sync::Arc;

use palisade_core::BoxError;
use palisade_discovery::{Instance, Registration, Registry};
use palisade_testkit::EchoServer;
use parking_lot::Mutex;
use tonic::Code;

use crate::brownout::FailureRate;
use crate::outage::OutageRegistry;
use crate::scenario::{BROWNOUT_RATE, Capacity, SERVERS, SLOW_LATENCY};

/// The service name the servers register under.
pub const SERVICE: &str = "echo";

/// Three (later four) test-kit echo servers registered in one registry.
pub struct Fleet {
    servers: Mutex<Vec<Arc<EchoServer>>>,
    registrations: Mutex<Vec<Option<Registration>>>,
    registry: OutageRegistry,
    brownout: Mutex<Vec<FailureRate>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("servers", &self.addrs())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts [`SERVERS`] servers `echo-0`, `echo-1`, … and registers them;
    /// with `capacity`, each runs at most that many calls at once per
    /// connection, each taking its service time.
    pub async fn start(capacity: Option<Capacity>) -> Result<Self, BoxError> {
        let fleet = Self {
            servers: Mutex::new(Vec::new()),
            registrations: Mutex::new(Vec::new()),
            registry: OutageRegistry::new(),
            brownout: Mutex::new(Vec::new()),
        };
        for _ in 0..SERVERS {
            fleet.add_server(capacity).await?;
        }
        Ok(fleet)
    }

    async fn add_server(&self, capacity: Option<Capacity>) -> Result<usize, BoxError> {
        let index = self.servers.lock().len();
        let name = format!("echo-{index}");
        let server = match capacity {
            Some(capacity) => {
                let server = EchoServer::start_with_capacity(name, capacity.per_connection).await?;
                server.faults().set_latency(Some(capacity.service_time));
                server
            }
            None => EchoServer::start(name).await?,
        };
        let registration = self.registry.register(Instance::new(SERVICE, server.addr())).await?;
        self.servers.lock().push(Arc::new(server));
        self.registrations.lock().push(Some(registration));
        Ok(index)
    }

    /// The registry the Palisade client discovers the servers in.
    pub fn registry(&self) -> &OutageRegistry {
        &self.registry
    }

    /// Every server started so far, by index.
    pub fn servers(&self) -> Vec<Arc<EchoServer>> {
        self.servers.lock().clone()
    }

    /// Server `index`.
    pub fn server(&self, index: usize) -> Option<Arc<EchoServer>> {
        self.servers.lock().get(index).cloned()
    }

    /// The addresses (`127.0.0.1:PORT`) of the servers, by index.
    pub fn addrs(&self) -> Vec<String> {
        self.servers.lock().iter().map(|s| s.addr().to_string()).collect()
    }

    /// The index of the server listening on `addr` (a peer id is its address).
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.addrs().iter().position(|a| a == addr)
    }

    /// Answers every call of server `index` with `code` (`None`: normally).
    pub fn set_status(&self, index: usize, code: Option<Code>) {
        if let Some(server) = self.server(index) {
            server.faults().set_status(code);
        }
    }

    /// Makes server `index` slow ([`SLOW_LATENCY`]) or normal again.
    pub fn set_slow(&self, index: usize, slow: bool) {
        if let Some(server) = self.server(index) {
            server.faults().set_latency(slow.then_some(SLOW_LATENCY));
        }
    }

    /// Stops server `index` as a crashed process would: new connections are
    /// refused and open ones dropped.
    pub async fn stop(&self, index: usize) {
        if let Some(server) = self.server(index) {
            server.refuse_connections().await;
            server.close_connections().await;
        }
    }

    /// Brings server `index` back on the same address.
    pub fn resume(&self, index: usize) -> io::Result<()> {
        match self.server(index) {
            Some(server) => server.resume_connections(),
            None => Ok(()),
        }
    }

    /// Starts failing [`BROWNOUT_RATE`] of every server's calls with
    /// `UNAVAILABLE`, each server with its own seed derived from `seed`.
    pub fn start_brownout(&self, seed: u64) {
        let rates = self
            .servers()
            .into_iter()
            .enumerate()
            .map(|(i, server)| FailureRate::start(server, BROWNOUT_RATE, Code::Unavailable, seed ^ (i as u64 + 1)))
            .collect();
        *self.brownout.lock() = rates;
    }

    /// Ends the brownout.
    pub fn stop_brownout(&self) {
        self.brownout.lock().clear();
    }

    /// Replaces server `index` by a new server on a new address: the old
    /// one stops and deregisters, the new one starts and registers. Returns
    /// the new server's index.
    pub async fn replace(&self, index: usize) -> Result<usize, BoxError> {
        self.stop(index).await;
        // Dropping the handle deregisters the instance.
        let registration = self.registrations.lock().get_mut(index).and_then(Option::take);
        drop(registration);
        self.add_server(None).await
    }
}
