//! The balancer's behaviour, over fake per-peer services.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use common::*;
use palisade_core::error::NoAvailablePeers;
use palisade_core::event::{Event, EventKind};
use palisade_core::options::CallOptionsExt;
use palisade_core::peer::{AttemptRecord, Availability, PeerId, Unavailable};
use palisade_discovery::{AllOpenPolicy, PeerDiscovery, PeerDiscoveryLayer, Readiness};
use tower::discover::Change;
use tower_layer::Layer;

type Balancer = PeerDiscovery<ChannelDiscover<Peer>>;

fn balancer(ctls: &[Arc<Ctl>]) -> (tokio::sync::mpsc::UnboundedSender<Change<String, Peer>>, Balancer) {
    let (tx, discover) = channel_discover();
    for c in ctls {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    (tx, PeerDiscovery::new(discover))
}

#[test]
fn spreads_calls_over_available_peers_only() {
    let peers: Vec<_> = ["a", "b", "c"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    peers[1].open(Duration::from_secs(5));
    let mut seen = HashMap::new();
    for _ in 0..300 {
        let name = call_now(&mut lb, ()).unwrap();
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(peers[1].calls(), 0, "an open peer must get no call");
    assert!(seen["a"] > 50 && seen["c"] > 50, "{seen:?}");
    assert_eq!(lb.len(), 3, "the open peer stays known");
}

#[tokio::test(start_paused = true)]
async fn no_available_peers_fails_from_call_with_counts() {
    let peers: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    peers[0].open(Duration::from_secs(5));
    peers[1].open(Duration::from_secs(2));
    peers[2].set(Availability::Unavailable {
        reason: Unavailable::ProbesBusy,
        retry_in: Duration::ZERO,
    });
    peers[3].set_ready(false);
    let err = call_now(&mut lb, ()).unwrap_err();
    let none = err.downcast_ref::<NoAvailablePeers>().expect("NoAvailablePeers");
    assert_eq!(
        (none.known(), none.open(), none.probing(), none.excluded()),
        (4, 2, 1, 1),
        "{none}"
    );
    assert_eq!(none.next_probe_in(), Some(Duration::from_secs(2)));
    assert!(peers.iter().all(|p| p.calls() == 0));
    // The breaker's cooldown passes: the peer answers Probe and gets the call.
    peers[1].set(Availability::Probe);
    assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
}

#[test]
fn empty_set_fails_fast_and_poll_ready_never_fails() {
    let (_tx, mut lb) = balancer(&[]);
    let err = call_now(&mut lb, ()).unwrap_err();
    let none = err.downcast_ref::<NoAvailablePeers>().unwrap();
    assert_eq!(none.known(), 0);
}

#[test]
fn a_peer_due_for_its_probe_is_picked_first() {
    let peers: Vec<_> = (0..50).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let (_tx, mut lb) = balancer(&peers);
    // Warm up so that every peer is known.
    call_now(&mut lb, ()).unwrap();
    // Each time a breaker goes half-open, the very next call is its probe:
    // not one call in 25 (two draws in 50), as plain p2c would give it.
    for k in [7, 19, 33, 48, 0] {
        peers[k].open(Duration::from_secs(5));
        assert_ne!(call_now(&mut lb, ()).unwrap(), format!("p{k}"));
        peers[k].set(Availability::Probe);
        assert_eq!(
            call_now(&mut lb, ()).unwrap(),
            format!("p{k}"),
            "the probe went elsewhere"
        );
        peers[k].set(Availability::Available);
    }
}

fn http_request(record: &AttemptRecord) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.attempt_record_mut() = record.clone();
    req
}

#[test]
fn a_retry_avoids_the_peers_of_earlier_attempts_and_records_its_own() {
    let peers: Vec<_> = ["a", "b", "c"].iter().map(|n| Ctl::new(n)).collect();
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    let mut lb = PeerDiscoveryLayer::builder()
        .protocol(HttpRequests)
        .build()
        .unwrap()
        .layer(discover);
    for _ in 0..200 {
        let record = AttemptRecord::new();
        record.record(PeerId::from("a"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(tower_service::Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
        let req = http_request(&record);
        let mut fut = tower_service::Service::call(&mut lb, req);
        let Poll::Ready(Ok(name)) = poll_once(&mut fut) else {
            panic!("call failed")
        };
        assert_ne!(name, "a", "a retry landed on the peer that just failed");
    }
    assert_eq!(peers[0].calls(), 0);
    // With only the excluded peer available, it is used rather than failing.
    peers[1].open(Duration::from_secs(1));
    peers[2].open(Duration::from_secs(1));
    let record = AttemptRecord::new();
    record.record(PeerId::from("a"));
    let req = http_request(&record);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(tower_service::Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
    let mut fut = tower_service::Service::call(&mut lb, req);
    assert_eq!(poll_once(&mut fut).map(Result::unwrap), Poll::Ready("a".to_owned()));
}

#[test]
fn the_chosen_peer_is_recorded_in_the_attempt_record() {
    use std::task::{Context, Waker};
    // A peer that hands back the record it saw.
    #[derive(Clone)]
    struct Echo;
    impl tower_service::Service<http::Request<()>> for Echo {
        type Response = Vec<PeerId>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Vec<PeerId>, std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(req.attempt_record().map(|r| r.peers().to_vec()).unwrap_or_default()))
        }
    }
    let (tx, discover) = channel_discover();
    tx.send(Change::Insert(
        "only".to_owned(),
        palisade_discovery::AlwaysAvailable::new(Echo),
    ))
    .unwrap();
    let mut lb = PeerDiscoveryLayer::builder()
        .protocol(HttpRequests)
        .build()
        .unwrap()
        .layer(discover);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(tower_service::Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
    let mut req = http::Request::new(());
    req.attempt_record_mut();
    let mut fut = tower_service::Service::call(&mut lb, req);
    let Poll::Ready(Ok(seen)) = poll_once(&mut fut) else {
        panic!()
    };
    assert_eq!(seen, vec![PeerId::from("only")]);
}

#[test]
fn a_peer_that_is_not_ready_is_skipped_not_evicted() {
    let peers: Vec<_> = ["a", "b"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    peers[0].set_ready(false);
    for _ in 0..50 {
        assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
    }
    let health = lb.health();
    assert_eq!(health.peers.len(), 2);
    assert_eq!(health.peer(&PeerId::from("a")).unwrap().readiness, Readiness::NotReady);
    // It becomes ready: the next poll_ready re-polls it and it takes calls again.
    peers[0].set_ready(true);
    let mut a = 0;
    for _ in 0..100 {
        if call_now(&mut lb, ()).unwrap() == "a" {
            a += 1;
        }
    }
    assert!(a > 10, "a ready-again peer must come back, got {a} calls");
}

#[test]
fn a_peer_whose_client_failed_stays_known_until_replaced() {
    let peers: Vec<_> = ["a", "b"].iter().map(|n| Ctl::new(n)).collect();
    let (tx, mut lb) = balancer(&peers);
    peers[0].fail_ready.store(true, Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
    }
    let health = lb.health();
    let a = health.peer(&PeerId::from("a")).unwrap();
    assert_eq!(a.readiness, Readiness::Failed);
    assert_eq!(a.last_error.as_deref(), Some("peer down"));
    // Replaced by the discover with a fresh client: picked again.
    let fresh = Ctl::new("a");
    tx.send(Change::Insert("a".into(), Peer(fresh.clone()))).unwrap();
    for _ in 0..100 {
        call_now(&mut lb, ()).unwrap();
    }
    assert!(fresh.calls() > 10);
    assert_eq!(lb.len(), 2);
}

#[test]
fn removed_peers_finish_in_flight_calls_and_are_freed() {
    let a = Ctl::new("a");
    a.hold.store(true, Ordering::SeqCst);
    let (tx, mut lb) = balancer(std::slice::from_ref(&a));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut cx).is_ready());
    let mut fut = tower_service::Service::call(&mut lb, ());
    assert!(poll_once(&mut fut).is_pending());
    assert_eq!(lb.health().peers[0].in_flight, 1);
    tx.send(Change::Remove("a".into())).unwrap();
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut cx).is_ready());
    assert_eq!(lb.len(), 0);
    // Only the in-flight call still holds the peer's service state.
    a.release_all();
    assert_eq!(poll_once(&mut fut).map(Result::unwrap), Poll::Ready("a".to_owned()));
    drop(fut);
    // The fake's control block is now referenced only by this test.
    assert_eq!(Arc::strong_count(&a), 1, "the removed peer's service leaked");
}

#[test]
fn repeated_insert_replaces_without_leaking() {
    let (tx, mut lb) = balancer(&[]);
    let mut old = Vec::new();
    for i in 0..20 {
        let c = Ctl::new(&format!("gen{i}"));
        tx.send(Change::Insert("k".into(), Peer(c.clone()))).unwrap();
        old.push(c);
    }
    assert_eq!(call_now(&mut lb, ()).unwrap(), "gen19");
    assert_eq!(lb.len(), 1);
    for c in &old[..19] {
        assert_eq!(Arc::strong_count(c), 1, "a replaced service leaked");
    }
}

#[test]
fn the_less_loaded_of_two_wins() {
    let a = Ctl::new("a");
    let b = Ctl::new("b");
    a.hold.store(true, Ordering::SeqCst);
    let (_tx, mut lb) = balancer(&[a.clone(), b.clone()]);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut pending = Vec::new();
    // Load "a" with held calls; "b" answers at once.
    for _ in 0..100 {
        assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut cx).is_ready());
        let mut fut = tower_service::Service::call(&mut lb, ());
        if poll_once(&mut fut).is_pending() {
            pending.push(fut);
        }
    }
    // With two peers every pick compares both: a held call on "a" sends all
    // further calls to "b" until it ends.
    assert_eq!(a.calls(), 1, "calls piled on the loaded peer");
    assert_eq!(b.calls(), 99);
    a.release_all();
    drop(pending);
    assert_eq!(lb.health().peer(&PeerId::from("a")).unwrap().in_flight, 0);
}

#[test]
fn weights_are_honoured() {
    let heavy = Ctl::weighted("heavy", 3);
    let light = Ctl::weighted("light", 1);
    let (_tx, mut lb) = balancer(&[heavy.clone(), light.clone()]);
    for _ in 0..4000 {
        call_now(&mut lb, ()).unwrap();
    }
    let share = heavy.calls() as f64 / 4000.0;
    assert!((0.68..0.82).contains(&share), "heavy peer got {share}");
}

/// 10 peers, 7 open: 30% available. With `threshold`, retries naming p9 go
/// to p9 how many times in 300?
fn retries_to_the_used_peer(threshold: Option<f64>) -> usize {
    let peers: Vec<_> = (0..10).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    let mut builder = PeerDiscoveryLayer::builder().protocol(HttpRequests);
    if let Some(t) = threshold {
        builder = builder.panic_threshold(t);
    }
    let mut lb = builder.build().unwrap().layer(discover);
    call_now(&mut lb, http::Request::new(())).unwrap();
    for p in &peers[..7] {
        p.open(Duration::from_secs(5));
    }
    let mut to_p9 = 0;
    for _ in 0..300 {
        let record = AttemptRecord::new();
        record.record(PeerId::from("p9"));
        let name = call_now(&mut lb, http_request(&record)).unwrap();
        assert!(["p7", "p8", "p9"].contains(&name.as_str()), "an open peer got {name}");
        to_p9 += usize::from(name == "p9");
    }
    let refused: usize = peers.iter().map(|p| p.refused.load(Ordering::SeqCst)).sum();
    assert_eq!(refused, 0, "a call went to an open peer");
    to_p9
}

#[test]
fn below_the_panic_threshold_the_attempt_record_stops_excluding_peers() {
    // No panic mode: two fresh peers are left, the retry never goes back.
    assert_eq!(retries_to_the_used_peer(None), 0);
    // 30% available is above a 20% threshold: still excluded.
    assert_eq!(retries_to_the_used_peer(Some(0.2)), 0);
    // Below a 50% threshold the record no longer excludes: the retries
    // spread over all three available peers (about a third each).
    let panicked = retries_to_the_used_peer(Some(0.5));
    assert!((50..200).contains(&panicked), "{panicked} of 300 retries went to p9");
    let err = PeerDiscoveryLayer::builder()
        .plain()
        .panic_threshold(1.5)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "panic_threshold");
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_cooldown_passed_is_probed_on_the_next_call_among_many() {
    let peers: Vec<_> = (0..10_000).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(AllOpenPolicy::FailFast)
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, ()).unwrap();
    // Every peer is seen open once (a scan), then all but one recover while
    // p42 stays open until its cooldown passes (the others' queue entries,
    // due later, go stale).
    for p in &peers {
        p.open(Duration::from_secs(60));
    }
    peers[42].open(Duration::from_secs(5));
    let err = call_now(&mut lb, ()).unwrap_err();
    assert!(err.downcast_ref::<NoAvailablePeers>().is_some());
    for p in &peers {
        p.set(Availability::Available);
    }
    peers[42].open(Duration::from_secs(5));
    for _ in 0..10 {
        call_now(&mut lb, ()).unwrap();
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    peers[42].set(Availability::Probe);
    // Due now: the very next call is its probe, not a 1-in-10,000 draw.
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p42");
    assert_eq!(peers[42].refused.load(Ordering::SeqCst), 0);
    // The probe failed: the breaker opens again. The balancer checks back on
    // a probed peer, sees the new cooldown and probes again when it ends.
    peers[42].open(Duration::from_secs(5));
    for _ in 0..10 {
        assert_ne!(call_now(&mut lb, ()).unwrap(), "p42");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ne!(call_now(&mut lb, ()).unwrap(), "p42");
    tokio::time::advance(Duration::from_secs(5)).await;
    peers[42].set(Availability::Probe);
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p42");
    // It recovered: closed, it leaves the queue and gets its share by draws.
    peers[42].set(Availability::Available);
    tokio::time::advance(Duration::from_secs(1)).await;
    call_now(&mut lb, ()).unwrap();
}

#[test]
fn clones_and_the_health_report_share_one_set_and_events_are_emitted() {
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = events.clone();
    let (tx, discover) = channel_discover();
    let a = Ctl::new("a");
    tx.send(Change::Insert("a".into(), Peer(a.clone()))).unwrap();
    let lb = PeerDiscoveryLayer::builder()
        .plain()
        .service_name("echo")
        .listener(Arc::new(move |e: &Event<'_>| {
            log.lock().push((e.kind.name(), e.peer.map(|p| p.to_string())));
        }))
        .build()
        .unwrap()
        .layer(discover);
    let mut clone = lb.clone();
    assert_eq!(call_now(&mut clone, ()).unwrap(), "a");
    assert_eq!(lb.len(), 1, "a clone's discovery is seen by the original");
    tx.send(Change::Remove("a".into())).unwrap();
    let err = call_now(&mut clone, ()).unwrap_err();
    assert!(
        err.to_string().starts_with("no available peers for echo: 0 known"),
        "{err}"
    );
    let events = events.lock();
    assert_eq!(
        events[..2],
        [
            ("peer_added", Some("a".to_owned())),
            ("peer_removed", Some("a".to_owned()))
        ]
    );
    assert_eq!(events[2].0, "rejected");
    assert!(matches!(EventKind::PeerAdded.name(), "peer_added"));
}

mod http_bodies {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use palisade_core::protocol::Grpc;
    use std::task::{Context, Waker};
    use tokio::sync::mpsc;

    type Frames = mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, std::io::Error>>;
    type Body = StreamBody<futures::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, std::io::Error>>>;

    /// A peer whose responses stream their body from a channel the test holds.
    #[derive(Clone)]
    struct Streaming(Arc<parking_lot::Mutex<Vec<Frames>>>);

    impl tower_service::Service<http::Request<()>> for Streaming {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let (tx, rx) = mpsc::unbounded_channel();
            self.0.lock().push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            std::future::ready(Ok(http::Response::new(StreamBody::new(Box::pin(stream) as _))))
        }
    }

    #[tokio::test]
    async fn the_chosen_peer_is_named_on_the_response_of_a_call_with_a_record() {
        let (tx, discover) = channel_discover();
        let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
        tx.send(Change::Insert(
            "a".into(),
            palisade_discovery::AlwaysAvailable::new(Streaming(bodies)),
        ))
        .unwrap();
        let mut lb = PeerDiscoveryLayer::builder().grpc().build().unwrap().layer(discover);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(tower_service::Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
        let mut req = http::Request::new(());
        req.attempt_record_mut();
        let response = tower_service::Service::call(&mut lb, req).await.unwrap();
        assert_eq!(response.extensions().get::<PeerId>(), Some(&PeerId::from("a")));
        // Without a record (no retry layer above) nothing is added.
        let response = tower_service::Service::call(&mut lb, http::Request::new(()))
            .await
            .unwrap();
        assert!(response.extensions().get::<PeerId>().is_none());
    }

    #[tokio::test]
    async fn a_call_counts_as_in_flight_until_its_body_ends_or_is_dropped() {
        let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, discover) = channel_discover();
        tx.send(Change::Insert(
            "a".into(),
            palisade_discovery::AlwaysAvailable::new(Streaming(bodies.clone())),
        ))
        .unwrap();
        let mut lb = PeerDiscoveryLayer::builder().grpc().build().unwrap().layer(discover);
        let in_flight = |lb: &PeerDiscovery<_, Grpc>| lb.health().peers[0].in_flight;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(tower_service::Service::<http::Request<()>>::poll_ready(&mut lb, &mut cx).is_ready());
        let response = tower_service::Service::call(&mut lb, http::Request::new(()))
            .await
            .unwrap();
        // Headers arrived; the body has not ended: still in flight.
        assert_eq!(in_flight(&lb), 1);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        {
            let senders = bodies.lock();
            senders[0]
                .send(Ok(http_body::Frame::data(Bytes::from_static(b"x"))))
                .unwrap();
            senders[0].send(Ok(http_body::Frame::trailers(trailers))).unwrap();
        }
        bodies.lock().clear();
        let collected = response.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(in_flight(&lb), 0);
        assert_eq!(lb.health().peers[0].successes, 1);

        // A body dropped half-read releases the count too (ignored outcome).
        let response = tower_service::Service::call(&mut lb, http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(in_flight(&lb), 1);
        drop(response);
        assert_eq!(in_flight(&lb), 0);
        // And a response future dropped before it completed (cancellation).
        let (tx2, discover2) = channel_discover();
        let held = Ctl::new("h");
        held.hold.store(true, Ordering::SeqCst);
        tx2.send(Change::Insert("h".into(), Peer(held.clone()))).unwrap();
        let mut lb2 = PeerDiscovery::new(discover2);
        assert!(tower_service::Service::<()>::poll_ready(&mut lb2, &mut cx).is_ready());
        let fut = tower_service::Service::call(&mut lb2, ());
        assert_eq!(lb2.health().peers[0].in_flight, 1);
        drop(fut);
        assert_eq!(lb2.health().peers[0].in_flight, 0);
        assert_eq!(lb.health().peers[0].successes, 1);
    }
}

mod peak_ewma {
    use super::*;
    use palisade_discovery::{AlwaysAvailable, LoadMetric};
    use std::task::Context;

    /// A peer that answers its name after `delay`.
    #[derive(Clone)]
    struct Slow(&'static str, Duration);

    impl tower_service::Service<()> for Slow {
        type Response = &'static str;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<&'static str, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            let (name, delay) = (self.0, self.1);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(name)
            })
        }
    }

    async fn share_of_fast(metric: LoadMetric) -> f64 {
        use tower::{Service, ServiceExt};
        let (tx, discover) = channel_discover();
        tx.send(Change::Insert(
            "slow".into(),
            AlwaysAvailable::new(Slow("slow", Duration::from_millis(200))),
        ))
        .unwrap();
        tx.send(Change::Insert(
            "fast".into(),
            AlwaysAvailable::new(Slow("fast", Duration::from_millis(2))),
        ))
        .unwrap();
        let mut lb = PeerDiscoveryLayer::builder()
            .plain()
            .load(metric)
            .build()
            .unwrap()
            .layer(discover);
        let mut fast = 0;
        for _ in 0..200 {
            if lb.ready().await.unwrap().call(()).await.unwrap() == "fast" {
                fast += 1;
            }
        }
        f64::from(fast) / 200.0
    }

    /// Answers its head after `head`, then streams a body that ends (with
    /// `grpc-status: 0` trailers) after `body`.
    #[derive(Clone)]
    struct Streamer(&'static str, Duration, Duration);

    type StreamBody = http_body_util::StreamBody<
        futures::stream::BoxStream<'static, Result<http_body::Frame<bytes::Bytes>, std::io::Error>>,
    >;

    impl tower_service::Service<http::Request<()>> for Streamer {
        type Response = http::Response<StreamBody>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let (name, head, body) = (self.0, self.1, self.2);
            Box::pin(async move {
                tokio::time::sleep(head).await;
                let frames = futures::stream::once(async move {
                    tokio::time::sleep(body).await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Ok(http_body::Frame::trailers(trailers))
                });
                let mut response =
                    http::Response::new(http_body_util::StreamBody::new(futures::StreamExt::boxed(frames)));
                response
                    .headers_mut()
                    .insert("x-peer", http::HeaderValue::from_static(name));
                Ok(response)
            })
        }
    }

    // A peer serving long streams answers its head at once: measured to the
    // head it is the faster one; measured to the end of its body (as before)
    // it looked 50 times slower and was starved.
    #[tokio::test(start_paused = true)]
    async fn peak_ewma_measures_latency_to_the_response_head() {
        use http_body_util::BodyExt;
        use tower::{Service, ServiceExt};
        let (tx, discover) = channel_discover();
        tx.send(Change::Insert(
            "streaming".into(),
            AlwaysAvailable::new(Streamer(
                "streaming",
                Duration::from_millis(1),
                Duration::from_millis(500),
            )),
        ))
        .unwrap();
        tx.send(Change::Insert(
            "short".into(),
            AlwaysAvailable::new(Streamer("short", Duration::from_millis(10), Duration::ZERO)),
        ))
        .unwrap();
        let mut lb = PeerDiscoveryLayer::builder()
            .grpc()
            .load(LoadMetric::peak_ewma())
            .build()
            .unwrap()
            .layer(discover);
        let mut streaming = 0;
        for _ in 0..100 {
            let response = lb.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
            streaming += usize::from(response.headers()["x-peer"] == "streaming");
            response.into_body().collect().await.unwrap();
        }
        assert!(
            streaming > 80,
            "the peer with the fast head got only {streaming} of 100 calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_sends_sequential_calls_to_the_faster_peer() {
        let ewma = share_of_fast(LoadMetric::peak_ewma()).await;
        assert!(ewma > 0.9, "peak-EWMA sent only {ewma} to the fast peer");
        // Pending requests cannot tell them apart one call at a time.
        let pending = share_of_fast(LoadMetric::PendingRequests).await;
        assert!((0.3..0.7).contains(&pending), "{pending}");
        let err = PeerDiscoveryLayer::builder()
            .plain()
            .load(LoadMetric::PeakEwma {
                default_rtt: Duration::from_millis(1),
                decay: Duration::ZERO,
            })
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "load");
    }
}

#[test]
fn availability_flips_are_emitted_as_state_changes() {
    let changes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = changes.clone();
    let (tx, discover) = channel_discover();
    let a = Ctl::new("a");
    tx.send(Change::Insert("a".into(), Peer(a.clone()))).unwrap();
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(AllOpenPolicy::FailFast)
        .listener(Arc::new(move |e: &Event<'_>| {
            if let EventKind::StateChange {
                from,
                to,
                reason,
                cooldown,
            } = e.kind
            {
                log.lock()
                    .push((e.peer.map(|p| p.to_string()), from, to, reason, cooldown.is_some()));
            }
        }))
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, ()).unwrap();
    a.open(Duration::from_secs(1));
    assert!(call_now(&mut lb, ()).is_err());
    // Half-open: the call is its probe (a probing peer is not "available"
    // until its breaker closes).
    a.set(Availability::Probe);
    call_now(&mut lb, ()).unwrap();
    a.set(Availability::Available);
    call_now(&mut lb, ()).unwrap();
    let a_id = Some("a".to_owned());
    assert_eq!(
        *changes.lock(),
        [
            (a_id.clone(), "available", "unavailable", "breaker open", true),
            (a_id, "unavailable", "available", "available", false)
        ]
    );
}

/// A discover fed by a channel of results: errors included.
struct FallibleDiscover(tokio::sync::mpsc::UnboundedReceiver<Result<Change<String, Peer>, PeerDown>>);

impl futures::Stream for FallibleDiscover {
    type Item = Result<Change<String, Peer>, PeerDown>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[test]
fn a_discover_error_does_not_end_discovery() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let a = Ctl::new("a");
    let b = Ctl::new("b");
    tx.send(Ok(Change::Insert("a".to_owned(), Peer(a.clone())))).unwrap();
    tx.send(Err(PeerDown)).unwrap();
    let mut lb = PeerDiscovery::new(FallibleDiscover(rx));
    assert_eq!(call_now(&mut lb, ()).unwrap(), "a");
    let health = lb.health();
    assert_eq!(health.discover_error.as_deref(), Some("peer down"));
    assert!(!health.discover_ended);
    // Changes after the error still arrive.
    tx.send(Ok(Change::Insert("b".to_owned(), Peer(b.clone())))).unwrap();
    tx.send(Ok(Change::Remove("a".to_owned()))).unwrap();
    assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
    assert_eq!(lb.len(), 1);
}

#[test]
fn a_listener_may_call_back_into_the_balancer() {
    use std::sync::OnceLock;
    let slot: Arc<OnceLock<Balancer>> = Arc::new(OnceLock::new());
    let seen = Arc::new(AtomicUsize::new(0));
    let (peek, count) = (slot.clone(), seen.clone());
    let (tx, discover) = channel_discover();
    let lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(AllOpenPolicy::FailFast)
        .listener(Arc::new(move |_: &Event<'_>| {
            // Before the fix this deadlocked: events were emitted under the lock.
            if let Some(lb) = peek.get() {
                count.fetch_add(lb.health().peers.len(), Ordering::SeqCst);
            }
        }))
        .build()
        .unwrap()
        .layer(discover);
    assert!(slot.set(lb.clone()).is_ok());
    let a = Ctl::new("a");
    tx.send(Change::Insert("a".into(), Peer(a.clone()))).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut lb2 = lb.clone();
    std::thread::spawn(move || {
        let answer = call_now(&mut lb2, ());
        // A rejection event too.
        a.open(Duration::from_secs(1));
        let rejected = call_now(&mut lb2, ()).is_err();
        let _ = done_tx.send((answer.ok(), rejected));
    });
    let (answer, rejected) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a listener calling health() deadlocked the balancer");
    assert_eq!(answer.as_deref(), Some("a"));
    assert!(rejected);
    assert!(seen.load(Ordering::SeqCst) >= 1);
}

#[test]
fn not_ready_peers_are_skipped_in_panic_mode_and_come_back_when_ready() {
    let peers: Vec<_> = (0..4).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    let mut lb = PeerDiscoveryLayer::builder()
        .panic_threshold(0.5)
        .protocol(HttpRequests)
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, http::Request::new(())).unwrap();
    // Three clients stop being ready: they are found out as they are picked.
    for p in &peers[..3] {
        p.set_ready(false);
    }
    for _ in 0..50 {
        assert_eq!(call_now(&mut lb, http::Request::new(())).unwrap(), "p3");
    }
    // 1 of 4 in the available set (not-ready peers leave it): a record
    // naming p3 does not keep the call from the only peer that can take it.
    let record = AttemptRecord::new();
    record.record(PeerId::from("p3"));
    assert_eq!(call_now(&mut lb, http_request(&record)).unwrap(), "p3");
    let health = lb.health();
    let not_ready = health.peers.iter().filter(|p| p.readiness != Readiness::Ready).count();
    assert_eq!(not_ready, 3);
    // Ready again: back in the sample and picked.
    for p in &peers[..3] {
        p.set_ready(true);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(call_now(&mut lb, http::Request::new(())).unwrap());
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// `n` peers behind a balancer with `policy`; every peer known.
fn fleet(n: usize, policy: AllOpenPolicy) -> (Vec<Arc<Ctl>>, Balancer) {
    let peers: Vec<_> = (0..n).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Peer(c.clone()))).unwrap();
    }
    std::mem::forget(tx);
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(policy)
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, ()).unwrap();
    (peers, lb)
}

fn asked(peers: &[Arc<Ctl>]) -> usize {
    peers.iter().map(|p| p.asked()).sum()
}

#[test]
fn a_pick_asks_a_bounded_number_of_peers_however_many_are_unavailable() {
    let (peers, mut lb) = fleet(10_000, AllOpenPolicy::FailFast);
    // 99.9% open (reported as they open): the 10 available are found at once.
    for p in &peers[10..] {
        p.open(Duration::from_secs(60));
    }
    for _ in 0..200 {
        let before = asked(&peers);
        let name = call_now(&mut lb, ()).unwrap();
        let n: usize = name[1..].parse().unwrap();
        assert!(n < 10, "an open peer got the call");
        // The winner is asked (no scan, no draw among the open ones).
        assert!(
            asked(&peers) - before <= 2,
            "a pick asked {} peers",
            asked(&peers) - before
        );
    }
    // All open: fail fast from counts, without asking anyone.
    for p in &peers[..10] {
        p.open(Duration::from_secs(60));
    }
    for _ in 0..100 {
        let before = asked(&peers);
        let err = call_now(&mut lb, ()).unwrap_err();
        let none = err.downcast_ref::<NoAvailablePeers>().unwrap();
        assert_eq!((none.known(), none.open()), (10_000, 10_000));
        assert_eq!(asked(&peers), before, "failing fast asked peers");
    }
}

#[tokio::test(start_paused = true)]
async fn every_peer_open_with_reset_the_breakers_are_reset_and_the_call_goes_through() {
    let (peers, mut lb) = fleet(3, AllOpenPolicy::Reset);
    for p in &peers {
        p.open(Duration::from_secs(10));
    }
    assert!(call_now(&mut lb, ()).is_ok(), "the seed's policy serves at once");
    assert!(peers.iter().all(|p| p.resets.load(Ordering::SeqCst) == 1));
    assert!(peers.iter().all(|p| *p.availability.lock() == Availability::Available));
    // Peers an operator forced open refuse: the call fails fast, and they are
    // not asked again on every call (the policy stays O(1) per call).
    for p in &peers {
        p.forced.store(true, Ordering::SeqCst);
        p.open(Duration::from_secs(365 * 86_400));
    }
    assert!(call_now(&mut lb, ()).is_err());
    let resets: usize = peers.iter().map(|p| p.resets.load(Ordering::SeqCst)).sum();
    for _ in 0..50 {
        assert!(call_now(&mut lb, ()).is_err());
    }
    assert_eq!(
        peers.iter().map(|p| p.resets.load(Ordering::SeqCst)).sum::<usize>(),
        resets
    );
    // Reset by the operator and tripped again: asked again.
    peers[1].forced.store(false, Ordering::SeqCst);
    peers[1].set(Availability::Available);
    peers[1].open(Duration::from_secs(10));
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p1");
}

#[tokio::test(start_paused = true)]
async fn every_peer_open_with_probe_now_the_call_probes_the_peer_due_soonest() {
    let (peers, mut lb) = fleet(3, AllOpenPolicy::ProbeNow);
    peers[0].open(Duration::from_secs(30));
    peers[1].open(Duration::from_secs(5));
    peers[2].open(Duration::from_secs(20));
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p1", "the probe due soonest goes first");
    let requested: Vec<usize> = peers.iter().map(|p| p.probe_requests.load(Ordering::SeqCst)).collect();
    assert_eq!(requested, [0, 1, 0]);
    assert!(peers.iter().all(|p| p.resets.load(Ordering::SeqCst) == 0));
    // The next call probes the next one (p1's probe slot is its own).
    peers[1].open(Duration::from_secs(10));
    assert_eq!(
        call_now(&mut lb, ()).unwrap(),
        "p1",
        "p1's new cooldown ends before p2's"
    );
    // Fail fast does nothing of the sort.
    let (peers, mut lb) = fleet(3, AllOpenPolicy::FailFast);
    for p in &peers {
        p.open(Duration::from_secs(10));
    }
    let err = call_now(&mut lb, ()).unwrap_err();
    assert_eq!(
        err.downcast_ref::<NoAvailablePeers>().unwrap().next_probe_in(),
        Some(Duration::from_secs(10))
    );
    assert!(
        peers
            .iter()
            .all(|p| p.probe_requests.load(Ordering::SeqCst) == 0 && p.resets.load(Ordering::SeqCst) == 0)
    );
}

#[test]
fn a_busy_client_is_back_pressure_not_no_available_peers() {
    use std::task::{Context, Wake, Waker};
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let peers: Vec<_> = ["a", "b"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    call_now(&mut lb, ()).unwrap();
    // Both clients fill up (a tonic channel's buffer): found out as picked.
    for p in &peers {
        p.set_ready(false);
    }
    assert!(call_now(&mut lb, ()).is_err());
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    // The caller now waits in poll_ready, as over a tower Buffer...
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut cx).is_pending());
    assert!(!flag.0.load(Ordering::SeqCst));
    // ...and is woken when a client has room again.
    peers[1].set_ready(true);
    assert!(flag.0.load(Ordering::SeqCst), "the waiting caller was not woken");
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut cx).is_ready());
    assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
}

#[test]
fn inserting_a_known_key_again_keeps_its_state_and_history() {
    let a = Ctl::new("a");
    let b = Ctl::new("b");
    let (tx, mut lb) = balancer(&[a.clone(), b.clone()]);
    call_now(&mut lb, ()).unwrap();
    a.hold.store(true, Ordering::SeqCst);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut fut = tower_service::Service::call(&mut lb, ());
        if poll_once(&mut fut).is_pending() {
            held.push(fut);
        }
    }
    let in_flight = lb.health().peer(&PeerId::from("a")).unwrap().in_flight;
    assert!(in_flight >= 1);
    a.open(Duration::from_secs(10));
    // The registry re-inserts a clone of the same per-peer service (a
    // metadata change): still open, same load counters.
    tx.send(Change::Insert("a".into(), Peer(a.clone()))).unwrap();
    for _ in 0..20 {
        assert_eq!(call_now(&mut lb, ()).unwrap(), "b");
    }
    let health = lb.health();
    let entry = health.peer(&PeerId::from("a")).unwrap();
    assert!(
        matches!(entry.state, palisade_discovery::PeerState::Open { .. }),
        "{health}"
    );
    assert_eq!(entry.in_flight, in_flight);
    assert_eq!(a.fleet.len(), 1, "joined once for both versions");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reports_is_followed_lazily() {
    let quiet = Ctl::silent("quiet");
    let (tx, discover) = channel_discover();
    tx.send(Change::Insert("quiet".into(), Peer(quiet.clone()))).unwrap();
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .all_open(AllOpenPolicy::FailFast)
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, ()).unwrap();
    // It opens without saying so: found out when picked, then looked at
    // again when the retry_in it gave has passed.
    quiet.open(Duration::from_secs(3));
    let lb_health = |lb: &Balancer| lb.health().counts();
    let _ = call_now(&mut lb, ());
    assert_eq!(lb_health(&lb).open, 1);
    quiet.set(Availability::Available);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(call_now(&mut lb, ()).unwrap(), "quiet");
}

// Review of issue 14's probe-now policy: a peer at the head of the probe
// queue that refuses the early probe (forced open) is set aside for this
// call, not popped again and again until the call's attempts are spent.
#[tokio::test(start_paused = true)]
async fn probe_now_is_not_stuck_on_a_refusing_peer_at_the_head_of_the_queue() {
    let (peers, mut lb) = fleet(3, AllOpenPolicy::ProbeNow);
    peers[0].forced.store(true, Ordering::SeqCst);
    peers[0].open(Duration::from_secs(1));
    peers[1].open(Duration::from_secs(10));
    peers[2].open(Duration::from_secs(20));
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p1", "{}", lb.health());
    assert_eq!(peers[0].probe_requests.load(Ordering::SeqCst), 1, "asked once");
    // The refusing peer is still queued at its own time: once its cooldown
    // ends (half-open, not reported), its probe goes out.
    peers[0].forced.store(false, Ordering::SeqCst);
    peers[0].set_quietly(Availability::Probe);
    peers[1].open(Duration::from_secs(10));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p0", "{}", lb.health());
}

// An early probe granted by a peer whose client is not ready is not sent:
// the call goes to the next peer, and the peer (half-open, no probe slot
// held) gets its probe as soon as its client is ready.
#[tokio::test(start_paused = true)]
async fn probe_now_skips_a_peer_whose_client_is_not_ready_and_probes_it_once_ready() {
    let (peers, mut lb) = fleet(3, AllOpenPolicy::ProbeNow);
    peers[0].open(Duration::from_secs(10));
    peers[1].open(Duration::from_secs(1));
    peers[2].open(Duration::from_secs(20));
    peers[1].set_ready(false);
    let before = peers[1].calls();
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p0", "{}", lb.health());
    assert_eq!(peers[1].calls(), before);
    assert_eq!(*peers[1].availability.lock(), Availability::Probe);
    // p0 serves now (its probe is out: open again for the test).
    peers[0].open(Duration::from_secs(10));
    peers[1].set_ready(true);
    assert_eq!(call_now(&mut lb, ()).unwrap(), "p1", "{}", lb.health());
}

// Back-pressure: two callers wait in `poll_ready` on busy clients that keep
// only the last waker they were given (as a tower `Buffer` does). A client
// that becomes ready wakes both: the balancer polls every client with the
// peer's own waker, not the caller's.
#[test]
fn every_caller_waiting_on_busy_clients_is_woken_when_one_is_ready() {
    use std::task::{Context, Wake, Waker};
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let peers: Vec<_> = ["a", "b"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    call_now(&mut lb, ()).unwrap();
    for p in &peers {
        p.set_ready(false);
    }
    assert!(call_now(&mut lb, ()).is_err());
    let mut other = lb.clone();
    let flags: Vec<Arc<Flag>> = (0..2).map(|_| Arc::new(Flag::default())).collect();
    let wakers: Vec<Waker> = flags.iter().map(|f| Waker::from(f.clone())).collect();
    let mut first = Context::from_waker(&wakers[0]);
    let mut second = Context::from_waker(&wakers[1]);
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut first).is_pending());
    assert!(tower_service::Service::<()>::poll_ready(&mut other, &mut second).is_pending());
    peers[0].set_ready(true);
    assert!(flags[0].0.load(Ordering::SeqCst), "the first caller's wake-up was lost");
    assert!(
        flags[1].0.load(Ordering::SeqCst),
        "the second caller's wake-up was lost"
    );
    assert!(tower_service::Service::<()>::poll_ready(&mut lb, &mut first).is_ready());
    assert_eq!(call_now(&mut lb, ()).unwrap(), "a");
}

// The same from tasks: a caller waits in `ready()`, another caller polled
// the balancer once and gave up (its waker is the last the busy clients
// saw); a client made ready by another task wakes the waiting caller
// (paused clock: a lost wake-up would hang until the timeout).
#[tokio::test(start_paused = true)]
async fn a_caller_waiting_for_a_busy_client_is_woken_from_another_task() {
    use tower::ServiceExt;
    let peers: Vec<_> = ["a", "b"].iter().map(|n| Ctl::new(n)).collect();
    let (_tx, mut lb) = balancer(&peers);
    call_now(&mut lb, ()).unwrap();
    for p in &peers {
        p.set_ready(false);
    }
    assert!(call_now(&mut lb, ()).is_err());
    let mut waiting = lb.clone();
    let first = tokio::spawn(async move {
        tower_service::Service::<()>::call(ServiceExt::<()>::ready(&mut waiting).await.unwrap(), ()).await
    });
    tokio::task::yield_now().await;
    let mut gave_up = lb.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(tower_service::Service::<()>::poll_ready(&mut gave_up, &mut cx).is_pending());
    drop(gave_up);
    let b = peers[1].clone();
    tokio::spawn(async move { b.set_ready(true) }).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("the waiting caller was never woken");
    assert_eq!(first.unwrap().unwrap(), "b");
}

// A response future polled again after it completed answers the typed
// error, without polling the peer's future again (which would panic).
#[test]
fn a_response_future_polled_after_completion_answers_the_typed_error() {
    use palisade_core::error::PolledAfterCompletion;
    let peers = vec![Ctl::new("a")];
    let (_tx, mut lb) = balancer(&peers);
    call_now(&mut lb, ()).unwrap();
    let mut future = tower_service::Service::<()>::call(&mut lb, ());
    assert!(matches!(poll_once(&mut future), Poll::Ready(Ok(_))));
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_once(&mut future)))
        .expect("polling again panicked");
    let Poll::Ready(Err(error)) = again else {
        panic!("polled again: not the typed error")
    };
    assert!(error.is::<PolledAfterCompletion>(), "{error}");
    // The same for a call that no peer could take.
    peers[0].open(Duration::from_secs(10));
    let (_tx2, mut empty) = balancer(&[]);
    let mut failed = tower_service::Service::<()>::call(&mut empty, ());
    assert!(matches!(poll_once(&mut failed), Poll::Ready(Err(_))));
    let Poll::Ready(Err(error)) = poll_once(&mut failed) else {
        panic!("polled again: not the typed error")
    };
    assert!(error.is::<PolledAfterCompletion>(), "{error}");
}

/// A peer whose `reset_open` runs `hook` first (once): code that runs while
/// the all-open policy acts.
#[derive(Clone)]
struct Hooked(Peer, Arc<parking_lot::Mutex<Option<Hook>>>);

type Hook = Box<dyn FnOnce() + Send>;

impl palisade_core::peer::CheckAvailability for Hooked {
    fn availability(&self) -> Availability {
        self.0.availability()
    }
    fn join_fleet(&self, membership: palisade_core::peer::FleetMembership) -> bool {
        self.0.join_fleet(membership)
    }
    fn request_probe(&self) -> bool {
        self.0.request_probe()
    }
    fn reset_open(&self) -> bool {
        let hook = self.1.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        self.0.reset_open()
    }
}

impl palisade_discovery::PeerWeight for Hooked {}

impl tower_service::Service<()> for Hooked {
    type Response = String;
    type Error = PeerDown;
    type Future = PeerFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), PeerDown>> {
        tower_service::Service::<()>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: ()) -> PeerFuture {
        self.0.call(req)
    }
}

// Review of issue 14: the all-open policy's lock is never waited for on the
// request path. While one caller resets the fleet (here: stopped inside a
// peer's `reset_open`), a caller on another thread is not blocked: its call
// answers at once, and its `poll_ready` waits without blocking its thread
// and is woken when the reset is done.
#[test]
fn a_caller_is_not_blocked_while_another_applies_the_all_open_policy() {
    use std::sync::mpsc;
    use std::task::{Context, Wake, Waker};
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let peers: Vec<_> = (0..3).map(|i| Ctl::new(&format!("p{i}"))).collect();
    let hook = Arc::new(parking_lot::Mutex::new(None::<Hook>));
    let (tx, discover) = channel_discover();
    for c in &peers {
        tx.send(Change::Insert(c.name.clone(), Hooked(Peer(c.clone()), hook.clone())))
            .unwrap();
    }
    let mut lb = PeerDiscoveryLayer::builder()
        .plain()
        .no_ejection_cap()
        .build()
        .unwrap()
        .layer(discover);
    call_now(&mut lb, ()).unwrap();
    for p in &peers {
        p.open(Duration::from_secs(10));
    }
    let flag = Arc::new(Flag::default());
    let (done_tx, done_rx) = mpsc::channel();
    let mut other = lb.clone();
    let waker_flag = flag.clone();
    *hook.lock() = Some(Box::new(move || {
        // Another caller, on another thread, while this one holds the
        // policy's lock (before this peer is reset).
        let handle = std::thread::spawn(move || {
            let waker = Waker::from(waker_flag);
            let mut cx = Context::from_waker(&waker);
            let waited = tower_service::Service::<()>::poll_ready(&mut other, &mut cx).is_pending();
            let answered = tower_service::Service::<()>::call(&mut other, ());
            let _ = done_tx.send((waited, poll_once(&mut Box::pin(answered)).is_ready()));
        });
        // A blocked caller would never answer: a deadlock, caught here.
        let answer = done_rx.recv_timeout(Duration::from_secs(30));
        assert!(answer.is_ok(), "the other caller was blocked by the policy's lock");
        let (waited, answered) = answer.unwrap();
        assert!(waited, "poll_ready did not wait for the acting caller");
        assert!(answered, "the call did not answer at once");
        handle.join().unwrap();
    }));
    // This call finds every peer open and resets them (the default policy).
    assert!(call_now(&mut lb, ()).is_ok(), "{}", lb.health());
    assert!(
        flag.0.load(Ordering::SeqCst),
        "the caller waiting in poll_ready was not woken"
    );
}
