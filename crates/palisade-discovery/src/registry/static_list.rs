//! A static list of instances.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use palisade_core::BoxError;

use crate::registry::{Instance, Registration, Registry, Unsupported, WatchEvent, WatchStream};

/// A fixed set of instances per service, read-only: a watch yields the list
/// once and never changes; registering fails with [`Unsupported`].
#[derive(Clone, Debug, Default)]
pub struct StaticRegistry {
    services: HashMap<String, Vec<Instance>>,
}

impl StaticRegistry {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `instance` (under its service name). Invalid instances are
    /// skipped with a warning.
    pub fn with(mut self, instance: Instance) -> Self {
        match instance.validate() {
            Ok(()) => self
                .services
                .entry(instance.service().to_owned())
                .or_default()
                .push(instance),
            Err(error) => tracing::warn!(target: "palisade", layer = "discovery", %error, "static instance skipped"),
        }
        self
    }

    /// Adds every address in `addrs` as an instance of `service`.
    pub fn with_addrs<A: std::fmt::Display>(mut self, service: &str, addrs: impl IntoIterator<Item = A>) -> Self {
        for addr in addrs {
            self = self.with(Instance::new(service, addr));
        }
        self
    }
}

impl Registry for StaticRegistry {
    fn register(&self, _: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        futures::future::ready(Err(Unsupported("registering into a static list").into())).boxed()
    }

    fn watch(&self, service: &str) -> WatchStream {
        let list = self.services.get(service).cloned().unwrap_or_default();
        futures::stream::once(futures::future::ready(WatchEvent::Reset(list)))
            .chain(futures::stream::pending())
            .boxed()
    }
}
