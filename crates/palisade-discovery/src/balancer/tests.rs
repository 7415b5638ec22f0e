//! The peer set against a reference model: random insertions, removals and
//! observations; after each, every view (pickable, not ready, policy
//! candidates), every count and the probe queue's head agree with the slots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::peer::{Availability, PeerId, Unavailable};
use proptest::prelude::*;
use tokio::time::Instant;

use super::cell::{Inbox, Observed, PeerCell};
use super::driver::Waiters;
use super::eject::EjectionBudget;
use super::set::{Category, Joining, PeerSet};
use crate::future::PeerStats;
use crate::health::Readiness;
use crate::load::LoadMetric;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u8),
    Remove(u8),
    Observe(u8, u8, Option<u8>),
    PopDue(u64),
    PopHead,
}

fn availability(code: u8) -> Availability {
    match code % 6 {
        0 => Availability::Available,
        5 => Availability::Degraded,
        1 => Availability::Probe,
        2 => Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in: Duration::from_millis(u64::from(code) * 37),
        },
        3 => Availability::Unavailable {
            reason: Unavailable::ProbesBusy,
            retry_in: Duration::ZERO,
        },
        _ => Availability::Unavailable {
            reason: Unavailable::Other,
            retry_in: Duration::from_millis(u64::from(code) * 11),
        },
    }
}

fn readiness(code: u8) -> Readiness {
    match code % 3 {
        0 => Readiness::Ready,
        1 => Readiness::NotReady,
        _ => Readiness::Failed,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..24u8, any::<u8>()).prop_map(|(k, a)| Op::Insert(k, a)),
        1 => (0..24u8).prop_map(Op::Remove),
        5 => (0..24u8, any::<u8>(), proptest::option::of(any::<u8>())).prop_map(|(k, a, r)| Op::Observe(k, a, r)),
        1 => (0..5_000u64).prop_map(Op::PopDue),
        1 => Just(Op::PopHead),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_view_and_count_stays_true(ops in proptest::collection::vec(op(), 1..200)) {
        let inbox = Arc::new(Inbox::new(Arc::new(Waiters::default())));
        let budget = Arc::new(EjectionBudget::new(None));
        let mut set: PeerSet<u8, ()> = PeerSet::default();
        let mut model: BTreeMap<u8, (Availability, Readiness)> = BTreeMap::new();
        let start = Instant::now();
        let mut serial = 0;
        for op in ops {
            let now = start + Duration::from_millis(u64::from(serial as u8) * 3);
            match op {
                Op::Insert(k, a) => {
                    serial += 1;
                    let cell = set.cell_of(&k).unwrap_or_else(|| PeerCell::new(serial, &inbox, &budget));
                    let joining = Joining { service: (), weight: 1 + u32::from(a % 3), cell, notifies: true, availability: availability(a), at: now };
                    set.insert(k, PeerId::new(k.to_string()), joining, || Arc::new(PeerStats::new(LoadMetric::PendingRequests)));
                    model.insert(k, (availability(a), Readiness::Ready));
                }
                Op::Remove(k) => {
                    let removed = set.remove(&k);
                    prop_assert_eq!(removed.is_some(), model.remove(&k).is_some());
                }
                Op::Observe(k, a, r) => {
                    if let Some(cell) = set.cell_of(&k) {
                        let observed = Observed { availability: Some((availability(a), now)), readiness: r.map(readiness), refused_policy: a % 7 == 0, reported: a % 2 == 0 };
                        set.apply(cell.index(), observed, now);
                        let entry = model.get_mut(&k).unwrap();
                        entry.0 = availability(a);
                        if let Some(r) = r { entry.1 = readiness(r); }
                    }
                }
                Op::PopDue(ms) => {
                    if let Some(i) = set.pop_due(start + Duration::from_millis(ms)) {
                        set.requeue(i);
                    }
                }
                Op::PopHead => {
                    if let Some(i) = set.pop_head() {
                        set.requeue(i);
                    }
                }
            }
            if let Err(e) = set.check() {
                prop_assert!(false, "{}", e);
            }
            prop_assert_eq!(set.len(), model.len());
            let pickable = model.values().filter(|(a, r)| a.is_available() && *a != Availability::Probe && *r == Readiness::Ready).count();
            let available = model.values().filter(|(a, r)| *a == Availability::Available && *r == Readiness::Ready).count();
            let degraded = model.values().filter(|(a, r)| *a == Availability::Degraded && *r == Readiness::Ready).count();
            prop_assert_eq!(set.pickable().len(), pickable);
            prop_assert_eq!(set.counts().get(Category::Available), available);
            prop_assert_eq!(set.counts().get(Category::Degraded), degraded);
            let open = model.values().filter(|(a, r)| *r != Readiness::Failed && matches!(a, Availability::Unavailable { reason: Unavailable::Open, .. })).count();
            prop_assert_eq!(set.counts().get(Category::Open), open);
        }
    }
}
