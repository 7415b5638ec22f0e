//! Peers: their identity, the record of which peers a call has tried, and how
//! per-peer middleware tells a balancer whether a peer may be picked — when
//! asked ([`CheckAvailability`]) and as it changes ([`FleetMembership`]) —
//! asks the balancer whether it may leave rotation at all (the fleet's
//! ejection cap, [`FleetMembership::request_ejection`]), and lets a balancer
//! whose peers are all open ask for an early probe or a reset.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The identity of one peer (one instance of a service): usually its address.
///
/// Cloning is cheap (a reference count), so a `PeerId` can be recorded per
/// attempt and carried in errors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Arc<str>);

impl PeerId {
    /// A peer named `id`.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The peer's name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PeerId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for PeerId {
    fn from(id: String) -> Self {
        Self(Arc::from(id))
    }
}

impl From<SocketAddr> for PeerId {
    fn from(addr: SocketAddr) -> Self {
        Self(Arc::from(addr.to_string()))
    }
}

/// The peers that earlier attempts of one call used, in order.
///
/// The retry layer puts an empty record in the request's extensions before the
/// first attempt; the balancer adds the peer it picked for each attempt and,
/// on a retry, avoids the peers already in the record while another peer is
/// available. The record travels in [`http::Extensions`] (see
/// [`CallOptionsExt`](crate::options::CallOptionsExt)), so a balancer finds it
/// on any attempt of an http or tonic call.
///
/// A record is a handle to the record of one call: clones share it. Each
/// attempt of a retried call is a copy of the request, and the copy's
/// extensions hold a clone of the handle, so what the balancer records on an
/// attempt that then fails (a refused connection, a timeout) is seen by the
/// retry layer and carried to the next attempt. Use
/// [`AttemptRecord::from_peers`] for an independent record.
#[derive(Clone, Default)]
pub struct AttemptRecord {
    peers: Arc<Mutex<Peers>>,
}

/// The peers of one record, oldest first: the first inline (most calls make
/// one attempt, and recording it allocates nothing), the others in a vector
/// that only a retry fills.
#[derive(Clone, Default, PartialEq, Eq)]
struct Peers {
    first: Option<PeerId>,
    /// Empty while `first` is `None`.
    rest: Vec<PeerId>,
}

impl Peers {
    fn push(&mut self, peer: PeerId) {
        if self.first.is_none() {
            self.first = Some(peer);
        } else {
            self.rest.push(peer);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &PeerId> {
        self.first.iter().chain(&self.rest)
    }

    fn last(&self) -> Option<&PeerId> {
        self.rest.last().or(self.first.as_ref())
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

impl AttemptRecord {
    /// An empty record, before the first attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new record holding `peers`, shared with nobody.
    pub fn from_peers(peers: impl IntoIterator<Item = PeerId>) -> Self {
        Self {
            peers: Arc::new(Mutex::new(peers.into_iter().fold(Peers::default(), |mut all, peer| {
                all.push(peer);
                all
            }))),
        }
    }

    /// Records that the current attempt went to `peer`. A peer already last in
    /// the record is not recorded twice (the balancer and the retry layer may
    /// both name it).
    pub fn record(&self, peer: PeerId) {
        let mut peers = self.peers.lock();
        if peers.last() != Some(&peer) {
            peers.push(peer);
        }
    }

    /// Whether an earlier attempt of this call used `peer`.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.lock().iter().any(|p| p == peer)
    }

    /// The peers used so far, oldest first.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.lock().iter().cloned().collect()
    }

    /// How many attempts recorded a peer.
    pub fn len(&self) -> usize {
        self.peers.lock().len()
    }

    /// Whether no attempt has recorded a peer yet.
    pub fn is_empty(&self) -> bool {
        self.peers.lock().first.is_none()
    }

    /// The peer the latest attempt used.
    pub fn last(&self) -> Option<PeerId> {
        self.peers.lock().last().cloned()
    }

    /// Whether `self` and `other` are handles to the same record.
    pub fn same_record(&self, other: &AttemptRecord) -> bool {
        Arc::ptr_eq(&self.peers, &other.peers)
    }
}

impl fmt::Debug for AttemptRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers = self.peers.lock();
        f.debug_tuple("AttemptRecord")
            .field(&peers.iter().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for AttemptRecord {
    fn eq(&self, other: &Self) -> bool {
        self.same_record(other) || *self.peers.lock() == *other.peers.lock()
    }
}

impl Eq for AttemptRecord {}

/// Whether a peer may be picked now, as its per-peer middleware sees it.
///
/// What [`CheckAvailability::availability`] answers, and what per-peer
/// middleware reports through [`FleetMembership::notify`] when it changes.
/// Non-exhaustive: a balancer treats a value it does not know as
/// unavailable, so new states can be added without breaking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Availability {
    /// The peer takes calls normally (a closed breaker).
    Available,
    /// The peer takes calls, but it is failing: its breaker would have
    /// opened, and stays closed only because the fleet's ejection cap
    /// refused ([`FleetMembership::request_ejection`]): "open but kept". A
    /// balancer keeps it in rotation and prefers any peer that is not
    /// degraded.
    Degraded,
    /// The peer takes one probe call now (a half-open breaker with a free probe
    /// slot). A balancer may pick it; the call it sends is the probe.
    Probe,
    /// Do not pick the peer now. `retry_in` says when it may become available
    /// again (zero when it depends on calls in flight, such as busy probe slots).
    Unavailable {
        /// Why the peer is unavailable.
        reason: Unavailable,
        /// How long until the peer may be picked again.
        retry_in: Duration,
    },
}

impl Availability {
    /// Whether a balancer may pick the peer now (a degraded peer may be picked).
    pub fn is_available(&self) -> bool {
        !matches!(self, Availability::Unavailable { .. })
    }

    /// Whether the peer is [`Degraded`](Availability::Degraded): in rotation,
    /// but failing.
    pub fn is_degraded(&self) -> bool {
        matches!(self, Availability::Degraded)
    }
}

/// Why a peer is [`Availability::Unavailable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unavailable {
    /// The breaker is open and its cooldown has not passed.
    Open,
    /// The breaker is half-open and every probe slot is in use.
    ProbesBusy,
    /// Another per-peer reason (a full per-peer bulkhead, a user policy).
    Other,
}

/// Implemented by per-peer middleware (the circuit breaker) so that a balancer
/// can skip a peer without calling it and without depending on the middleware.
///
/// Only [`availability`](Self::availability) is required; the other methods
/// have defaults, so any per-peer service can sit behind a balancer. A
/// breaker implements them all, which lets a balancer
///
/// - keep its set of available peers exact without asking every peer on
///   every pick ([`join_fleet`](Self::join_fleet): the peer reports each of
///   its transitions to the balancer),
/// - recover a fleet whose peers are all open at once, by asking for an early
///   probe ([`request_probe`](Self::request_probe)) or resetting the breaker
///   ([`reset_open`](Self::reset_open)).
///
/// Asking may move state forward: an open breaker whose cooldown has passed
/// answers [`Availability::Probe`] and is half-open from then on, so a peer
/// that nobody calls still gets its probe.
pub trait CheckAvailability {
    /// Whether this peer may be picked now.
    fn availability(&self) -> Availability;

    /// Joins a balancer's fleet: from now on the peer reports every change of
    /// its availability to `membership` ([`FleetMembership::notify`]), after
    /// releasing its own locks. Returns whether it will.
    ///
    /// A balancer calls this when the peer joins its set (and again when the
    /// peer's service is replaced, with the same membership: joining twice
    /// with one membership must not report twice). A peer that returns
    /// `false` (the default) is followed lazily instead: the balancer learns
    /// its availability when it draws it and looks again at an unavailable
    /// peer when the `retry_in` it gave has passed.
    ///
    /// What a peer must report: every transition between available, probe
    /// (a free probe slot) and unavailable, with the new
    /// [`Availability`]; and [`Availability::Probe`] again whenever a probe
    /// slot comes free while it stays half-open. It need not report a probe
    /// slot being taken: the balancer looks again at a peer whose probe it sent.
    fn join_fleet(&self, membership: FleetMembership) -> bool {
        let _ = membership;
        false
    }

    /// Asks for an early probe: an open breaker moves to half-open now,
    /// without waiting for its cooldown, respecting its probe limit. Returns
    /// whether the peer takes a call now (a free probe slot, or a closed
    /// breaker). A breaker forced open by an operator refuses.
    ///
    /// The default refuses (`false`): a peer without a breaker has nothing to
    /// probe early.
    fn request_probe(&self) -> bool {
        false
    }

    /// Resets an open (or half-open) breaker to closed, with fresh counters and
    /// its base cooldown, as the seed system does when every peer of a service
    /// is open. Returns whether the peer takes calls now. A breaker forced
    /// open by an operator refuses.
    ///
    /// The default refuses (`false`).
    fn reset_open(&self) -> bool {
        false
    }
}

impl<T: CheckAvailability + ?Sized> CheckAvailability for Arc<T> {
    fn availability(&self) -> Availability {
        (**self).availability()
    }

    fn join_fleet(&self, membership: FleetMembership) -> bool {
        (**self).join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        (**self).request_probe()
    }

    fn reset_open(&self) -> bool {
        (**self).reset_open()
    }
}

impl<T: CheckAvailability + ?Sized> CheckAvailability for &T {
    fn availability(&self) -> Availability {
        (**self).availability()
    }

    fn join_fleet(&self, membership: FleetMembership) -> bool {
        (**self).join_fleet(membership)
    }

    fn request_probe(&self) -> bool {
        (**self).request_probe()
    }

    fn reset_open(&self) -> bool {
        (**self).reset_open()
    }
}

/// The balancer's side of a [`FleetMembership`]: where one peer's
/// availability changes arrive.
///
/// Implemented by balancers (`palisade-discovery` implements it per peer).
/// It is called by per-peer middleware on whatever thread made the change,
/// possibly inside the balancer's own call to the peer, so it must be cheap,
/// must not block and must not call back into the peer: a balancer records
/// the change (say, in an atomic and a bounded queue) and applies it later.
pub trait AvailabilitySink: Send + Sync + 'static {
    /// The peer's availability is now `availability`.
    fn availability_changed(&self, availability: Availability);

    /// Whether the balancer still counts the peer as a member. A peer may
    /// forget a membership that is no longer active (the balancer removed it).
    fn is_active(&self) -> bool {
        true
    }

    /// The peer's breaker is about to open (to leave rotation): may it? A
    /// balancer with an ejection cap grants it while fewer than its share of
    /// peers are out, and refuses once the share is taken; the peer then
    /// stays in rotation, [`Availability::Degraded`]. A grant is held until
    /// [`release_ejection`](Self::release_ejection) (or until the peer
    /// leaves the set); asking again while holding one is granted at no
    /// extra cost. Like every method here it must not block: atomics only.
    ///
    /// The default grants everything (no cap).
    fn request_ejection(&self) -> bool {
        true
    }

    /// The peer is back in rotation (its breaker closed, was reset or forced
    /// closed): gives back its grant, if it holds one. Idempotent.
    fn release_ejection(&self) {}
}

/// A peer's membership of one balancer's fleet: what the balancer hands the
/// peer when it joins ([`CheckAvailability::join_fleet`]), and what the peer
/// reports its availability changes through.
///
/// Cheap to clone (a reference count). Per-peer middleware keeps its
/// memberships and calls [`notify`](Self::notify) on each after every
/// transition, once its own locks are released.
///
/// It also carries the one fleet-wide question a peer asks: whether it may
/// leave rotation at all ([`request_ejection`](Self::request_ejection)),
/// which a balancer answers from its ejection cap, so that a failure of the
/// whole fleet cannot take the whole fleet out.
#[derive(Clone)]
pub struct FleetMembership {
    sink: Arc<dyn AvailabilitySink>,
}

impl FleetMembership {
    /// A membership reporting to `sink`.
    pub fn new(sink: Arc<dyn AvailabilitySink>) -> Self {
        Self { sink }
    }

    /// Reports that the peer's availability is now `availability`.
    #[inline]
    pub fn notify(&self, availability: Availability) {
        self.sink.availability_changed(availability);
    }

    /// Whether the balancer still counts the peer as a member.
    pub fn is_active(&self) -> bool {
        self.sink.is_active()
    }

    /// Asks whether the peer may leave rotation (see
    /// [`AvailabilitySink::request_ejection`]).
    pub fn request_ejection(&self) -> bool {
        self.sink.request_ejection()
    }

    /// Gives back the peer's ejection grant, if it holds one (see
    /// [`AvailabilitySink::release_ejection`]).
    pub fn release_ejection(&self) {
        self.sink.release_ejection();
    }

    /// Whether `self` and `other` are the same membership (clones of one).
    pub fn same_membership(&self, other: &FleetMembership) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.sink), Arc::as_ptr(&other.sink))
    }
}

impl fmt::Debug for FleetMembership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetMembership")
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// The memberships one peer reports to: usually one balancer, sometimes
/// none (the peer is used standalone) or several (clones of one per-peer
/// service behind several balancers).
///
/// A small copy-on-write list for per-peer middleware: joining copies the
/// list (rare), notifying reads a snapshot without holding a lock while the
/// balancers are called, and allocates nothing.
#[derive(Default)]
pub struct Memberships {
    list: Mutex<Option<Arc<[FleetMembership]>>>,
}

impl Memberships {
    /// No memberships.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `membership` unless it is there already; drops the memberships
    /// whose balancer no longer counts the peer.
    pub fn join(&self, membership: FleetMembership) {
        let mut list = self.list.lock();
        let current = list.as_deref().unwrap_or(&[]);
        if current.iter().any(|m| m.same_membership(&membership)) {
            return;
        }
        let mut next: Vec<FleetMembership> = current.iter().filter(|m| m.is_active()).cloned().collect();
        next.push(membership);
        *list = Some(next.into());
    }

    /// Reports `availability` to every membership. The lock is held only to
    /// copy the list's reference, never while a balancer is called.
    pub fn notify(&self, availability: Availability) {
        let snapshot = self.list.lock().clone();
        if let Some(list) = snapshot {
            for membership in list.iter() {
                membership.notify(availability);
            }
        }
    }

    /// Asks every membership whether the peer may leave rotation: granted
    /// when all of them grant it (no membership: granted). When one refuses,
    /// the grants of the others are given back, so a refused request holds
    /// nothing. For a peer that holds no grant (a closed breaker); the lock
    /// is held only to copy the list's reference.
    pub fn request_ejection(&self) -> bool {
        let snapshot = self.list.lock().clone();
        let Some(list) = snapshot else { return true };
        for (i, membership) in list.iter().enumerate() {
            if !membership.request_ejection() {
                for granted in &list[..i] {
                    granted.release_ejection();
                }
                return false;
            }
        }
        true
    }

    /// Gives back the peer's grant in every membership (idempotent).
    pub fn release_ejection(&self) {
        let snapshot = self.list.lock().clone();
        if let Some(list) = snapshot {
            for membership in list.iter() {
                membership.release_ejection();
            }
        }
    }

    /// How many memberships there are.
    pub fn len(&self) -> usize {
        self.list.lock().as_ref().map_or(0, |l| l.len())
    }

    /// Whether the peer belongs to no fleet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Memberships {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memberships").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_of_a_record_share_it() {
        let record = AttemptRecord::new();
        let attempt_copy = record.clone();
        attempt_copy.record(PeerId::from("a:1"));
        attempt_copy.record(PeerId::from("a:1"));
        assert_eq!(record.peers(), [PeerId::from("a:1")], "seen through the original, once");
        assert!(record.same_record(&attempt_copy));
        let independent = AttemptRecord::from_peers(record.peers());
        independent.record(PeerId::from("b:1"));
        assert_eq!(record.len(), 1);
        assert!(!independent.same_record(&record));
    }

    #[test]
    fn attempt_record_remembers_peers_in_order() {
        let record = AttemptRecord::new();
        assert!(record.is_empty());
        record.record(PeerId::from("a:1"));
        record.record("127.0.0.1:80".parse::<SocketAddr>().unwrap().into());
        assert_eq!(record.len(), 2);
        assert!(record.contains(&PeerId::from("127.0.0.1:80")));
        assert!(!record.contains(&PeerId::from("b:1")));
        assert_eq!(record.last(), Some(PeerId::from("127.0.0.1:80")));
    }

    /// The first peer is held inline and the others after it: order, last,
    /// length, repeats and equality are the same on both sides of that seam.
    #[test]
    fn a_record_past_its_inline_peer_keeps_order_and_equality() {
        let ids = ["a:1", "b:1", "a:1", "c:1"].map(PeerId::from);
        let record = AttemptRecord::new();
        assert_eq!(record.last(), None);
        for id in &ids {
            record.record(id.clone());
            assert_eq!(record.last().as_ref(), Some(id));
        }
        record.record(PeerId::from("c:1"));
        assert_eq!(record.peers(), ids, "a repeat of the last peer is not recorded");
        assert_eq!(record.len(), 4);
        assert!(!record.is_empty());
        assert!(record.contains(&PeerId::from("b:1")));
        assert_eq!(AttemptRecord::from_peers(ids.clone()), record);
        assert_ne!(AttemptRecord::from_peers(ids[..3].to_vec()), record);
        assert_eq!(format!("{record:?}"), format!("AttemptRecord({ids:?})"));
    }

    #[derive(Default)]
    struct Sink {
        seen: Mutex<Vec<Availability>>,
        inactive: std::sync::atomic::AtomicBool,
    }

    impl AvailabilitySink for Sink {
        fn availability_changed(&self, availability: Availability) {
            self.seen.lock().push(availability);
        }

        fn is_active(&self) -> bool {
            !self.inactive.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn memberships_report_once_each_and_forget_inactive_balancers() {
        let (a, b) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
        let ma = FleetMembership::new(a.clone());
        let memberships = Memberships::new();
        assert!(memberships.is_empty());
        memberships.join(ma.clone());
        // The same membership again (a replaced service re-joining): once.
        memberships.join(ma.clone());
        memberships.join(FleetMembership::new(b.clone()));
        assert_eq!(memberships.len(), 2);
        let open = Availability::Unavailable {
            reason: Unavailable::Open,
            retry_in: Duration::from_secs(10),
        };
        memberships.notify(open);
        assert_eq!(*a.seen.lock(), [open]);
        assert_eq!(*b.seen.lock(), [open]);
        // Balancer `a` removed the peer: the next join forgets it.
        a.inactive.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(!ma.is_active());
        memberships.join(FleetMembership::new(Arc::new(Sink::default())));
        assert_eq!(memberships.len(), 2);
        memberships.notify(Availability::Available);
        assert_eq!(a.seen.lock().len(), 1, "an inactive membership was forgotten");
        assert_eq!(*b.seen.lock(), [open, Availability::Available]);
        assert!(ma.same_membership(&ma.clone()));
        assert!(!ma.same_membership(&FleetMembership::new(b)));
    }

    /// A sink with a budget of `left` grants.
    struct Budget {
        left: std::sync::atomic::AtomicUsize,
        held: std::sync::atomic::AtomicBool,
    }

    impl Budget {
        fn new(left: usize) -> Arc<Self> {
            Arc::new(Self {
                left: left.into(),
                held: false.into(),
            })
        }
    }

    impl AvailabilitySink for Budget {
        fn availability_changed(&self, _: Availability) {}

        fn request_ejection(&self) -> bool {
            use std::sync::atomic::Ordering::SeqCst;
            if self.held.load(SeqCst) {
                return true;
            }
            let granted = self.left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
            self.held.store(granted, SeqCst);
            granted
        }

        fn release_ejection(&self) {
            use std::sync::atomic::Ordering::SeqCst;
            if self.held.swap(false, SeqCst) {
                self.left.fetch_add(1, SeqCst);
            }
        }
    }

    #[test]
    fn an_ejection_is_granted_by_every_membership_or_by_none() {
        use std::sync::atomic::Ordering::SeqCst;
        let memberships = Memberships::new();
        assert!(memberships.request_ejection(), "a standalone peer may always open");
        let (roomy, full) = (Budget::new(1), Budget::new(0));
        memberships.join(FleetMembership::new(roomy.clone()));
        memberships.join(FleetMembership::new(full.clone()));
        assert!(!memberships.request_ejection(), "one balancer refuses");
        assert_eq!(roomy.left.load(SeqCst), 1, "the other's grant was given back");
        full.left.store(1, SeqCst);
        assert!(memberships.request_ejection());
        assert_eq!((roomy.left.load(SeqCst), full.left.load(SeqCst)), (0, 0));
        memberships.release_ejection();
        memberships.release_ejection();
        assert_eq!(
            (roomy.left.load(SeqCst), full.left.load(SeqCst)),
            (1, 1),
            "released once"
        );
        // The default sink has no cap.
        assert!(FleetMembership::new(Arc::new(Sink::default())).request_ejection());
    }

    #[test]
    fn the_defaults_refuse_what_only_a_breaker_can_do() {
        struct Plain;
        impl CheckAvailability for Plain {
            fn availability(&self) -> Availability {
                Availability::Available
            }
        }
        let sink = FleetMembership::new(Arc::new(Sink::default()));
        assert!(!Plain.join_fleet(sink.clone()), "a plain peer is followed lazily");
        assert!(!Plain.request_probe());
        assert!(!Plain.reset_open());
        let shared = Arc::new(Plain);
        assert!(!shared.join_fleet(sink));
        let by_ref: &Plain = &shared;
        assert!(!<&Plain as CheckAvailability>::request_probe(&by_ref));
    }

    #[test]
    fn only_unavailable_is_unavailable() {
        assert!(Availability::Available.is_available());
        assert!(Availability::Degraded.is_available());
        assert!(Availability::Degraded.is_degraded());
        assert!(!Availability::Available.is_degraded());
        assert!(Availability::Probe.is_available());
        assert!(
            !Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in: Duration::from_secs(1)
            }
            .is_available()
        );
    }
}
