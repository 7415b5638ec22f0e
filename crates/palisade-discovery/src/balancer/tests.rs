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
                        let observed = Observed { availability: Some((availability(a), now)), readiness: r.map(readiness), refused_policy: a % 7 == 0, reported: a % 2 == 0, woken: false };
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

/// An empty peer set with what its peers' cells need.
struct Fixture {
    inbox: Arc<Inbox>,
    budget: Arc<EjectionBudget>,
    set: PeerSet<u8, ()>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            inbox: Arc::new(Inbox::new(Arc::new(Waiters::default()))),
            budget: Arc::new(EjectionBudget::new(None)),
            set: PeerSet::default(),
        }
    }

    /// Adds peer `key` (weight 1, reporting its changes), answering
    /// `availability` at `at`.
    fn add(&mut self, key: u8, availability: Availability, at: Instant) {
        let joining = Joining {
            service: (),
            weight: 1,
            cell: PeerCell::new(u64::from(key), &self.inbox, &self.budget),
            notifies: true,
            availability,
            at,
        };
        self.set.insert(key, PeerId::new(format!("p{key}")), joining, || {
            Arc::new(PeerStats::new(LoadMetric::PendingRequests))
        });
    }
}

/// A reported change to `availability` at `at`.
fn reported(availability: Availability, at: Instant) -> Observed {
    Observed {
        availability: Some((availability, at)),
        readiness: None,
        refused_policy: false,
        reported: true,
        woken: false,
    }
}

/// A peer that opens with the very instant its earlier state was due at
/// (a busy peer's recheck) gets its entry in the open-probe queue too: its
/// probe-queue entry stays the same, so only the state changed.
#[test]
fn a_peer_opening_at_its_earlier_due_instant_is_in_the_open_probe_queue() {
    let mut fixture = Fixture::new();
    let start = Instant::now();
    let busy = Availability::Unavailable {
        reason: Unavailable::Other,
        retry_in: Duration::from_millis(1_000),
    };
    fixture.add(7, busy, start);
    let set = &mut fixture.set;
    assert_eq!(set.next_open_due(), None);
    // 400 ms later it opens for 600 ms: due at the same instant as before.
    let now = start + Duration::from_millis(400);
    let open = Availability::Unavailable {
        reason: Unavailable::Open,
        retry_in: Duration::from_millis(600),
    };
    let cell = set.cell_of(&7).expect("inserted");
    set.apply(cell.index(), reported(open, now), now);
    assert_eq!(set.next_open_due(), Some(start + Duration::from_millis(1_000)));
    set.check().expect("every view and count true");
}

/// The everyday pick (equal weights, no attempt record) takes two distinct
/// peers from one draw, and every ordered pair comes up: no peer is favoured
/// by where it sits in the pickable list. Then a degraded peer loses to a
/// healthy one whichever it was drawn as.
#[test]
fn the_uniform_pick_draws_every_pair_of_distinct_peers() {
    let mut fixture = Fixture::new();
    let start = Instant::now();
    for k in 0..5u8 {
        fixture.add(k, Availability::Available, start);
    }
    let set = &mut fixture.set;
    fastrand::seed(7);
    let mut seen = [[0u32; 5]; 5];
    for _ in 0..2_000 {
        let (a, b) = super::choose::two(set, None);
        let b = b.expect("five pickable peers give two candidates");
        assert_ne!(a, b, "two candidates are two peers");
        seen[a][b] += 1;
    }
    for (a, row) in seen.iter().enumerate() {
        for (b, &n) in row.iter().enumerate() {
            if a != b {
                // 100 expected per pair.
                assert!(n > 50, "pair ({a}, {b}) drawn {n} times in 2,000");
            }
        }
    }
    let cell = set.cell_of(&3).expect("inserted");
    set.apply(cell.index(), reported(Availability::Degraded, start), start);
    set.check().expect("every view and count true");
    for _ in 0..500 {
        let (a, b) = super::choose::two(set, None);
        assert_ne!(a, cell.index(), "a degraded peer never wins over a healthy one");
        assert!(b.is_some());
    }
}

/// The request path against the probe queue: random availability changes,
/// clients that are not ready, peers that refuse early probes, time passing
/// and calls, through a real balancer with the probe-now policy (and the
/// others). After every step, once the inbox is applied, every peer that is
/// not plainly available has its live entry in the probe queue: no call
/// pops a peer without sending it the call or queueing it again.
mod request_path {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Waker};

    use futures::channel::mpsc;
    use palisade_core::peer::{CheckAvailability, FleetMembership, Memberships};
    use palisade_core::protocol::Plain;
    use parking_lot::Mutex;
    use tower::discover::Change;
    use tower_service::Service;

    use super::*;
    use crate::balancer::Balancer;
    use crate::config::{AllOpenPolicy, Settings};
    use crate::peer::PeerWeight;

    struct Ctl {
        availability: Mutex<Availability>,
        ready: AtomicBool,
        forced: AtomicBool,
        waker: Mutex<Option<Waker>>,
        fleet: Memberships,
    }

    #[derive(Clone)]
    struct Mock(Arc<Ctl>);

    impl Ctl {
        fn set(&self, a: Availability) {
            *self.availability.lock() = a;
            self.fleet.notify(a);
        }
    }

    impl CheckAvailability for Mock {
        fn availability(&self) -> Availability {
            *self.0.availability.lock()
        }
        fn join_fleet(&self, membership: FleetMembership) -> bool {
            self.0.fleet.join(membership);
            true
        }
        fn request_probe(&self) -> bool {
            if self.0.forced.load(Ordering::SeqCst) {
                return false;
            }
            let now = *self.0.availability.lock();
            match now {
                Availability::Unavailable {
                    reason: Unavailable::Open,
                    ..
                } => {
                    self.0.set(Availability::Probe);
                    true
                }
                other => other.is_available(),
            }
        }
        fn reset_open(&self) -> bool {
            if self.0.forced.load(Ordering::SeqCst) {
                return false;
            }
            self.0.set(Availability::Available);
            true
        }
    }

    impl PeerWeight for Mock {}

    impl Service<()> for Mock {
        type Response = ();
        type Error = Infallible;
        type Future = Ready<Result<(), Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                *self.0.waker.lock() = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn call(&mut self, (): ()) -> Self::Future {
            // Like a breaker: a probe admitted takes the slot.
            let mut a = self.0.availability.lock();
            if *a == Availability::Probe {
                *a = Availability::Unavailable {
                    reason: Unavailable::ProbesBusy,
                    retry_in: Duration::ZERO,
                };
            }
            ready(Ok(()))
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Set(u8, u8),
        Ready(u8, bool),
        Forced(u8, bool),
        Call,
        Advance(u16),
        Remove(u8),
        Insert(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..8u8, any::<u8>()).prop_map(|(k, a)| Step::Set(k, a)),
            2 => (0..8u8, any::<bool>()).prop_map(|(k, r)| Step::Ready(k, r)),
            1 => (0..8u8, any::<bool>()).prop_map(|(k, f)| Step::Forced(k, f)),
            6 => Just(Step::Call),
            2 => (0..3_000u16).prop_map(Step::Advance),
            1 => (0..8u8).prop_map(Step::Remove),
            1 => (0..8u8).prop_map(Step::Insert),
        ]
    }

    fn policy() -> impl Strategy<Value = AllOpenPolicy> {
        prop_oneof![
            3 => Just(AllOpenPolicy::ProbeNow),
            1 => Just(AllOpenPolicy::Reset),
            1 => Just(AllOpenPolicy::FailFast),
        ]
    }

    type Discover = futures::stream::Map<
        mpsc::UnboundedReceiver<Change<u8, Mock>>,
        fn(Change<u8, Mock>) -> Result<Change<u8, Mock>, Infallible>,
    >;

    fn ok(change: Change<u8, Mock>) -> Result<Change<u8, Mock>, Infallible> {
        Ok(change)
    }

    fn run(steps: Vec<Step>, policy: AllOpenPolicy) -> Result<(), TestCaseError> {
        use futures::StreamExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _guard = rt.enter();
        let (tx, rx) = mpsc::unbounded();
        let discover: Discover = rx.map(ok as fn(_) -> _);
        let settings = Settings {
            all_open: policy,
            max_ejected_share: None,
            ..Settings::default()
        };
        let balancer = Balancer::new(discover, Arc::new(settings));
        let ctls: Vec<Arc<Ctl>> = (0..8)
            .map(|_| {
                Arc::new(Ctl {
                    availability: Mutex::new(Availability::Available),
                    ready: AtomicBool::new(true),
                    forced: AtomicBool::new(false),
                    waker: Mutex::new(None),
                    fleet: Memberships::new(),
                })
            })
            .collect();
        for (k, c) in ctls.iter().enumerate().take(4) {
            let _ = tx.unbounded_send(Change::Insert(k as u8, Mock(c.clone())));
        }
        let mut pending = VecDeque::new();
        for step in steps {
            match step {
                Step::Set(k, a) => ctls[usize::from(k)].set(super::availability(a)),
                Step::Ready(k, r) => {
                    let c = &ctls[usize::from(k)];
                    c.ready.store(r, Ordering::SeqCst);
                    if r && let Some(w) = c.waker.lock().take() {
                        w.wake();
                    }
                }
                Step::Forced(k, f) => ctls[usize::from(k)].forced.store(f, Ordering::SeqCst),
                Step::Call => {
                    balancer.drive_discover();
                    balancer.apply_inbox();
                    balancer.poll_not_ready::<()>();
                    balancer.apply_inbox();
                    // With probe-now, when no peer is pickable and none is
                    // busy, a peer that would take an early probe (open or
                    // half-open with a free slot, not refusing, client
                    // ready) must get the call.
                    let must_serve = policy == AllOpenPolicy::ProbeNow && {
                        let set = balancer.set.read();
                        set.pickable().is_empty()
                            && set.counts().get(Category::NotReady) == 0
                            && (0..8u8).any(|k| {
                                let c = &ctls[usize::from(k)];
                                set.cell_of(&k)
                                    .is_some_and(|cell| set.is_policy_candidate(cell.index()))
                                    && !c.forced.load(Ordering::SeqCst)
                                    && c.ready.load(Ordering::SeqCst)
                                    && matches!(
                                        *c.availability.lock(),
                                        Availability::Probe
                                            | Availability::Unavailable {
                                                reason: Unavailable::Open,
                                                ..
                                            }
                                    )
                            })
                    };
                    match balancer.call(&Plain, ()) {
                        Ok(sent) => pending.push_back(sent),
                        Err(error) => prop_assert!(!must_serve, "a peer could take an early probe: {}", error),
                    }
                }
                Step::Advance(ms) => rt.block_on(tokio::time::advance(Duration::from_millis(u64::from(ms)))),
                Step::Remove(k) => {
                    let _ = tx.unbounded_send(Change::Remove(k));
                }
                Step::Insert(k) => {
                    let _ = tx.unbounded_send(Change::Insert(k, Mock(ctls[usize::from(k)].clone())));
                }
            }
            // A call's result comes back later: its in-flight guard is
            // dropped once a few calls have passed.
            while pending.len() > 3 {
                pending.pop_front();
            }
            balancer.drive_discover();
            balancer.apply_inbox();
            let set = balancer.set.read();
            if let Err(e) = set.check() {
                prop_assert!(false, "after {:?}: {}", step, e);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn no_peer_leaves_the_probe_queue_without_a_pending_probe(
            steps in proptest::collection::vec(step(), 1..120),
            policy in policy(),
        ) {
            run(steps, policy)?;
        }
    }
}
