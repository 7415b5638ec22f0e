//! Registries and `RegistryDiscover`, with paused time.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use palisade_core::event::{Event, EventKind};
use palisade_core::peer::PeerId;
use palisade_discovery::{
    AlwaysAvailable, InMemoryRegistry, Instance, PeerDiscoveryLayer, Registry, RegistryDiscover, RegistryState,
    StaticRegistry, WatchEvent, Weighted,
};
use tower::ServiceExt;
use tower::discover::Change;
use tower_layer::Layer;
use tower_service::Service;

/// A peer that answers its address.
#[derive(Clone, Debug)]
struct Addr(String);

impl tower_service::Service<()> for Addr {
    type Response = String;
    type Error = Infallible;
    type Future = std::future::Ready<Result<String, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(self.0.clone()))
    }
}

fn answer_addr(instance: &Instance) -> Result<AlwaysAvailable<Addr>, palisade_core::BoxError> {
    Ok(AlwaysAvailable::new(Addr(instance.addr().to_owned())))
}

async fn next_change<M>(d: &mut RegistryDiscover<M>) -> Change<PeerId, Weighted<M::Service>>
where
    M: palisade_discovery::MakePeer + Unpin,
    M::Service: Clone,
{
    d.try_next().await.unwrap().expect("discover ended")
}

fn key<S>(c: &Change<PeerId, S>) -> String {
    match c {
        Change::Insert(k, _) => format!("+{k}"),
        Change::Remove(k) => format!("-{k}"),
    }
}

#[tokio::test(start_paused = true)]
async fn register_watch_and_drop_handle() {
    let registry = InMemoryRegistry::new();
    let a = registry.register(Instance::new("echo", "10.0.0.1:80")).await.unwrap();
    let b = registry
        .register(Instance::new("echo", "10.0.0.2:80").with_weight(3).with_zone("z1"))
        .await
        .unwrap();
    let _other = registry.register(Instance::new("other", "10.0.0.9:80")).await.unwrap();
    let mut discover = RegistryDiscover::new(&registry, "echo", |i: &Instance| Ok(i.clone()));
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let change = next_change(&mut discover).await;
        got.insert(key(&change));
        if let Change::Insert(k, svc) = &change
            && k.as_str() == "10.0.0.2:80"
        {
            assert_eq!(palisade_discovery::PeerWeight::weight(svc), 3);
            assert_eq!(svc.get_ref().zone(), Some("z1"));
        }
    }
    assert_eq!(
        got,
        BTreeSet::from(["+10.0.0.1:80".to_owned(), "+10.0.0.2:80".to_owned()])
    );
    assert_eq!(discover.status().state(), RegistryState::Up);
    drop(a);
    assert_eq!(key(&next_change(&mut discover).await), "-10.0.0.1:80");
    b.shutdown().await.unwrap();
    assert_eq!(key(&next_change(&mut discover).await), "-10.0.0.2:80");
    assert!(registry.instances("echo").is_empty());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_registration_and_an_abandoned_one_expires_after_the_ttl() {
    let registry = InMemoryRegistry::with_ttl(Duration::from_secs(3)).unwrap();
    let kept = registry.register(Instance::new("echo", "10.0.0.1:80")).await.unwrap();
    let crashed = registry.register(Instance::new("echo", "10.0.0.2:80")).await.unwrap();
    let mut discover = RegistryDiscover::new(&registry, "echo", |i: &Instance| Ok(i.clone()));
    next_change(&mut discover).await;
    next_change(&mut discover).await;
    crashed.abandon();
    // Just before the TTL both are still there.
    tokio::time::sleep(Duration::from_millis(2_900)).await;
    assert_eq!(registry.instances("echo").len(), 2);
    let change = tokio::time::timeout(Duration::from_secs(1), next_change(&mut discover))
        .await
        .expect("the abandoned registration did not expire");
    assert_eq!(key(&change), "-10.0.0.2:80");
    // Long after, heartbeats still keep the other one.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(registry.instances("echo"), vec![Instance::new("echo", "10.0.0.1:80")]);
    drop(kept);
    assert!(registry.instances("echo").is_empty());
}

#[tokio::test(start_paused = true)]
async fn invalid_instances_are_refused_and_ttl_is_validated() {
    let registry = InMemoryRegistry::new();
    assert!(registry.register(Instance::new("echo", "")).await.is_err());
    assert!(registry.register(Instance::new("", "a:1")).await.is_err());
    assert!(registry.register(Instance::new("echo", "a b:1")).await.is_err());
    // Addresses a client could not be made from are refused, not panicked on.
    for bad in [
        "[::1", "[::1]", "a:b:c", "x/y:1", "a:99999", "a:", ":80", "a:-1", "[zz]:80", "a..b:1", "-a:1",
    ] {
        assert!(Instance::new("echo", bad).validate().is_err(), "{bad:?} accepted");
        assert!(
            registry.register(Instance::new("echo", bad)).await.is_err(),
            "{bad:?} registered"
        );
        let encoded = format!("service=echo\naddr={bad}\n");
        assert!(Instance::decode(&encoded).is_err(), "{bad:?} decoded");
    }
    for good in [
        "[::1]:80",
        "10.0.0.1:50051",
        "localhost:8080",
        "echo-1.svc.cluster.local:443",
    ] {
        assert!(Instance::new("echo", good).validate().is_ok(), "{good:?} refused");
    }
    let err = InMemoryRegistry::with_ttl_and_heartbeat(Duration::from_secs(1), Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.field(), "heartbeat");
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_resynchronises_without_duplicates() {
    let registry = InMemoryRegistry::new();
    let mut discover = RegistryDiscover::new(&registry, "echo", |i: &Instance| Ok(i.clone()));
    let addr = |i: usize| format!("10.0.{}.{}:80", i / 250, i % 250);
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(registry.register(Instance::new("echo", addr(i))).await.unwrap());
    }
    // The watcher consumes the first changes...
    let mut set = BTreeSet::new();
    let mut changes: Vec<String> = Vec::new();
    let drain = |discover: &mut RegistryDiscover<_>, set: &mut BTreeSet<String>, changes: &mut Vec<String>| {
        while let Some(Some(change)) = discover.try_next().now_or_never().map(|r| r.unwrap()) {
            match change {
                Change::Insert(k, _) => {
                    changes.push(format!("+{k}"));
                    assert!(set.insert(k.to_string()), "duplicate insert of {k}");
                }
                Change::Remove(k) => {
                    changes.push(format!("-{k}"));
                    assert!(set.remove(k.as_str()), "remove of unknown {k}");
                }
            }
        }
    };
    drain(&mut discover, &mut set, &mut changes);
    assert_eq!(set.len(), 10);
    changes.clear();
    // ...then falls behind the broadcast buffer: it resynchronises from a
    // full snapshot.
    for i in 10..400 {
        handles.push(registry.register(Instance::new("echo", addr(i))).await.unwrap());
    }
    // Remove a few of the new ones and one of the first ones.
    handles.truncate(390);
    drop(handles.remove(0));
    drain(&mut discover, &mut set, &mut changes);
    assert_eq!(set.len(), 389);
    // Exactly the real changes came out: 390 - 10 inserts (10..390) and one
    // remove; the nine unchanged instances produced nothing.
    let inserts = changes.iter().filter(|c| c.starts_with('+')).count();
    let removes: Vec<_> = changes.iter().filter(|c| c.starts_with('-')).collect();
    assert_eq!(inserts, 380, "inserts: {changes:?}");
    assert_eq!(removes, vec![&format!("-{}", addr(0))]);
    for i in 1..10 {
        let a = addr(i);
        assert!(!changes.iter().any(|c| c[1..] == a), "unchanged {a} produced a change");
    }
}

use futures::FutureExt;

#[tokio::test(start_paused = true)]
async fn registry_down_keeps_the_last_set_and_reports_both_edges() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<WatchEvent>();
    let watch = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed();
    let edges = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = edges.clone();
    let discover =
        RegistryDiscover::from_watch("echo", watch, answer_addr).with_listener(Arc::new(move |e: &Event<'_>| {
            if let EventKind::StateChange { from, to, .. } = e.kind {
                log.lock().push((from, to));
            }
        }));
    let status = discover.status();
    assert_eq!(status.state(), RegistryState::Connecting);
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .registry_status(status.clone())
        .build()
        .unwrap()
        .layer(discover);
    tx.send(WatchEvent::Reset(vec![
        Instance::new("echo", "a:1"),
        Instance::new("echo", "b:1"),
    ]))
    .unwrap();
    assert!(lb.ready().await.unwrap().call(()).await.is_ok());
    tx.send(WatchEvent::Down {
        reason: "connection refused".into(),
    })
    .unwrap();
    for _ in 0..20 {
        let answer: String = lb.ready().await.unwrap().call(()).await.unwrap();
        assert!(answer == "a:1" || answer == "b:1");
    }
    let health = lb.health();
    assert_eq!(health.registry, Some(RegistryState::Down));
    assert_eq!(health.peers.len(), 2);
    // Back, with a changed set: resynchronised.
    tx.send(WatchEvent::Reset(vec![
        Instance::new("echo", "b:1"),
        Instance::new("echo", "c:1"),
    ]))
    .unwrap();
    lb.ready().await.unwrap();
    let ids: BTreeSet<_> = lb.health().peers.iter().map(|p| p.peer.to_string()).collect();
    assert_eq!(ids, BTreeSet::from(["b:1".to_owned(), "c:1".to_owned()]));
    assert_eq!(lb.health().registry, Some(RegistryState::Up));
    assert_eq!(*edges.lock(), [("connecting", "up"), ("up", "down"), ("down", "up")]);
}

#[tokio::test(start_paused = true)]
async fn static_registry_serves_its_list_and_refuses_registration() {
    let registry = StaticRegistry::new()
        .with_addrs("echo", ["a:1", "b:1"])
        .with(Instance::new("echo", ""));
    assert!(registry.register(Instance::new("echo", "c:1")).await.is_err());
    let discover = RegistryDiscover::new(&registry, "echo", answer_addr);
    let mut lb = PeerDiscoveryLayer::new().layer(discover);
    let answer = lb.ready().await.unwrap().call(()).await.unwrap();
    assert!(answer == "a:1" || answer == "b:1");
    assert_eq!(lb.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn registry_discover_works_under_towers_own_balancer() {
    use tower::balance::p2c::Balance;
    use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    let registry = InMemoryRegistry::new();
    let _a = registry.register(Instance::new("echo", "a:1")).await.unwrap();
    let b = registry.register(Instance::new("echo", "b:1")).await.unwrap();
    let discover = RegistryDiscover::new(&registry, "echo", answer_addr);
    let mut balance = Balance::new(PendingRequestsDiscover::new(discover, CompleteOnResponse::default()));
    let mut seen = BTreeSet::new();
    for _ in 0..50 {
        let answer: String = balance.ready().await.unwrap().call(()).await.unwrap();
        seen.insert(answer);
    }
    assert_eq!(seen, BTreeSet::from(["a:1".to_owned(), "b:1".to_owned()]));
    drop(b);
    balance.ready().await.unwrap();
    for _ in 0..20 {
        let answer: String = balance.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(answer, "a:1");
    }
}

#[tokio::test(start_paused = true)]
async fn in_memory_registry_end_to_end_under_peer_discovery() {
    let registry = InMemoryRegistry::new();
    let regs: Vec<_> =
        futures::future::try_join_all(["a:1", "b:1", "c:1"].map(|addr| registry.register(Instance::new("echo", addr))))
            .await
            .unwrap();
    let discover = RegistryDiscover::new(&registry, "echo", answer_addr);
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .service_name("echo")
        .build()
        .unwrap()
        .layer(discover);
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(lb.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(seen.len(), 3);
    drop(regs);
    lb.ready().await.unwrap();
    assert!(lb.is_empty());
}

#[test]
fn instance_encoding_round_trips_and_rejects_garbage() {
    let i = Instance::new("echo", "10.0.0.1:50051")
        .with_zone("eu-1a")
        .with_weight(5)
        .with_metadata("version", "1.2.3 beta");
    assert_eq!(Instance::decode(&i.encode()).unwrap(), i);
    for bad in [
        "",
        "addr=a:1",
        "service=echo",
        "service=echo\naddr=a:1\nweight=x",
        "nonsense",
        "service=echo\naddr=a:1\nfoo=bar",
    ] {
        assert!(Instance::decode(bad).is_err(), "{bad:?} accepted");
    }
    let huge = format!("service=echo\naddr={}", "a".repeat(100_000));
    assert!(Instance::decode(&huge).is_err());
}

proptest::proptest! {
    #[test]
    fn decoding_never_panics(text in ".{0,300}") {
        let _ = Instance::decode(&text);
    }
}

#[test]
fn outside_a_runtime_registration_fails_instead_of_panicking_unless_there_is_no_ttl() {
    let with_ttl = InMemoryRegistry::new();
    let result = with_ttl.register(Instance::new("echo", "a:1")).now_or_never().unwrap();
    assert!(result.is_err());
    let plain = InMemoryRegistry::without_ttl();
    let handle = plain
        .register(Instance::new("echo", "a:1"))
        .now_or_never()
        .unwrap()
        .unwrap();
    assert_eq!(plain.instances("echo").len(), 1);
    drop(handle);
    assert!(plain.instances("echo").is_empty());
    assert_eq!(plain.ttl(), None);
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_client_cannot_be_made_is_skipped_not_panicked_on() {
    let registry = InMemoryRegistry::new();
    let _a = registry.register(Instance::new("echo", "10.0.0.1:80")).await.unwrap();
    let _b = registry.register(Instance::new("echo", "10.0.0.2:80")).await.unwrap();
    let make = |i: &Instance| -> Result<AlwaysAvailable<Addr>, palisade_core::BoxError> {
        if i.addr() == "10.0.0.2:80" {
            return Err("refused by the client builder".into());
        }
        answer_addr(i)
    };
    let discover = RegistryDiscover::new(&registry, "echo", make);
    let mut lb = PeerDiscoveryLayer::new().layer(discover);
    for _ in 0..20 {
        let answer = lb.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(answer, "10.0.0.1:80");
    }
    assert_eq!(lb.len(), 1);
}

#[test]
fn the_in_memory_defaults_are_the_seed_systems() {
    let registry = InMemoryRegistry::new();
    assert_eq!(registry.ttl(), Some(Duration::from_secs(20)));
    assert_eq!(registry.heartbeat(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn no_task_outlives_the_in_memory_registry() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let registry = InMemoryRegistry::with_ttl(Duration::from_secs(6)).unwrap();
    // An expiry task and two heartbeat tasks; the handles outlive the registry.
    let a = registry.register(Instance::new("echo", "a:1")).await.unwrap();
    let b = registry.register(Instance::new("echo", "b:1")).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), before + 3);
    drop(registry);
    // Without waiting for any timer: the tasks see the registry gone.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), before, "a task outlived its registry");
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn an_in_memory_outage_keeps_the_last_set_serving_and_resynchronises_after() {
    let registry = InMemoryRegistry::with_ttl(Duration::from_secs(6)).unwrap();
    let mut kept = Vec::new();
    for addr in ["a:1", "b:1", "c:1"] {
        kept.push(Some(registry.register(Instance::new("echo", addr)).await.unwrap()));
    }
    let discover = RegistryDiscover::new(&registry, "echo", answer_addr);
    let status = discover.status();
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .registry_status(status.clone())
        .build()
        .unwrap()
        .layer(discover);
    lb.ready().await.unwrap();
    assert_eq!(lb.len(), 3);

    registry.set_reachable(false);
    assert!(!registry.is_reachable());
    // Registering fails with a typed error; a provider leaves meanwhile.
    let err = registry.register(Instance::new("echo", "d:1")).await.unwrap_err();
    assert!(err.is::<palisade_discovery::error::Unreachable>(), "{err}");
    drop(kept[0].take());
    // Long past the TTL: nothing expires while the registry is down, and the
    // balancer keeps serving the last known set, including the peer that left.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(lb.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["a:1".to_owned(), "b:1".to_owned(), "c:1".to_owned()])
    );
    assert_eq!(lb.health().registry, Some(RegistryState::Down));
    assert_eq!(registry.instances("echo").len(), 2);

    // Back: resynchronised (the departed peer goes), and registering works.
    registry.set_reachable(true);
    let _d = registry.register(Instance::new("echo", "d:1")).await.unwrap();
    lb.ready().await.unwrap();
    tokio::task::yield_now().await;
    lb.ready().await.unwrap();
    let ids: BTreeSet<_> = lb.health().peers.iter().map(|p| p.peer.to_string()).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["b:1".to_owned(), "c:1".to_owned(), "d:1".to_owned()])
    );
    assert_eq!(lb.health().registry, Some(RegistryState::Up));
    // The survivors' heartbeats resumed: still registered a TTL later.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(registry.instances("echo").len(), 3);
}
