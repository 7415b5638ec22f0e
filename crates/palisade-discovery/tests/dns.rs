//! The DNS registry against a resolver test double, with paused time.
#![cfg(feature = "dns")]
#![allow(clippy::disallowed_types, clippy::type_complexity)]

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use palisade_core::BoxError;
use palisade_discovery::{
    DnsRegistry, Instance, NoSuchName, Registry, RegistryDiscover, RegistryState, Resolve, SrvTarget,
};
use parking_lot::Mutex;
use tower::discover::Change;

#[derive(Clone, Default)]
struct FakeDns {
    hosts: Arc<Mutex<HashMap<String, Result<Vec<IpAddr>, String>>>>,
    srv: Arc<Mutex<HashMap<String, Vec<SrvTarget>>>>,
    lookups: Arc<Mutex<usize>>,
}

impl FakeDns {
    fn set(&self, host: &str, ips: &[&str]) {
        self.hosts
            .lock()
            .insert(host.into(), Ok(ips.iter().map(|s| s.parse().unwrap()).collect()));
    }

    fn fail(&self, host: &str) {
        self.hosts.lock().insert(host.into(), Err("SERVFAIL".into()));
    }
}

impl Resolve for FakeDns {
    fn lookup_ip(&self, host: &str) -> BoxFuture<'static, Result<Vec<IpAddr>, BoxError>> {
        *self.lookups.lock() += 1;
        let answer = match self.hosts.lock().get(host).cloned() {
            Some(answer) => answer.map_err(BoxError::from),
            None => Err(NoSuchName::new(host).into()),
        };
        futures::future::ready(answer).boxed()
    }

    fn lookup_srv(&self, name: &str) -> BoxFuture<'static, Result<Vec<SrvTarget>, BoxError>> {
        let answer = self
            .srv
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| BoxError::from(NoSuchName::new(name)));
        futures::future::ready(answer).boxed()
    }
}

type Discover = RegistryDiscover<fn(&Instance) -> Result<Instance, palisade_core::BoxError>>;

fn clone_instance(i: &Instance) -> Result<Instance, palisade_core::BoxError> {
    Ok(i.clone())
}

/// Applies every change the discover has ready to `set`.
fn drain(discover: &mut Discover, set: &mut BTreeSet<String>) {
    while let Some(Some(change)) = discover.next().now_or_never() {
        match change.unwrap() {
            Change::Insert(k, _) => {
                set.insert(k.to_string());
            }
            Change::Remove(k) => {
                assert!(set.remove(k.as_str()), "remove of unknown {k}");
            }
        }
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_changed_answer_adds_and_removes_peers_and_a_failure_keeps_the_set() {
    let dns = FakeDns::default();
    dns.set("echo.internal", &["10.0.0.1", "10.0.0.2"]);
    let registry = DnsRegistry::new(dns.clone())
        .with_host("echo", "echo.internal", 50051)
        .interval(Duration::from_secs(5))
        .unwrap();
    let mut discover: Discover = RegistryDiscover::new(
        &registry,
        "echo",
        clone_instance as fn(&Instance) -> Result<Instance, palisade_core::BoxError>,
    );
    let mut peers = BTreeSet::new();
    tokio::time::sleep(Duration::from_millis(1)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.0.1:50051", "10.0.0.2:50051"]));
    assert_eq!(discover.status().state(), RegistryState::Up);

    // The answer changes: one address leaves, one joins, at the next resolution.
    dns.set("echo.internal", &["10.0.0.2", "fd00::3"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(
        peers,
        set(&["10.0.0.1:50051", "10.0.0.2:50051"]),
        "re-resolved before the interval"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.0.2:50051", "[fd00::3]:50051"]));

    // DNS fails for a while (SERVFAIL): the set stays, the registry is
    // degraded with the error (issue 14 review: no longer reported down);
    // it answers again: resync, the note is gone.
    dns.fail("echo.internal");
    tokio::time::sleep(Duration::from_secs(5)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(discover.status().state(), RegistryState::Up);
    let note = discover.status().note().expect("the failure is the registry's note");
    assert!(note.contains("SERVFAIL") && note.contains("last known set"), "{note}");
    assert_eq!(peers, set(&["10.0.0.2:50051", "[fd00::3]:50051"]));
    dns.set("echo.internal", &["10.0.0.9"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(discover.status().state(), RegistryState::Up);
    assert_eq!(discover.status().note(), None);
    assert_eq!(peers, set(&["10.0.0.9:50051"]));

    // The name disappears from the zone (NXDOMAIN): not a temporary
    // failure; the registry is down, says why, and the set stays.
    dns.hosts.lock().remove("echo.internal");
    tokio::time::sleep(Duration::from_secs(6)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(discover.status().state(), RegistryState::Down);
    let note = discover.status().note().expect("the registry's note says why");
    assert!(note.contains("does not exist (NXDOMAIN)"), "{note}");
    assert_eq!(peers, set(&["10.0.0.9:50051"]));
    dns.set("echo.internal", &["10.0.0.9"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(discover.status().state(), RegistryState::Up);

    // An empty answer is treated as a failure, not as "no peers".
    dns.set("echo.internal", &[]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.0.9:50051"]));
    assert_eq!(discover.status().state(), RegistryState::Down);
}

#[tokio::test(start_paused = true)]
async fn srv_records_use_the_lowest_priority_and_carry_weights() {
    let dns = FakeDns::default();
    dns.set("a.internal", &["10.0.1.1"]);
    dns.set("b.internal", &["10.0.1.2"]);
    dns.set("backup.internal", &["10.0.9.9"]);
    dns.srv.lock().insert(
        "_grpc._tcp.echo".into(),
        vec![
            SrvTarget {
                target: "a.internal".into(),
                port: 7001,
                weight: 3,
                priority: 10,
            },
            SrvTarget {
                target: "b.internal".into(),
                port: 7002,
                weight: 1,
                priority: 10,
            },
            SrvTarget {
                target: "backup.internal".into(),
                port: 7009,
                weight: 1,
                priority: 20,
            },
        ],
    );
    let registry = DnsRegistry::new(dns.clone()).with_srv("echo", "_grpc._tcp.echo");
    let mut watch = registry.watch("echo");
    let Some(palisade_discovery::WatchEvent::Reset(instances)) = watch.next().await else {
        panic!("no answer")
    };
    let got: Vec<(String, u32)> = instances.iter().map(|i| (i.addr().to_owned(), i.weight())).collect();
    assert_eq!(got, [("10.0.1.1:7001".to_owned(), 3), ("10.0.1.2:7002".to_owned(), 1)]);
    assert!(registry.register(Instance::new("echo", "x:1")).await.is_err());
    assert!(DnsRegistry::new(dns).interval(Duration::ZERO).is_err());
}

#[tokio::test(start_paused = true)]
async fn an_srv_target_that_does_not_resolve_is_skipped_and_the_others_update() {
    let dns = FakeDns::default();
    dns.set("a.internal", &["10.0.1.1"]);
    dns.set("b.internal", &["10.0.1.2"]);
    let srv = |targets: &[&str]| {
        targets
            .iter()
            .map(|t| SrvTarget {
                target: (*t).into(),
                port: 7000,
                weight: 1,
                priority: 10,
            })
            .collect::<Vec<_>>()
    };
    dns.srv
        .lock()
        .insert("_grpc._tcp.echo".into(), srv(&["a.internal", "b.internal"]));
    let registry = DnsRegistry::new(dns.clone())
        .with_srv("echo", "_grpc._tcp.echo")
        .interval(Duration::from_secs(30))
        .unwrap();
    let mut discover: Discover = RegistryDiscover::new(&registry, "echo", clone_instance);
    let status = discover.status();
    let mut peers = BTreeSet::new();
    tokio::time::sleep(Duration::from_millis(1)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.1.1:7000", "10.0.1.2:7000"]));
    assert_eq!(status.note(), None);

    // b is removed from the SRV set, c added — but c has no A record yet.
    // Before, the whole resolve failed and the set froze with b in it.
    dns.srv
        .lock()
        .insert("_grpc._tcp.echo".into(), srv(&["a.internal", "c.internal"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(
        peers,
        set(&["10.0.1.1:7000"]),
        "b must leave although c does not resolve"
    );
    assert_eq!(status.state(), RegistryState::Up);
    let note = status.note().expect("a health note names the skipped target");
    assert!(note.contains("c.internal:7000"), "{note}");

    // c gets its record: it joins and the note clears.
    dns.set("c.internal", &["10.0.1.3"]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.1.1:7000", "10.0.1.3:7000"]));
    assert_eq!(status.note(), None);

    // No target resolves at all: a failure, the last set kept.
    dns.srv.lock().insert("_grpc._tcp.echo".into(), srv(&["x.internal"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    drain(&mut discover, &mut peers);
    assert_eq!(peers, set(&["10.0.1.1:7000", "10.0.1.3:7000"]));
    assert_eq!(status.state(), RegistryState::Down);
}
