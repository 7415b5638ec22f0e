//! Many services over one registry: [`GrpcClients`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use palisade_core::error::ConfigError;
use palisade_discovery::Registry;

use super::grpc::{GrpcClient, GrpcClientBuilder, Target};

type Configure = Arc<dyn Fn(GrpcClientBuilder) -> GrpcClientBuilder + Send + Sync>;

/// One preset client per service name over one registry, the way the seed
/// system's application object calls any service by name: built on first
/// use (once), then cached; cloning the set is cheap and clones share the
/// cache.
///
/// ```
/// use palisade::discovery::InMemoryRegistry;
/// use palisade::preset::GrpcClients;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade::BoxError> {
/// let clients = GrpcClients::builder(InMemoryRegistry::new())
///     .all(|b| b.attempt_timeout(Duration::from_secs(2)))
///     .service("payments", |b| b.retries(0))
///     .build()?;
/// let payments = clients.get("payments")?; // 2 s attempts, no retry
/// let search = clients.get("search")?; // 2 s attempts, 1 retry
/// # drop((payments, search)); Ok(()) }
/// ```
///
/// [`get`](Self::get) takes a lock and clones the client out of the cache:
/// cheap, but on a hot path keep the returned client (it is cheap to clone
/// and shares its state with the cached one).
#[derive(Clone)]
pub struct GrpcClients {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Arc<dyn Registry>,
    all: Vec<Configure>,
    services: HashMap<String, Configure>,
    built: Mutex<HashMap<String, GrpcClient>>,
}

impl fmt::Debug for GrpcClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("GrpcClients")
            .field("overridden", &self.shared.services.keys().collect::<Vec<_>>())
            .field("built", &built)
            .finish_non_exhaustive()
    }
}

impl GrpcClients {
    /// A builder for the clients of every service in `registry`.
    pub fn builder<R: Registry>(registry: R) -> GrpcClientsBuilder {
        GrpcClientsBuilder {
            registry: Arc::new(registry),
            all: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The client of `service`, built with the settings of
    /// [`all`](GrpcClientsBuilder::all) and then the service's own, on the
    /// first call for that name. A [`ConfigError`] from those settings is
    /// returned (and nothing cached) so a later call reports it again.
    pub fn get(&self, service: &str) -> Result<GrpcClient, ConfigError> {
        if let Some(client) = self.lock().get(service) {
            return Ok(client.clone());
        }
        // Built outside the lock: building starts the registry's watch.
        let mut builder = GrpcClientBuilder::new(Target::Registry {
            registry: self.shared.registry.clone(),
            service: service.to_owned(),
        });
        for configure in &self.shared.all {
            builder = configure(builder);
        }
        if let Some(configure) = self.shared.services.get(service) {
            builder = configure(builder);
        }
        let client = builder.build()?;
        // Another caller may have built it meanwhile: the first one stays.
        Ok(self.lock().entry(service.to_owned()).or_insert(client).clone())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, GrpcClient>> {
        self.shared.built.lock()
    }
}

/// Builds a [`GrpcClients`].
pub struct GrpcClientsBuilder {
    registry: Arc<dyn Registry>,
    all: Vec<Configure>,
    services: Vec<(String, Configure)>,
}

impl fmt::Debug for GrpcClientsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClientsBuilder")
            .field("services", &self.services.iter().map(|(s, _)| s).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GrpcClientsBuilder {
    /// Settings for every service's client (applied in the order given,
    /// before a service's own).
    pub fn all<F>(mut self, configure: F) -> Self
    where
        F: Fn(GrpcClientBuilder) -> GrpcClientBuilder + Send + Sync + 'static,
    {
        self.all.push(Arc::new(configure));
        self
    }

    /// Settings for the client of `service` only, applied after
    /// [`all`](Self::all)'s. Naming a service twice is a [`ConfigError`] at
    /// [`build`](Self::build).
    pub fn service<F>(mut self, service: impl Into<String>, configure: F) -> Self
    where
        F: Fn(GrpcClientBuilder) -> GrpcClientBuilder + Send + Sync + 'static,
    {
        self.services.push((service.into(), Arc::new(configure)));
        self
    }

    /// The set; no client is built until [`GrpcClients::get`].
    pub fn build(self) -> Result<GrpcClients, ConfigError> {
        let mut services = HashMap::with_capacity(self.services.len());
        for (service, configure) in self.services {
            match services.entry(service) {
                Entry::Occupied(e) => {
                    return Err(ConfigError::new(
                        "preset",
                        "service",
                        format!("{:?} is configured twice; merge its settings into one call", e.key()),
                    ));
                }
                Entry::Vacant(e) => {
                    e.insert(configure);
                }
            }
        }
        Ok(GrpcClients {
            shared: Arc::new(Shared {
                registry: self.registry,
                all: self.all,
                services,
                built: Mutex::new(HashMap::new()),
            }),
        })
    }
}
