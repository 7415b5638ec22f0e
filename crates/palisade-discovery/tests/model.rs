//! Proptest against a reference model: random Insert/Remove/availability/
//! readiness changes and calls. The balancer never picks an unavailable peer
//! while an available one exists, prefers peers outside the attempt record,
//! fails only when no peer is available, and never loses or invents a peer.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::*;
use palisade_core::error::NoAvailablePeers;
use palisade_core::options::CallOptionsExt;
use palisade_core::peer::{AttemptRecord, Availability, PeerId, Unavailable};
use palisade_discovery::PeerDiscoveryLayer;
use proptest::prelude::*;
use tower::discover::Change;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Available,
    Probe,
    Open,
    Busy,
}

impl State {
    fn availability(self) -> Availability {
        match self {
            State::Available => Availability::Available,
            State::Probe => Availability::Probe,
            State::Open => Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in: Duration::from_secs(1),
            },
            State::Busy => Availability::Unavailable {
                reason: Unavailable::ProbesBusy,
                retry_in: Duration::ZERO,
            },
        }
    }

    fn is_available(self) -> bool {
        matches!(self, State::Available | State::Probe)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8),
    Remove(u8),
    Set(u8, State),
    Ready(u8, bool),
    Call(Vec<u8>),
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::Available),
        Just(State::Probe),
        Just(State::Open),
        Just(State::Busy)
    ]
}

fn op(keys: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..keys).prop_map(Op::Insert),
        1 => (0..keys).prop_map(Op::Remove),
        2 => (0..keys, state()).prop_map(|(k, s)| Op::Set(k, s)),
        1 => (0..keys, any::<bool>()).prop_map(|(k, r)| Op::Ready(k, r)),
        4 => proptest::collection::vec(0..keys, 0..3).prop_map(Op::Call),
    ]
}

struct ModelPeer {
    ctl: Arc<Ctl>,
    state: State,
    ready: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn never_picks_an_unavailable_peer_and_never_loses_one(ops in proptest::collection::vec(op(8), 1..80)) {
        run(ops)?;
    }

    /// More peers than random draws reach: the fallback sample of peers last
    /// seen available, and the scan behind it, are exercised.
    #[test]
    fn the_same_with_many_peers(ops in proptest::collection::vec(op(64), 1..300)) {
        run(ops)?;
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    {
        let (tx, discover) = channel_discover();
        let mut lb = PeerDiscoveryLayer::builder()
            .protocol(HttpRequests)
            .build()
            .unwrap()
            .layer(discover);
        let mut model: BTreeMap<u8, ModelPeer> = BTreeMap::new();
        let mut cx = Context::from_waker(Waker::noop());
        for op in ops {
            match op {
                Op::Insert(k) => {
                    let ctl = Ctl::new(&k.to_string());
                    tx.send(Change::Insert(k.to_string(), Peer(ctl.clone()))).unwrap();
                    model.insert(
                        k,
                        ModelPeer {
                            ctl,
                            state: State::Available,
                            ready: true,
                        },
                    );
                }
                Op::Remove(k) => {
                    tx.send(Change::Remove(k.to_string())).unwrap();
                    model.remove(&k);
                }
                Op::Set(k, s) => {
                    if let Some(p) = model.get_mut(&k) {
                        p.ctl.set(s.availability());
                        p.state = s;
                    }
                }
                Op::Ready(k, r) => {
                    if let Some(p) = model.get_mut(&k) {
                        p.ctl.set_ready(r);
                        p.ready = r;
                    }
                }
                Op::Call(used) => {
                    let record = AttemptRecord::new();
                    for u in &used {
                        record.record(PeerId::new(u.to_string()));
                    }
                    let mut req = http::Request::new(());
                    *req.attempt_record_mut() = record.clone();
                    prop_assert!(Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
                    let mut fut = lb.call(req);
                    let Poll::Ready(result) = poll_once(&mut fut) else {
                        panic!("pending response")
                    };
                    let available: BTreeSet<u8> = model
                        .iter()
                        .filter(|(_, p)| p.ready && p.state.is_available())
                        .map(|(k, _)| *k)
                        .collect();
                    let fresh: BTreeSet<u8> = available.iter().copied().filter(|k| !used.contains(k)).collect();
                    match result {
                        Ok(name) => {
                            let k: u8 = name.parse().unwrap();
                            prop_assert!(available.contains(&k), "picked {k}, available {available:?}");
                            if !fresh.is_empty() {
                                prop_assert!(fresh.contains(&k), "picked used peer {k}, fresh {fresh:?}");
                            }
                        }
                        Err(e) => {
                            prop_assert!(available.is_empty(), "failed with {e} while {available:?} available");
                            let none = e.downcast_ref::<NoAvailablePeers>().unwrap();
                            prop_assert_eq!(none.known(), model.len());
                        }
                    }
                }
            }
            prop_assert!(Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
            let known: BTreeSet<String> = lb.health().peers.iter().map(|p| p.peer.to_string()).collect();
            let expected: BTreeSet<String> = model.keys().map(|k| k.to_string()).collect();
            prop_assert_eq!(known, expected);
        }
    }
    Ok(())
}
