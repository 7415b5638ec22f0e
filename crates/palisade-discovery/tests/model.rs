//! Proptest against a reference model: random Insert/Remove/availability/
//! readiness changes and calls. The balancer never picks an unavailable peer
//! while an available one exists, prefers peers outside the attempt record,
//! fails only when no peer is available (after its all-open policy acted),
//! waits in `poll_ready` only when every available peer is busy, and never
//! loses or invents a peer. Peers report their changes (as a breaker does),
//! or not at all (followed lazily, with a weaker promise).
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
use palisade_discovery::{AllOpenPolicy, PeerDiscoveryLayer};
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

/// Without readiness changes, and for the early probe without busy probe
/// slots, so that what the all-open policy does is exactly predictable.
fn policy_op(keys: u8, busy: bool) -> impl Strategy<Value = Op> {
    let states = if busy {
        state().boxed()
    } else {
        prop_oneof![Just(State::Available), Just(State::Probe), Just(State::Open)].boxed()
    };
    prop_oneof![
        2 => (0..keys).prop_map(Op::Insert),
        1 => (0..keys).prop_map(Op::Remove),
        3 => (0..keys, states).prop_map(|(k, s)| Op::Set(k, s)),
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
        run(ops, AllOpenPolicy::FailFast)?;
    }

    /// More peers than random draws reach.
    #[test]
    fn the_same_with_many_peers(ops in proptest::collection::vec(op(64), 1..300)) {
        run(ops, AllOpenPolicy::FailFast)?;
    }

    /// Peers that never report: still never an unavailable pick, never a lost peer.
    #[test]
    fn peers_that_never_report_are_never_picked_while_unavailable(ops in proptest::collection::vec(op(16), 1..200)) {
        run_with(ops, AllOpenPolicy::FailFast, true)?;
    }

    /// Every peer open: the breakers are reset and the call goes through.
    #[test]
    fn with_the_reset_policy_a_fleet_of_open_peers_serves_at_once(ops in proptest::collection::vec(policy_op(16, true), 1..200)) {
        run(ops, AllOpenPolicy::Reset)?;
    }

    /// Every peer open: the call is an early probe of one of them.
    #[test]
    fn with_the_probe_now_policy_a_fleet_of_open_peers_serves_at_once(ops in proptest::collection::vec(policy_op(16, false), 1..200)) {
        run(ops, AllOpenPolicy::ProbeNow)?;
    }
}

fn run(ops: Vec<Op>, policy: AllOpenPolicy) -> Result<(), TestCaseError> {
    run_with(ops, policy, false)
}

/// `silent`: the peers never report (the balancer follows them lazily): it
/// still never picks an unavailable peer nor loses one, but it may fail a
/// call while a peer that recovered silently waits for its recheck.
fn run_with(ops: Vec<Op>, policy: AllOpenPolicy, silent: bool) -> Result<(), TestCaseError> {
    {
        let (tx, discover) = channel_discover();
        let mut lb = PeerDiscoveryLayer::builder()
            .protocol(HttpRequests)
            .all_open(policy)
            .build()
            .unwrap()
            .layer(discover);
        let mut model: BTreeMap<u8, ModelPeer> = BTreeMap::new();
        let mut cx = Context::from_waker(Waker::noop());
        for op in ops {
            match op {
                Op::Insert(k) => {
                    let ctl = if silent {
                        Ctl::silent(&k.to_string())
                    } else {
                        Ctl::new(&k.to_string())
                    };
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
                    let available = |model: &BTreeMap<u8, ModelPeer>| -> BTreeSet<u8> {
                        model
                            .iter()
                            .filter(|(_, p)| p.ready && p.state.is_available())
                            .map(|(k, _)| *k)
                            .collect()
                    };
                    let before = available(&model);
                    let busy_clients = model.values().any(|p| !p.ready && p.state == State::Available);
                    if Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_pending() {
                        // Back-pressure: only when every available peer's
                        // client is busy.
                        prop_assert!(
                            silent || (before.is_empty() && busy_clients),
                            "waited while {before:?} available"
                        );
                        continue;
                    }
                    let mut fut = lb.call(req);
                    let Poll::Ready(result) = poll_once(&mut fut) else {
                        panic!("pending response")
                    };
                    // What the all-open policy did to the fakes.
                    let mut acted = false;
                    if before.is_empty() && !busy_clients {
                        for p in model.values_mut() {
                            let now = *p.ctl.availability.lock();
                            let state = match now {
                                Availability::Available => State::Available,
                                Availability::Probe => State::Probe,
                                Availability::Unavailable {
                                    reason: Unavailable::Open,
                                    ..
                                } => State::Open,
                                _ => State::Busy,
                            };
                            acted |= state != p.state;
                            p.state = state;
                        }
                    }
                    let after = available(&model);
                    let candidates = if before.is_empty() { &after } else { &before };
                    let fresh: BTreeSet<u8> = candidates.iter().copied().filter(|k| !used.contains(k)).collect();
                    if silent {
                        if let Ok(name) = &result {
                            let k: u8 = name.parse().unwrap();
                            prop_assert!(before.contains(&k), "picked {k}, available {before:?}");
                        }
                        continue;
                    }
                    match result {
                        Ok(name) => {
                            let k: u8 = name.parse().unwrap();
                            prop_assert!(
                                candidates.contains(&k) || (acted && model[&k].state != State::Open),
                                "picked {k}, available {candidates:?}"
                            );
                            if !before.is_empty() && !fresh.is_empty() {
                                prop_assert!(fresh.contains(&k), "picked used peer {k}, fresh {fresh:?}");
                            }
                            if policy != AllOpenPolicy::FailFast && before.is_empty() {
                                prop_assert!(acted, "the policy gave a call to {k} without acting");
                            }
                        }
                        Err(e) => {
                            prop_assert!(before.is_empty(), "failed with {e} while {before:?} available");
                            let none = e.downcast_ref::<NoAvailablePeers>().unwrap();
                            prop_assert_eq!(none.known(), model.len());
                            let open = model.values().filter(|p| p.state == State::Open).count();
                            match policy {
                                AllOpenPolicy::FailFast => {}
                                // A reset leaves no open peer behind...
                                AllOpenPolicy::Reset => prop_assert!(
                                    busy_clients || open == 0,
                                    "{open} peers still open after a reset: {e}"
                                ),
                                // ...and an early probe finds one when there is.
                                _ => prop_assert!(
                                    busy_clients || open == 0,
                                    "no early probe though {open} peers are open: {e}"
                                ),
                            }
                        }
                    }
                }
            }
            if Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_pending() {
                let waiting_is_right = !model.values().any(|p| p.ready && p.state.is_available())
                    && model.values().any(|p| !p.ready && p.state == State::Available);
                prop_assert!(
                    silent || waiting_is_right,
                    "poll_ready waited with a peer to take the call"
                );
            }
            let known: BTreeSet<String> = lb.health().peers.iter().map(|p| p.peer.to_string()).collect();
            let expected: BTreeSet<String> = model.keys().map(|k| k.to_string()).collect();
            prop_assert_eq!(known, expected);
        }
    }
    Ok(())
}
