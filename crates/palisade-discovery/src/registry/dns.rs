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

use futures::FutureExt;
use futures::future::BoxFuture;
use palisade_core::BoxError;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::ConfigError;
use tokio::sync::mpsc;

use crate::registry::watch_task::{only, spawn_watch};
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
            let answer = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| hickory_error(&host, e))?;
            Ok(answer.iter().collect())
        }
        .boxed()
    }

    fn lookup_srv(&self, name: &str) -> BoxFuture<'static, Result<Vec<SrvTarget>, BoxError>> {
        let resolver = self.0.clone();
        let name = name.to_owned();
        async move {
            let answer = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| hickory_error(&name, e))?;
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

/// A DNS answer that a name does not exist (NXDOMAIN). Unlike a temporary
/// failure (a timeout, SERVFAIL), which reports the registry degraded, it
/// reports the registry down (the service's name is wrong, or was removed
/// from the zone); the last known set keeps serving either way. A
/// [`Resolve`] implementation returns it (boxed) for such an answer;
/// [`HickoryResolver`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSuchName {
    name: String,
}

impl NoSuchName {
    /// `name` does not exist.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The name that does not exist.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for NoSuchName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} does not exist (NXDOMAIN)", self.name)
    }
}

impl std::error::Error for NoSuchName {}

/// Boxes a hickory error, as [`NoSuchName`] when it says NXDOMAIN.
fn hickory_error(name: &str, error: hickory_resolver::net::NetError) -> BoxError {
    if error.is_nx_domain() {
        NoSuchName::new(name).into()
    } else {
        error.into()
    }
}

/// What one resolution found: the instances, and the SRV targets skipped
/// because they did not resolve (with why).
#[derive(Debug, PartialEq, Eq)]
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

/// What the watch does with one resolution's outcome: a pure function of
/// it, tested on its own.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// Serve these instances; `skipped` names the SRV targets left out.
    Serve {
        instances: Vec<Instance>,
        skipped: Vec<String>,
    },
    /// A temporary failure (a timeout, SERVFAIL, the resolver unreachable):
    /// the last known set keeps serving, the registry is reported degraded
    /// with the error, and the lookup is retried with the backoff.
    Transient(String),
    /// The service's name does not exist (NXDOMAIN), or the answer has no
    /// usable address: the last known set keeps serving (during an
    /// incident a broken zone is likelier than a fleet of zero) and the
    /// registry is reported down with why.
    Down(String),
}

fn judge(outcome: Result<Answer, BoxError>) -> Judged {
    match outcome {
        Ok(answer) if !answer.instances.is_empty() => Judged::Serve {
            instances: answer.instances,
            skipped: answer.skipped,
        },
        Ok(answer) if answer.skipped.is_empty() => Judged::Down("empty answer".to_owned()),
        Ok(answer) => Judged::Down(format!("no SRV target resolved: {}", answer.skipped.join(", "))),
        Err(error) if is_no_such_name(&*error) => Judged::Down(crate::future::error_chain(&*error)),
        Err(error) => Judged::Transient(format!(
            "DNS lookup failed, serving the last known set: {}",
            crate::future::error_chain(&*error)
        )),
    }
}

/// Whether `error` (or one of its causes) is a [`NoSuchName`].
fn is_no_such_name(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<NoSuchName>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The delay before the next lookup after a failure.
fn retry_delay(
    backoff: Option<&Backoff>,
    attempt: &mut u32,
    previous: &mut Option<Duration>,
    interval: Duration,
) -> Duration {
    let delay = backoff.map_or(Duration::from_secs(1), |b| b.delay(*attempt, *previous));
    *previous = Some(delay);
    *attempt = attempt.saturating_add(1);
    delay.min(interval)
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
    let mut reported: Option<String> = None;
    let mut skipped_before: Vec<String> = Vec::new();
    loop {
        let wait = match judge(resolve(&*resolver, &service, &target).await) {
            Judged::Serve { instances, skipped } => {
                reported = None;
                attempt = 0;
                previous = None;
                if tx.send(WatchEvent::Reset(instances)).await.is_err() {
                    return;
                }
                if !skipped.is_empty() {
                    let reason = format!("SRV targets skipped: {}", skipped.join(", "));
                    if skipped != skipped_before {
                        tracing::warn!(target: "palisade", layer = "discovery", %service, %reason, "DNS SRV targets did not resolve; serving the others");
                    }
                    if tx.send(WatchEvent::Degraded { reason }).await.is_err() {
                        return;
                    }
                }
                skipped_before = skipped;
                interval
            }
            Judged::Transient(reason) => {
                if reported.as_ref() != Some(&reason) {
                    tracing::warn!(target: "palisade", layer = "discovery", %service, %reason, "DNS lookup failed (temporary); serving the last known set");
                    if tx.send(WatchEvent::Degraded { reason: reason.clone() }).await.is_err() {
                        return;
                    }
                    reported = Some(reason);
                }
                retry_delay(backoff.as_ref(), &mut attempt, &mut previous, interval)
            }
            Judged::Down(reason) => {
                if reported.as_ref() != Some(&reason) {
                    tracing::warn!(target: "palisade", layer = "discovery", %service, %reason, "DNS has no usable answer; serving the last known set");
                    if tx.send(WatchEvent::Down { reason: reason.clone() }).await.is_err() {
                        return;
                    }
                    // The health report's note says why.
                    if tx.send(WatchEvent::Degraded { reason: reason.clone() }).await.is_err() {
                        return;
                    }
                    reported = Some(reason);
                }
                retry_delay(backoff.as_ref(), &mut attempt, &mut previous, interval)
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
        let Some(target) = self.targets.get(service) else {
            return only(WatchEvent::Down {
                reason: format!("no DNS name configured for service {service:?}"),
            });
        };
        let (resolver, service, target) = (self.resolver.clone(), service.to_owned(), target.clone());
        let (interval, backoff) = (self.interval, self.backoff);
        spawn_watch(8, "resolve from", move |tx| {
            watch_loop(resolver, service, target, interval, backoff, tx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(addrs: &[&str], skipped: &[&str]) -> Answer {
        Answer {
            instances: addrs.iter().map(|a| Instance::new("echo", *a)).collect(),
            skipped: skipped.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn each_kind_of_lookup_outcome_is_judged_apart() {
        // Served, with or without skipped SRV targets.
        assert_eq!(
            judge(Ok(answer(&["10.0.0.1:80"], &["bad.internal:80 (no address)"]))),
            Judged::Serve {
                instances: vec![Instance::new("echo", "10.0.0.1:80")],
                skipped: vec!["bad.internal:80 (no address)".to_owned()],
            }
        );
        // A temporary failure: degraded, with the error and its causes.
        let servfail: BoxError = "SERVFAIL".into();
        assert_eq!(
            judge(Err(servfail)),
            Judged::Transient("DNS lookup failed, serving the last known set: SERVFAIL".to_owned())
        );
        // The name does not exist: down, and said so.
        assert_eq!(
            judge(Err(NoSuchName::new("echo.internal").into())),
            Judged::Down("echo.internal does not exist (NXDOMAIN)".to_owned())
        );
        // No usable answer: down.
        assert_eq!(judge(Ok(answer(&[], &[]))), Judged::Down("empty answer".to_owned()));
        assert_eq!(
            judge(Ok(answer(&[], &["a.internal:80 (no address)"]))),
            Judged::Down("no SRV target resolved: a.internal:80 (no address)".to_owned())
        );
    }
}
