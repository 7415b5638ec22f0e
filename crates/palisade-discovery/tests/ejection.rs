//! Issue 19: the ejection cap. Breakers ask the balancer before leaving
//! rotation; the balancer never lets more than its share of peers out,
//! keeps the rest in rotation as "degraded" (preferring the others, while
//! sending each degraded peer a call a second so that it can show it
//! recovered), shows them in the health report and its events, and gives
//! every grant back on close, reset and removal.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use palisade_core::event::{Event, EventKind};
use palisade_discovery::{
    AllOpenPolicy, DEFAULT_MAX_EJECTED_SHARE, Ejections, PeerDiscovery, PeerDiscoveryBuilder, PeerDiscoveryLayer,
    PeerState,
};
use proptest::prelude::*;
use tower::discover::Change;
use tower_layer::Layer;

type Balancer = PeerDiscovery<ChannelDiscover<Peer>>;
type Sender = tokio::sync::mpsc::UnboundedSender<Change<String, Peer>>;

fn balancer_with(
    ctls: &[Arc<Ctl>],
    builder: PeerDiscoveryBuilder<palisade_core::protocol::Plain>,
) -> (Sender, Balancer) {
    let (tx, discover) = channel_discover();
    for c in ctls {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    (tx, builder.build().unwrap().layer(discover))
}

fn named(n: usize) -> Vec<Arc<Ctl>> {
    (0..n).map(|i| Ctl::new(&format!("p{i}"))).collect()
}

fn ejections(lb: &Balancer) -> (usize, usize) {
    let e: Ejections = lb.health().ejections.expect("a cap applies");
    (e.ejected, e.limit)
}

#[test]
fn the_default_cap_keeps_all_but_its_share_in_rotation() {
    assert_eq!(DEFAULT_MAX_EJECTED_SHARE, 0.1);
    let peers = named(3);
    let (_tx, mut lb) = balancer_with(&peers, PeerDiscoveryLayer::builder().plain());
    call_now(&mut lb, ()).unwrap();
    assert!(peers[0].trip(Duration::from_secs(5)), "one of three may go");
    assert!(!peers[1].trip(Duration::from_secs(5)), "a second may not");
    assert!(!peers[2].trip(Duration::from_secs(5)));
    call_now(&mut lb, ()).unwrap();
    let health = lb.health();
    assert_eq!(ejections(&lb), ejections_of(1, 1));
    let counts = health.counts();
    assert_eq!((counts.open, counts.degraded, counts.available), (1, 2, 0), "{health}");
    assert_eq!(health.peer(&"p1".into()).unwrap().state, PeerState::Degraded);
    let text = health.to_string();
    assert!(
        text.contains("degraded (open but kept)") && text.contains("1 of at most 1 ejected"),
        "{text}"
    );
    // The kept peers take the calls; the ejected one gets none.
    for _ in 0..20 {
        assert_ne!(call_now(&mut lb, ()).unwrap(), "p0");
    }
    // The ejected peer closes: its grant goes back, and a kept peer's next
    // trip is granted.
    peers[0].close();
    call_now(&mut lb, ()).unwrap();
    assert_eq!(ejections(&lb).0, 0);
    assert!(peers[1].trip(Duration::from_secs(5)));
    // Without a cap every peer may go (the all-open policy then decides).
    let peers = named(3);
    let (_tx, mut uncapped) = balancer_with(&peers, PeerDiscoveryLayer::builder().plain().no_ejection_cap());
    call_now(&mut uncapped, ()).unwrap();
    assert!(peers.iter().all(|p| p.trip(Duration::from_secs(5))));
    assert_eq!(uncapped.health().ejections, None);
}

/// What the health report says of the cap.
fn ejections_of(ejected: usize, limit: usize) -> (usize, usize) {
    (ejected, limit)
}

#[test]
fn a_lone_peer_is_never_ejected_and_larger_fleets_get_their_share() {
    let one = named(1);
    let (_tx, mut lb) = balancer_with(&one, PeerDiscoveryLayer::builder().plain());
    call_now(&mut lb, ()).unwrap();
    assert!(!one[0].trip(Duration::from_secs(5)), "the last peer stays in rotation");
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p0", "a degraded peer still serves");
    let twenty = named(20);
    let (_tx, mut lb) = balancer_with(&twenty, PeerDiscoveryLayer::builder().plain().max_ejected_share(0.25));
    call_now(&mut lb, ()).unwrap();
    let granted = twenty.iter().filter(|p| p.trip(Duration::from_secs(5))).count();
    assert_eq!(granted, 5, "25% of 20");
    assert_eq!(ejections(&lb), ejections_of(5, 5));
}

#[test]
fn a_bad_share_is_a_config_error_naming_the_field() {
    for share in [0.0, -0.5, 1.5, f64::NAN] {
        let err = PeerDiscoveryLayer::builder()
            .plain()
            .max_ejected_share(share)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_ejected_share", "{share}");
    }
    assert!(
        PeerDiscoveryLayer::builder()
            .plain()
            .max_ejected_share(1.0)
            .build()
            .is_ok()
    );
}

// A degraded peer that fails fast looks unloaded; it must not attract the
// calls a healthy peer can take. It still gets one call a second, so that
// it can show it recovered.
#[tokio::test(start_paused = true)]
async fn healthy_peers_are_preferred_to_degraded_ones_which_get_a_call_a_second() {
    let peers = named(3);
    let (_tx, mut lb) = balancer_with(&peers, PeerDiscoveryLayer::builder().plain());
    call_now(&mut lb, ()).unwrap();
    assert!(peers[0].trip(Duration::from_secs(30)));
    assert!(!peers[1].trip(Duration::from_secs(30)));
    // A slow call in flight on p2 makes it the more loaded of the two.
    peers[2].hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut held = tower::Service::call(&mut lb, ());
    assert!(poll_once(&mut held).is_pending());
    peers[2].hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let before = peers[1].calls();
    // The recheck of p1 falls due one second after it was kept.
    for _ in 0..100 {
        assert_eq!(
            call_now(&mut lb, ()).unwrap(),
            "p2",
            "a degraded peer won over a healthy one"
        );
    }
    assert_eq!(peers[1].calls(), before);
    for second in 1..=3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            call_now(&mut lb, ()).unwrap(),
            "p1",
            "second {second}: the degraded peer's recheck"
        );
        for _ in 0..50 {
            assert_eq!(call_now(&mut lb, ()).unwrap(), "p2");
        }
    }
    assert_eq!(peers[1].calls() - before, 3, "one call a second");
    // Recovered: back to sharing the calls.
    peers[1].close();
    let mut p1 = 0;
    for _ in 0..200 {
        p1 += usize::from(call_now(&mut lb, ()).unwrap() == "p1");
    }
    assert!(p1 > 40, "a recovered peer gets its share again: {p1} of 200");
    peers[2].release_all();
    drop(held);
}

#[test]
fn kept_and_recovered_peers_are_announced() {
    let changes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = changes.clone();
    let peers = named(3);
    let (_tx, mut lb) = balancer_with(
        &peers,
        PeerDiscoveryLayer::builder()
            .plain()
            .all_open(AllOpenPolicy::FailFast)
            .listener(Arc::new(move |e: &Event<'_>| {
                if let EventKind::StateChange { from, to, reason, .. } = e.kind {
                    log.lock().push((e.peer.map(|p| p.to_string()), from, to, reason));
                }
            })),
    );
    call_now(&mut lb, ()).unwrap();
    assert!(peers[0].trip(Duration::from_secs(5)));
    assert!(!peers[1].trip(Duration::from_secs(5)));
    call_now(&mut lb, ()).unwrap();
    peers[1].close();
    call_now(&mut lb, ()).unwrap();
    let p1 = Some("p1".to_owned());
    assert_eq!(
        changes.lock()[1..],
        [
            (
                p1.clone(),
                "available",
                "degraded",
                "ejection cap reached: open but kept"
            ),
            (p1, "degraded", "available", "recovered"),
        ],
        "{:?}",
        changes.lock()
    );
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8),
    Remove(u8),
    Trip(u8),
    Close(u8),
    Call,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..12u8).prop_map(Op::Insert),
        1 => (0..12u8).prop_map(Op::Remove),
        4 => (0..12u8).prop_map(Op::Trip),
        2 => (0..12u8).prop_map(Op::Close),
        2 => Just(Op::Call),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Against a model: a grant is given only while fewer than the limit of
    /// the current set are held, every grant held belongs to a peer in the
    /// set that tripped and has not closed since, and closing, removal and
    /// re-insertion give every grant back: nothing leaks.
    #[test]
    fn ejection_grants_are_bounded_and_never_leak(share in 0.05f64..=1.0, ops in proptest::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let _guard = rt.enter();
        let (tx, discover) = channel_discover();
        let mut lb: Balancer = PeerDiscoveryLayer::builder().plain().max_ejected_share(share).build().unwrap().layer(discover);
        // Peer name -> (its controls, whether it holds a grant).
        let mut model: BTreeMap<u8, (Arc<Ctl>, bool)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(k) => {
                    if let Some((old, _)) = model.remove(&k) {
                        // A new peer under a known key replaces the service
                        // in place; the old breaker gives its grant back.
                        old.close();
                    }
                    let ctl = Ctl::new(&format!("p{k}"));
                    tx.send(Change::Insert(ctl.name.clone(), Peer(ctl.clone()))).unwrap();
                    model.insert(k, (ctl, false));
                }
                Op::Remove(k) => {
                    if model.remove(&k).is_some() {
                        tx.send(Change::Remove(format!("p{k}"))).unwrap();
                    }
                }
                Op::Trip(k) => {
                    // The balancer must have seen the set's latest changes
                    // for its limit to be the set's.
                    let _ = call_now(&mut lb, ());
                    let n = model.len();
                    let held = model.values().filter(|(_, h)| *h).count();
                    if let Some((ctl, holds)) = model.get_mut(&k) {
                        let limit = if n < 2 { 0 } else { ((share * n as f64).floor() as usize).clamp(1, n - 1) };
                        let granted = ctl.trip(Duration::from_secs(5));
                        prop_assert_eq!(granted, *holds || held < limit, "n {} held {} limit {}", n, held, limit);
                        *holds = granted;
                    }
                }
                Op::Close(k) => {
                    if let Some((ctl, holds)) = model.get_mut(&k) {
                        ctl.close();
                        *holds = false;
                    }
                }
                Op::Call => {
                    let _ = call_now(&mut lb, ());
                }
            }
            let _ = call_now(&mut lb, ());
            let held = model.values().filter(|(_, h)| *h).count();
            prop_assert_eq!(lb.health().ejections.map(|e| e.ejected), Some(held));
        }
        for (ctl, _) in model.values() {
            ctl.close();
        }
        let _ = call_now(&mut lb, ());
        prop_assert_eq!(lb.health().ejections.map(|e| e.ejected), Some(0));
    }
}
