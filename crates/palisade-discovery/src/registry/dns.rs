//! The DNS registry backend (feature `dns`): periodic re-resolution of a
//! host name (A/AAAA) or an SRV name, through a [`Resolve`] implementation —
//! [`HickoryResolver`] (hickory-resolver, the system configuration) or a test
//! double.
//!
//! Each answer becomes a [`WatchEvent::Reset`], so a changed answer comes out
//! of [`RegistryDiscover`](crate::RegistryDiscover) as Insert/Remove. A
//! failed lookup — and an *empty* answer, which during an incident is more
//! often a broken zone than a fleet of zero — is reported as
//! [`WatchEvent::Down`]: the last known set keeps serving and the lookup is
//! retried with the backoff until it answers again. SRV answers use the
//! lowest priority present; the SRV weight becomes the instance weight.
//!
//! An SRV target that does not resolve (no A/AAAA record, a failed lookup)
//! is skipped with a warning and the others update normally: the answer
//! comes out as a `Reset` of the targets that resolved, followed by a
//! [`WatchEvent::Degraded`] naming the skipped ones, which the health report
//! shows as the registry's note until an answer resolves every target. One
//! bad target no longer freezes the whole set. Only when no target resolves
//! is the answer treated as a failure (`Down`, the last set kept).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use palisade_core::BoxError;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::ConfigError;
use tokio::sync::mpsc;

use crate::registry::{Instance, Registration, Registry, Unsupported, WatchEvent, WatchStream};

/// One SRV answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target host name.
    pub target: String,
    /// The port.
    pub port: u16,
    /// The relative weight within its priority.
    pub weight: u16,
    /// The priority (lowest first).
    pub priority: u16,
}

/// A DNS resolver, as the DNS registry needs it. Implemented by
/// [`HickoryResolver`]; tests implement it with a double.
pub trait Resolve: Send + Sync + 'static {
    /// The A and AAAA addresses of `host`.
    fn lookup_ip(&self, host: &str) -> BoxFuture<'static, Result<Vec<IpAddr>, BoxError>>;

    /// The SRV records of `name`.
    fn lookup_srv(&self, name: &str) -> BoxFuture<'static, Result<Vec<SrvTarget>, BoxError>>;
}

/// [`Resolve`] through hickory-resolver's Tokio resolver.
#[derive(Clone)]
pub struct HickoryResolver(hickory_resolver::TokioResolver);

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HickoryResolver")
    }
}

impl HickoryResolver {
    /// A resolver with the system configuration (`/etc/resolv.conf`).
    pub fn from_system_conf() -> Result<Self, BoxError> {
        Ok(Self(hickory_resolver::TokioResolver::builder_tokio()?.build()?))
    }

    /// Wraps a resolver you configured.
    pub fn new(resolver: hickory_resolver::TokioResolver) -> Self {
        Self(resolver)
    }
}

impl Resolve for HickoryResolver {
    fn lookup_ip(&self, host: &str) -> BoxFuture<'static, Result<Vec<IpAddr>, BoxError>> {
        let resolver = self.0.clone();
        let host = host.to_owned();
        async move {
            let answer = resolver.lookup_ip(host.as_str()).await?;
            Ok(answer.iter().collect())
        }
        .boxed()
    }

    fn lookup_srv(&self, name: &str) -> BoxFuture<'static, Result<Vec<SrvTarget>, BoxError>> {
        let resolver = self.0.clone();
        let name = name.to_owned();
        async move {
            let answer = resolver.srv_lookup(name.as_str()).await?;
            Ok(answer
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => Some(SrvTarget {
                        target: srv.target.to_utf8(),
                        port: srv.port,
                        weight: srv.weight,
                        priority: srv.priority,
                    }),
                    _ => None,
                })
                .collect())
        }
        .boxed()
    }
}

/// What a service name resolves through.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Host { host: String, port: u16 },
    Srv(String),
}

/// A read-only [`Registry`] over DNS; registering fails with [`Unsupported`].
pub struct DnsRegistry<R> {
    resolver: Arc<R>,
    targets: HashMap<String, Target>,
    interval: Duration,
    backoff: Option<Backoff>,
}

impl<R> std::fmt::Debug for DnsRegistry<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsRegistry")
            .field("targets", &self.targets)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl<R> Clone for DnsRegistry<R> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
            targets: self.targets.clone(),
            interval: self.interval,
            backoff: self.backoff,
        }
    }
}

impl<R: Resolve> DnsRegistry<R> {
    /// A registry resolving through `resolver` every 30 s, retrying failed
    /// lookups from 200 ms up to 10 s.
    pub fn new(resolver: R) -> Self {
        Self {
            resolver: Arc::new(resolver),
            targets: HashMap::new(),
            interval: Duration::from_secs(30),
            backoff: Backoff::exponential(Duration::from_millis(200))
                .max_delay(Duration::from_secs(10))
                .jitter(Jitter::Equal)
                .build()
                .ok(),
        }
    }

    /// Service `service` is every A/AAAA address of `host`, on `port`.
    pub fn with_host(mut self, service: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        self.targets.insert(
            service.into(),
            Target::Host {
                host: host.into(),
                port,
            },
        );
        self
    }

    /// Service `service` is the SRV record `name` (for example
    /// `_grpc._tcp.echo.example.`), each target resolved to its addresses.
    pub fn with_srv(mut self, service: impl Into<String>, name: impl Into<String>) -> Self {
        self.targets.insert(service.into(), Target::Srv(name.into()));
        self
    }

    /// How often names are resolved again (default 30 s, non-zero).
    pub fn interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new("dns registry", "interval", "must be non-zero"));
        }
        self.interval = interval;
        Ok(self)
    }

    /// The backoff between failed lookups.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

/// What one resolution found: the instances, and the SRV targets skipped
/// because they did not resolve (with why).
struct Answer {
    instances: Vec<Instance>,
    skipped: Vec<String>,
}

async fn resolve<R: Resolve>(resolver: &R, service: &str, target: &Target) -> Result<Answer, BoxError> {
    let mut instances = Vec::new();
    let mut skipped = Vec::new();
    match target {
        Target::Host { host, port } => {
            for ip in resolver.lookup_ip(host).await? {
                instances.push(Instance::new(service, SocketAddr::new(ip, *port)));
            }
        }
        Target::Srv(name) => {
            let records = resolver.lookup_srv(name).await?;
            if let Some(priority) = records.iter().map(|r| r.priority).min() {
                for record in records.iter().filter(|r| r.priority == priority) {
                    match resolver.lookup_ip(&record.target).await {
                        Ok(ips) if !ips.is_empty() => {
                            for ip in ips {
                                instances.push(
                                    Instance::new(service, SocketAddr::new(ip, record.port))
                                        .with_weight(u32::from(record.weight.max(1))),
                                );
                            }
                        }
                        Ok(_) => skipped.push(format!("{}:{} (no address)", record.target, record.port)),
                        Err(error) => skipped.push(format!("{}:{} ({error})", record.target, record.port)),
                    }
                }
            }
        }
    }
    instances.sort_by(|a, b| a.addr().cmp(b.addr()));
    instances.dedup_by(|a, b| a.addr() == b.addr());
    Ok(Answer { instances, skipped })
}

async fn watch_loop<R: Resolve>(
    resolver: Arc<R>,
    service: String,
    target: Target,
    interval: Duration,
    backoff: Option<Backoff>,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut attempt = 0u32;
    let mut previous = None;
    let mut reported_down = false;
    let mut skipped_before: Vec<String> = Vec::new();
    loop {
        let wait = match resolve(&*resolver, &service, &target).await {
            Ok(answer) if !answer.instances.is_empty() => {
                reported_down = false;
                attempt = 0;
                previous = None;
                if tx.send(WatchEvent::Reset(answer.instances)).await.is_err() {
                    return;
                }
                if !answer.skipped.is_empty() {
                    let reason = format!("SRV targets skipped: {}", answer.skipped.join(", "));
                    if answer.skipped != skipped_before {
                        tracing::warn!(target: "palisade", layer = "discovery", %service, %reason, "DNS SRV targets did not resolve; serving the others");
                    }
                    if tx.send(WatchEvent::Degraded { reason }).await.is_err() {
                        return;
                    }
                }
                skipped_before = answer.skipped;
                interval
            }
            outcome => {
                let reason = match outcome {
                    Ok(answer) if answer.skipped.is_empty() => "empty answer".to_owned(),
                    Ok(answer) => format!("no SRV target resolved: {}", answer.skipped.join(", ")),
                    Err(e) => e.to_string(),
                };
                if !reported_down {
                    reported_down = true;
                    tracing::warn!(target: "palisade", layer = "discovery", %service, %reason, "DNS lookup failed; serving the last known set");
                    if tx.send(WatchEvent::Down { reason }).await.is_err() {
                        return;
                    }
                }
                let delay = backoff.map_or(Duration::from_secs(1), |b| b.delay(attempt, previous));
                previous = Some(delay);
                attempt = attempt.saturating_add(1);
                delay.min(interval)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

impl<R: Resolve> Registry for DnsRegistry<R> {
    fn register(&self, _: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        futures::future::ready(Err(Unsupported("registering into DNS").into())).boxed()
    }

    /// Resolves now and then every interval, on a spawned task (needs a Tokio
    /// runtime). A service without a configured name reports `Down`.
    fn watch(&self, service: &str) -> WatchStream {
        let (tx, rx) = mpsc::channel(8);
        match (self.targets.get(service), tokio::runtime::Handle::try_current()) {
            (Some(target), Ok(runtime)) => {
                runtime.spawn(watch_loop(
                    self.resolver.clone(),
                    service.to_owned(),
                    target.clone(),
                    self.interval,
                    self.backoff,
                    tx,
                ));
            }
            (None, _) => {
                let _ = tx.try_send(WatchEvent::Down {
                    reason: format!("no DNS name configured for service {service:?}"),
                });
            }
            (_, Err(_)) => {
                let _ = tx.try_send(WatchEvent::Down {
                    reason: "no Tokio runtime to resolve from".into(),
                });
            }
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
    }
}
