//! The etcd registry backend (feature `etcd`).
//!
//! - **Provider side.** An instance is stored at `{prefix}{service}/{addr}`,
//!   its value the text of [`Instance::encode`], bound to a lease of
//!   `lease_ttl`. The [`Registration`] handle keeps the lease alive on a
//!   spawned task (a keep-alive every third of the TTL); when etcd is
//!   unreachable it retries with the configured backoff, and if the lease
//!   expired meanwhile it grants a new one and writes the key again.
//!   [`Registration::shutdown`] revokes the lease and waits for etcd to
//!   confirm; a revocation that fails (a member just died and the request
//!   went to it, an election in progress) is retried with the backoff, on a
//!   fresh connection to the configured endpoints after the first failure,
//!   until it succeeds or `shutdown_timeout` (default 5 s) has passed (each
//!   attempt bounded by a quarter of it, so a hung member leaves time for
//!   the others); it
//!   then fails with [`DeregisterFailed`], which names the key, the lease,
//!   the attempts and the last error, and says that the key expires with its
//!   lease. A lease already gone counts as revoked. Dropping the handle does
//!   the same on a spawned task (best effort, a warning if it finally fails);
//!   [`Registration::abandon`] stops the keep-alives and lets etcd expire the
//!   key after the TTL.
//! - **Consumer side.** A watch reads the prefix (a [`WatchEvent::Reset`]),
//!   then watches it from the read revision + 1, so no change between the read
//!   and the watch is lost. When the connection or the watch fails (etcd
//!   down, the revision compacted) it reports [`WatchEvent::Down`] once,
//!   reconnects with the backoff, and re-reads the prefix: the
//!   [`RegistryDiscover`](crate::RegistryDiscover) diffs that snapshot with
//!   what it knows, so nothing is lost or duplicated.
//! - **Validation.** A value longer than `max_value_len`, not UTF-8, not
//!   decodable, or whose address disagrees with its key is skipped with a
//!   warning; nothing from etcd can make the client panic. Event kinds are
//!   told apart by the key's version (0 for a deletion), not by the raw type
//!   field.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, PutOptions, WatchOptions};
use futures::FutureExt;
use futures::future::BoxFuture;
use palisade_core::BoxError;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::ConfigError;
use palisade_core::peer::PeerId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::registry::watch_task::spawn_watch;
use crate::registry::{Instance, KeepAlive, Registration, Registry, WatchEvent, WatchStream};

/// Settings of an [`EtcdRegistry`].
#[derive(Clone, Debug)]
struct Config {
    endpoints: Arc<[String]>,
    prefix: Arc<str>,
    lease_ttl: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// `None` only if the default failed to build (it cannot): then 500 ms.
    backoff: Option<Backoff>,
    max_value_len: usize,
    shutdown_timeout: Duration,
}

/// A [`Registry`] in etcd (v3 API), through `etcd-client`.
///
/// Registering and watching need a Tokio runtime (they spawn their
/// keep-alive and watch tasks). Clones share the settings; each registration
/// and each watch has its own connection.
#[derive(Clone, Debug)]
pub struct EtcdRegistry {
    config: Arc<Config>,
}

/// Builds an [`EtcdRegistry`]; [`build`](Self::build) validates it.
#[derive(Clone, Debug)]
pub struct EtcdRegistryBuilder {
    config: Config,
}

impl EtcdRegistry {
    /// A builder for a registry at `endpoints` (`http://host:port`), with
    /// prefix `/palisade/services/`, a 10 s lease, reconnects backing off
    /// exponentially from 100 ms to 5 s with equal jitter.
    pub fn builder<E: AsRef<str>>(endpoints: impl IntoIterator<Item = E>) -> EtcdRegistryBuilder {
        let backoff = Backoff::exponential(Duration::from_millis(100))
            .max_delay(Duration::from_secs(5))
            .jitter(Jitter::Equal)
            .build()
            .ok();
        EtcdRegistryBuilder {
            config: Config {
                endpoints: endpoints.into_iter().map(|e| e.as_ref().to_owned()).collect(),
                prefix: Arc::from("/palisade/services/"),
                lease_ttl: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                backoff,
                max_value_len: 16 * 1024,
                shutdown_timeout: Duration::from_secs(5),
            },
        }
    }

    /// The key of `instance`.
    pub fn key_of(&self, instance: &Instance) -> String {
        format!("{}{}/{}", self.config.prefix, instance.service(), instance.addr())
    }
}

impl EtcdRegistryBuilder {
    /// The key prefix (default `/palisade/services/`); must end with `/`.
    pub fn prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.config.prefix = Arc::from(prefix.as_ref());
        self
    }

    /// The lease TTL of registrations (default 10 s, at least 1 s; etcd
    /// counts whole seconds and may round it up).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// How long connecting may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The timeout of each unary request to etcd (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// The backoff between reconnects.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = Some(backoff);
        self
    }

    /// How long [`Registration::shutdown`] keeps trying to revoke the lease
    /// (default 5 s, non-zero) before it reports [`DeregisterFailed`]: the
    /// bound of the whole shutdown. Each attempt (and each reconnection
    /// between attempts) has its own bound, a quarter of it or the
    /// [`request_timeout`](Self::request_timeout) if shorter, so that a
    /// member that hangs leaves time to try the others.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The longest value accepted from etcd (default 16 KiB); longer ones are skipped.
    pub fn max_value_len(mut self, len: usize) -> Self {
        self.config.max_value_len = len;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<EtcdRegistry, ConfigError> {
        let c = &self.config;
        if c.endpoints.is_empty() {
            return Err(ConfigError::new(
                "etcd registry",
                "endpoints",
                "must name at least one endpoint",
            ));
        }
        if !c.prefix.ends_with('/') {
            return Err(ConfigError::new(
                "etcd registry",
                "prefix",
                format!("must end with '/', got {:?}", c.prefix),
            ));
        }
        if c.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "etcd registry",
                "lease_ttl",
                format!("must be at least 1s, got {:?}", c.lease_ttl),
            ));
        }
        for (field, d) in [
            ("connect_timeout", c.connect_timeout),
            ("request_timeout", c.request_timeout),
            ("shutdown_timeout", c.shutdown_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new("etcd registry", field, "must be non-zero"));
            }
        }
        Ok(EtcdRegistry {
            config: Arc::new(self.config),
        })
    }
}

impl Config {
    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        Client::connect(self.endpoints.as_ref(), Some(options)).await
    }

    fn delay(&self, attempt: u32, previous: Option<Duration>) -> Duration {
        self.backoff
            .map_or(Duration::from_millis(500), |b| b.delay(attempt, previous))
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    /// The instance stored at `key` with `value`, if it is valid.
    fn parse(&self, service_prefix: &str, kv: &KeyValue) -> Option<Instance> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(addr) = key.strip_prefix(service_prefix) else {
            tracing::warn!(target: "palisade", layer = "discovery", %key, "etcd key outside the watched prefix skipped");
            return None;
        };
        let value = kv.value();
        if value.len() > self.max_value_len {
            tracing::warn!(target: "palisade", layer = "discovery", %key, len = value.len(), max = self.max_value_len, "oversized etcd value skipped");
            return None;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            tracing::warn!(target: "palisade", layer = "discovery", %key, "non-UTF-8 etcd value skipped");
            return None;
        };
        match Instance::decode(text) {
            Ok(instance) if instance.addr() == addr => Some(instance),
            Ok(instance) => {
                tracing::warn!(target: "palisade", layer = "discovery", %key, addr = instance.addr(), "etcd value whose address disagrees with its key skipped");
                None
            }
            Err(error) => {
                tracing::warn!(target: "palisade", layer = "discovery", %key, %error, "malformed etcd value skipped");
                None
            }
        }
    }
}

/// A provider's shutdown could not revoke its etcd lease within
/// `shutdown_timeout`: the key stays until the lease expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeregisterFailed {
    key: String,
    lease: i64,
    attempts: u32,
    elapsed: Duration,
    lease_ttl: Duration,
    last_error: String,
}

impl DeregisterFailed {
    /// The key that stays registered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many revocations were tried.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The last attempt's error, with its cause chain.
    pub fn last_error(&self) -> &str {
        &self.last_error
    }
}

impl std::fmt::Display for DeregisterFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not deregister {} from etcd: lease {} not revoked after {} attempts in {:?} (last error: {}); \
             the key expires with its lease within {:?}",
            self.key, self.lease, self.attempts, self.elapsed, self.last_error, self.lease_ttl
        )
    }
}

impl std::error::Error for DeregisterFailed {}

/// Whether etcd answered that the lease is gone already (it expired, or an
/// earlier attempt went through): the registration is removed either way.
fn lease_gone(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            // gRPC NOT_FOUND (5): "etcdserver: requested lease not found".
            let code: i32 = status.code().into();
            code == 5 || status.message().contains("lease not found")
        }
        _ => false,
    }
}

/// How many revocation attempts `shutdown_timeout` leaves room for at
/// least, when members hang: each attempt (and each reconnection) is bounded
/// by `shutdown_timeout / SHUTDOWN_ATTEMPTS` (and by `request_timeout`).
const SHUTDOWN_ATTEMPTS: u32 = 4;

/// Revokes `lease`, retrying within `config.shutdown_timeout`: after a
/// failure, with a fresh connection to the configured endpoints (so that a
/// request is not sent again down a connection to a dead member), after the
/// backoff's delay. Each attempt has its own bound (see
/// [`SHUTDOWN_ATTEMPTS`]), so that a member that hangs cannot eat the whole
/// shutdown: the total is `shutdown_timeout`, whatever the members do.
async fn revoke(mut client: Client, config: &Config, key: &str, lease: i64) -> Result<(), DeregisterFailed> {
    let started = tokio::time::Instant::now();
    let deadline = started + config.shutdown_timeout;
    let per_attempt = (config.shutdown_timeout / SHUTDOWN_ATTEMPTS).min(config.request_timeout);
    let attempt_deadline = || (tokio::time::Instant::now() + per_attempt).min(deadline);
    let mut attempts = 0u32;
    let mut previous = None;
    loop {
        attempts += 1;
        let last_error = match tokio::time::timeout_at(attempt_deadline(), client.lease_revoke(lease)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) if lease_gone(&error) => return Ok(()),
            Ok(Err(error)) => crate::future::error_chain(&error),
            Err(_) => format!("no answer within {per_attempt:?}"),
        };
        let delay = config.delay(attempts - 1, previous);
        previous = Some(delay);
        let now = tokio::time::Instant::now();
        if now + delay >= deadline {
            return Err(DeregisterFailed {
                key: key.to_owned(),
                lease,
                attempts,
                elapsed: now.saturating_duration_since(started),
                lease_ttl: config.lease_ttl,
                last_error,
            });
        }
        tracing::debug!(target: "palisade", layer = "discovery", %key, lease, attempts, error = %last_error, "revoking an etcd lease failed; retrying");
        tokio::time::sleep(delay).await;
        if let Ok(Ok(fresh)) = tokio::time::timeout_at(attempt_deadline(), config.connect()).await {
            client = fresh;
        }
    }
}

struct Keeper {
    client: Client,
    config: Arc<Config>,
    key: String,
    lease: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl KeepAlive for Keeper {
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.task.abort();
        let lease = self.lease.load(Ordering::Acquire);
        let Keeper {
            client, config, key, ..
        } = *self;
        async move {
            revoke(client, &config, &key, lease).await?;
            Ok(())
        }
        .boxed()
    }

    fn deregister_now(self: Box<Self>) {
        self.task.abort();
        let lease = self.lease.load(Ordering::Acquire);
        let Keeper {
            client, config, key, ..
        } = *self;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = revoke(client, &config, &key, lease).await {
                    tracing::warn!(target: "palisade", layer = "discovery", %error, "dropped registration not removed");
                }
            });
        }
    }

    fn abandon(self: Box<Self>) {
        self.task.abort();
    }
}

/// Where a reconnecting loop is in its backoff.
#[derive(Debug, Default)]
struct Reconnect {
    attempt: u32,
    previous: Option<Duration>,
}

impl Reconnect {
    /// The connection works again: the next failure starts the backoff from
    /// its first step. Returns whether it had been failing.
    fn succeeded(&mut self) -> bool {
        let was_failing = self.attempt > 0;
        *self = Reconnect::default();
        was_failing
    }

    /// Whether no failure happened since the last success (a failure now is
    /// a new outage, worth a warning).
    fn fresh(&self) -> bool {
        self.attempt == 0
    }

    /// The delay before the next try, moving the backoff one step.
    fn next_delay(&mut self, config: &Config) -> Duration {
        let delay = config.delay(self.attempt, self.previous);
        self.previous = Some(delay);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

enum LeaseEnd {
    Expired,
    Failed(String),
}

/// Keeps `lease` alive until it expires or the connection fails. Every
/// answered keep-alive resets the caller's backoff: the connection works
/// again, so a later failure starts from the first step and is logged.
async fn keep_lease(client: &mut Client, lease: i64, period: Duration, backoff: &mut Reconnect) -> LeaseEnd {
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return LeaseEnd::Failed(e.to_string()),
    };
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return LeaseEnd::Failed(e.to_string());
        }
        match stream.message().await {
            Ok(Some(response)) if response.ttl() > 0 => {
                if backoff.succeeded() {
                    tracing::info!(target: "palisade", layer = "discovery", lease, "etcd keep-alive recovered");
                }
            }
            Ok(Some(_)) => return LeaseEnd::Expired,
            Ok(None) => return LeaseEnd::Failed("keep-alive stream ended".into()),
            Err(e) => return LeaseEnd::Failed(e.to_string()),
        }
        tokio::time::sleep(period).await;
    }
}

async fn grant_and_put(
    client: &mut Client,
    config: &Config,
    key: &str,
    value: &str,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(config.ttl_secs(), None).await?.id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(lease)
}

async fn keep_registration(mut client: Client, config: Arc<Config>, key: String, value: String, lease: Arc<AtomicI64>) {
    let period = (config.lease_ttl / 3).max(Duration::from_millis(300));
    let mut backoff = Reconnect::default();
    loop {
        match keep_lease(&mut client, lease.load(Ordering::Acquire), period, &mut backoff).await {
            LeaseEnd::Expired => {
                tracing::warn!(target: "palisade", layer = "discovery", %key, "etcd lease expired; registering again");
                match grant_and_put(&mut client, &config, &key, &value).await {
                    Ok(new) => {
                        lease.store(new, Ordering::Release);
                        backoff.succeeded();
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(target: "palisade", layer = "discovery", %key, %error, "etcd re-registration failed; retrying");
                    }
                }
            }
            LeaseEnd::Failed(error) => {
                // Fresh after a keep-alive succeeded: a new outage.
                if backoff.fresh() {
                    tracing::warn!(target: "palisade", layer = "discovery", %key, %error, "etcd keep-alive failed; retrying with backoff");
                } else {
                    tracing::debug!(target: "palisade", layer = "discovery", %key, %error, attempt = backoff.attempt, "etcd keep-alive still failing");
                }
            }
        }
        let delay = backoff.next_delay(&config);
        tokio::time::sleep(delay).await;
    }
}

impl Registry for EtcdRegistry {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Registration, BoxError>> {
        let config = self.config.clone();
        let key = self.key_of(&instance);
        async move {
            instance.validate()?;
            let value = instance.encode();
            let mut client = config.connect().await?;
            let lease = Arc::new(AtomicI64::new(grant_and_put(&mut client, &config, &key, &value).await?));
            let runtime = tokio::runtime::Handle::try_current()?;
            let task = runtime.spawn(keep_registration(
                client.clone(),
                config.clone(),
                key.clone(),
                value,
                lease.clone(),
            ));
            Ok(Registration::new(
                instance,
                Box::new(Keeper {
                    client,
                    config,
                    key,
                    lease,
                    task,
                }),
            ))
        }
        .boxed()
    }

    fn watch(&self, service: &str) -> WatchStream {
        let prefix = format!("{}{}/", self.config.prefix, service);
        let config = self.config.clone();
        spawn_watch(64, "watch etcd from", move |tx| watch_loop(config, prefix, tx))
    }
}

/// The receiver is gone: the watch is over.
struct Closed;

enum WatchEnd {
    Closed,
    Failed(String),
}

impl From<etcd_client::Error> for WatchEnd {
    fn from(e: etcd_client::Error) -> Self {
        WatchEnd::Failed(e.to_string())
    }
}

impl From<Closed> for WatchEnd {
    fn from(_: Closed) -> Self {
        WatchEnd::Closed
    }
}

async fn send(tx: &mpsc::Sender<WatchEvent>, event: WatchEvent) -> Result<(), Closed> {
    tx.send(event).await.map_err(|_| Closed)
}

/// Reads the prefix, then follows it; returns why it stopped. Every await
/// (connect, read, each watch message) races the consumer going away, so the
/// task ends as soon as the watch stream is dropped.
async fn read_then_watch(
    config: &Config,
    prefix: &str,
    tx: &mpsc::Sender<WatchEvent>,
    backoff: &mut Reconnect,
) -> WatchEnd {
    let work = async {
        let mut client = config.connect().await?;
        let snapshot = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let instances = snapshot
            .kvs()
            .iter()
            .filter_map(|kv| config.parse(prefix, kv))
            .collect();
        send(tx, WatchEvent::Reset(instances)).await?;
        backoff.succeeded();
        let mut watch = client
            .watch(
                prefix,
                Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)),
            )
            .await?;
        while let Some(response) = watch.message().await? {
            if response.canceled() {
                return Err(WatchEnd::Failed(format!(
                    "watch cancelled (compacted at {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                )));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.version() == 0 {
                    // A deletion (or a lease expiry).
                    let key = String::from_utf8_lossy(kv.key());
                    if let Some(addr) = key.strip_prefix(prefix) {
                        send(tx, WatchEvent::Delete(PeerId::new(addr))).await?;
                    }
                } else if let Some(instance) = config.parse(prefix, kv) {
                    send(tx, WatchEvent::Upsert(instance)).await?;
                }
            }
        }
        Err::<(), _>(WatchEnd::Failed("watch stream ended".into()))
    };
    let result = tokio::select! {
        result = work => result,
        () = tx.closed() => Err(WatchEnd::Closed),
    };
    match result {
        Ok(()) => WatchEnd::Failed("watch ended".into()),
        Err(end) => end,
    }
}

async fn watch_loop(config: Arc<Config>, prefix: String, tx: mpsc::Sender<WatchEvent>) {
    let mut backoff = Reconnect::default();
    let mut reported_down = false;
    loop {
        match read_then_watch(&config, &prefix, &tx, &mut backoff).await {
            WatchEnd::Closed => return,
            WatchEnd::Failed(reason) => {
                // Fresh when this connection had been up (or was the first).
                if backoff.fresh() {
                    reported_down = false;
                }
                if !reported_down {
                    reported_down = true;
                    tracing::warn!(target: "palisade", layer = "discovery", %prefix, %reason, "etcd unreachable; reconnecting with backoff");
                    if send(&tx, WatchEvent::Down { reason }).await.is_err() {
                        return;
                    }
                }
            }
        }
        let delay = backoff.next_delay(&config);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_core::backoff::{Backoff, Jitter};

    use super::*;

    #[test]
    fn the_backoff_starts_over_after_a_success() {
        let registry = EtcdRegistry::builder(["http://127.0.0.1:2379"])
            .backoff(
                Backoff::exponential(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(10))
                    .jitter(Jitter::None)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let config = &registry.config;
        let mut backoff = Reconnect::default();
        assert!(backoff.fresh());
        let first = backoff.next_delay(config);
        for _ in 0..5 {
            backoff.next_delay(config);
        }
        assert!(!backoff.fresh());
        assert!(backoff.next_delay(config) > first * 8);
        // A keep-alive (or a watch read) succeeded: the next outage starts
        // from the first step and is reported again.
        assert!(backoff.succeeded());
        assert!(backoff.fresh());
        assert_eq!(backoff.next_delay(config), first);
    }
}
