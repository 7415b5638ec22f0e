//! The balancer over real per-peer circuit breakers (in-process services, so
//! that a fleet of 10,000 is cheap): the breakers report their transitions,
//! and the balancer's probe queue follows them through an operator's
//! force-open and reset.
#![allow(clippy::disallowed_types, missing_docs)]

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};
use palisade_core::BoxError;
use palisade_core::backoff::Jitter;
use palisade_discovery::{AllOpenPolicy, PeerDiscovery, PeerDiscoveryLayer, PeerState, Weighted};
use tower::discover::Change;
use tower::{Layer, Service};

/// Answers its index, or fails when asked to.
#[derive(Clone, Copy)]
struct Numbered(usize);

impl Service<bool> for Numbered {
    type Response = usize;
    type Error = BoxError;
    type Future = Ready<Result<usize, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, fail: bool) -> Self::Future {
        std::future::ready(if fail { Err("boom".into()) } else { Ok(self.0) })
    }
}

type Peer = CircuitBreaker<Numbered>;
type Discover = futures::stream::Iter<std::vec::IntoIter<Result<Change<usize, Weighted<Peer>>, Infallible>>>;

const COOLDOWN: Duration = Duration::from_secs(5);

/// `n` peers, each behind its own breaker; returns the balancer and the peers
/// (clones share their breaker's state).
fn fleet(n: usize, policy: AllOpenPolicy) -> (PeerDiscovery<Discover>, Vec<Peer>) {
    let layer = CircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(3)
            .cooldown(COOLDOWN)
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    );
    let peers: Vec<Peer> = (0..n)
        .map(|i| layer.for_peer(format!("p{i}")).layer(Numbered(i)))
        .collect();
    let changes: Vec<_> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Ok(Change::Insert(i, Weighted::new(p.clone(), 1))))
        .collect();
    // These tests trip several of a few peers: without the ejection cap
    // (tested in `fleet_never_worse.rs`), which would keep all but one of
    // four in rotation.
    let lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(policy)
        .no_ejection_cap()
        .build()
        .unwrap()
        .layer(futures::stream::iter(changes));
    (lb, peers)
}

async fn call(lb: &mut PeerDiscovery<Discover>) -> Result<usize, BoxError> {
    use tower::ServiceExt;
    lb.ready().await?.call(false).await
}

/// Trips `peer`'s breaker by calling it directly (its clone in the balancer
/// shares the state).
async fn trip(peer: &mut Peer) -> CircuitBreakerHandle {
    for _ in 0..3 {
        assert!(peer.call(true).await.is_err());
    }
    assert_eq!(peer.handle().state(), CircuitState::Open);
    peer.handle()
}

// Issue 14, item 5: a peer forced open and then reset kept a probe time a
// year out in the probe queue, so when it tripped again its probe was found
// only by random draws (1 in 10,000 per draw here).
#[tokio::test(start_paused = true)]
async fn a_peer_forced_open_reset_and_tripped_again_gets_its_probe_on_time() {
    let (mut lb, mut peers) = fleet(10_000, AllOpenPolicy::FailFast);
    call(&mut lb).await.unwrap();
    let handle = peers[42].handle();
    handle.force_open();
    for _ in 0..20 {
        assert_ne!(call(&mut lb).await.unwrap(), 42, "a forced-open peer got a call");
    }
    handle.reset();
    trip(&mut peers[42]).await;
    for _ in 0..20 {
        assert_ne!(call(&mut lb).await.unwrap(), 42, "an open peer got a call");
    }
    tokio::time::advance(COOLDOWN).await;
    assert_eq!(call(&mut lb).await.unwrap(), 42, "the probe due now went elsewhere");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // Its second probe follows on the next call (the first came back), and
    // it closes.
    assert_eq!(call(&mut lb).await.unwrap(), 42);
    assert_eq!(handle.state(), CircuitState::Closed);
    let health = lb.health();
    let p42 = health.peer(&"42".into()).unwrap();
    assert_eq!(p42.state, PeerState::Available);
}

#[tokio::test(start_paused = true)]
async fn the_health_report_says_until_when_a_peer_is_open_and_counts_by_state() {
    let (mut lb, mut peers) = fleet(4, AllOpenPolicy::FailFast);
    call(&mut lb).await.unwrap();
    let opened_at = tokio::time::Instant::now();
    trip(&mut peers[0]).await;
    trip(&mut peers[1]).await;
    tokio::time::advance(COOLDOWN).await;
    peers[3].handle().force_open();
    let health = lb.health();
    let state = |i: usize| health.peer(&i.to_string().as_str().into()).unwrap().state;
    // Asking moves p0 and p1 to half-open (their cooldown passed).
    assert_eq!(state(0), PeerState::Probing { slot_free: true });
    assert_eq!(state(2), PeerState::Available);
    match state(3) {
        PeerState::Open { until } => assert!(until > opened_at + Duration::from_secs(86_400)),
        other => panic!("forced open shows as {other:?}"),
    }
    let counts = health.counts();
    assert_eq!(
        (counts.known, counts.available, counts.open, counts.probing),
        (4, 1, 1, 2)
    );
    let text = health.to_string();
    assert!(
        text.contains("probing (probe due)") && text.contains("open until +"),
        "{text}"
    );
}
