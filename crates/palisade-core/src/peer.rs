//! Peers: their identity, the record of which peers a call has tried, and how
//! per-peer middleware tells a balancer whether a peer may be picked.

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
    peers: Arc<Mutex<Vec<PeerId>>>,
}

impl AttemptRecord {
    /// An empty record, before the first attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new record holding `peers`, shared with nobody.
    pub fn from_peers(peers: impl IntoIterator<Item = PeerId>) -> Self {
        Self {
            peers: Arc::new(Mutex::new(peers.into_iter().collect())),
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
        self.peers.lock().clone()
    }

    /// How many attempts recorded a peer.
    pub fn len(&self) -> usize {
        self.peers.lock().len()
    }

    /// Whether no attempt has recorded a peer yet.
    pub fn is_empty(&self) -> bool {
        self.peers.lock().is_empty()
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
        f.debug_tuple("AttemptRecord").field(&*self.peers.lock()).finish()
    }
}

impl PartialEq for AttemptRecord {
    fn eq(&self, other: &Self) -> bool {
        self.same_record(other) || *self.peers.lock() == *other.peers.lock()
    }
}

impl Eq for AttemptRecord {}

/// Whether a peer may be picked now, as its per-peer middleware sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Availability {
    /// The peer takes calls normally (a closed breaker).
    Available,
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
    /// Whether a balancer may pick the peer now.
    pub fn is_available(&self) -> bool {
        !matches!(self, Availability::Unavailable { .. })
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
/// Asking may move state forward: an open breaker whose cooldown has passed
/// answers [`Availability::Probe`] and is half-open from then on, so a peer
/// that nobody calls still gets its probe.
pub trait CheckAvailability {
    /// Whether this peer may be picked now.
    fn availability(&self) -> Availability;
}

impl<T: CheckAvailability + ?Sized> CheckAvailability for Arc<T> {
    fn availability(&self) -> Availability {
        (**self).availability()
    }
}

impl<T: CheckAvailability + ?Sized> CheckAvailability for &T {
    fn availability(&self) -> Availability {
        (**self).availability()
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

    #[test]
    fn only_unavailable_is_unavailable() {
        assert!(Availability::Available.is_available());
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
