//! The bulkhead's behaviour, with in-process services and paused time.
#![allow(clippy::disallowed_types)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use palisade_bulkhead::error::{BoxError, BulkheadFull, BulkheadRejection};
use palisade_bulkhead::{AimdConfig, BulkheadConfig, BulkheadLayer, GradientConfig, KeyedBulkheadLayer};
use palisade_core::event::{Event, EventKind};
use palisade_core::protocol::Http;
use parking_lot::Mutex;
use tower::{Layer, Service, ServiceExt, service_fn};

fn config(max_concurrent: usize, max_queue: usize) -> BulkheadConfig {
    BulkheadConfig::builder()
        .max_concurrent(max_concurrent)
        .max_queue(max_queue)
        .build()
        .unwrap()
}

#[derive(Clone, Default)]
struct Probe {
    active: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<u32>>>,
    finished: Arc<Mutex<Vec<u32>>>,
}

impl Probe {
    fn enter(&self, id: u32) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.started.lock().push(id);
    }
    fn exit(&self, id: u32) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.finished.lock().push(id);
    }
}

#[derive(Debug, PartialEq)]
struct Boom(u32);
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boom {}", self.0)
    }
}
impl std::error::Error for Boom {}

/// Sleeps `100 ms + id ms` (so finishing order is deterministic), fails odd ids if `fail_odd`.
fn slow(probe: Probe, fail_odd: bool) -> impl Service<u32, Response = u32, Error = Boom, Future: Send> + Clone + Send {
    service_fn(move |id: u32| {
        let probe = probe.clone();
        async move {
            probe.enter(id);
            tokio::time::sleep(Duration::from_millis(100 + u64::from(id))).await;
            probe.exit(id);
            if fail_odd && id % 2 == 1 { Err(Boom(id)) } else { Ok(id) }
        }
    })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn three_run_seven_wait_and_all_finish_in_fifo_order() {
    let probe = Probe::default();
    let layer = BulkheadLayer::new(config(3, 10));
    let handle = layer.handle();
    let mut svc = layer.layer(slow(probe.clone(), false));
    let mut calls = Vec::new();
    for id in 0..10 {
        svc.ready().await.unwrap();
        calls.push(tokio::spawn(svc.call(id)));
    }
    settle().await;
    assert_eq!(probe.active.load(Ordering::SeqCst), 3);
    assert_eq!(handle.in_flight(), 3);
    assert_eq!(handle.queued(), 7);
    for (id, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), id as u32);
    }
    assert_eq!(probe.max.load(Ordering::SeqCst), 3);
    assert_eq!(*probe.started.lock(), (0..10).collect::<Vec<_>>());
    assert_eq!(*probe.finished.lock(), (0..10).collect::<Vec<_>>());
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn queue_of_five_rejects_the_ninth_and_tenth_and_failures_free_slots() {
    let probe = Probe::default();
    let layer = BulkheadLayer::new(config(3, 5));
    let handle = layer.handle();
    // Odd calls fail: their slots must still come back.
    let mut svc = layer.layer(slow(probe.clone(), true));
    let mut calls = Vec::new();
    for id in 0..10 {
        svc.ready().await.unwrap();
        calls.push(tokio::spawn(svc.call(id)));
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    for (id, result) in results.iter().enumerate().take(8) {
        match result {
            Ok(v) => assert_eq!(*v as usize, id),
            Err(e) => assert_eq!(
                e.downcast_ref::<Boom>(),
                Some(&Boom(id as u32)),
                "inner errors pass through"
            ),
        }
    }
    for result in &results[8..] {
        let full = result.as_ref().unwrap_err().downcast_ref::<BulkheadFull>().unwrap();
        assert_eq!(full.reason(), BulkheadRejection::QueueFull);
        assert_eq!((full.max_concurrent(), full.max_queue()), (3, 5));
    }
    assert_eq!(probe.started.lock().len(), 8);
    assert_eq!(probe.max.load(Ordering::SeqCst), 3);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn twenty_sixth_call_is_rejected_at_once_with_no_queue() {
    let layer = BulkheadLayer::new(config(25, 0));
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_: u32| {
        futures::future::pending::<Result<u32, Infallible>>()
    }));
    let mut held = Vec::new();
    for id in 0..25 {
        svc.ready().await.unwrap();
        held.push(svc.call(id));
    }
    assert_eq!(handle.in_flight(), 25);
    // poll_ready does not wait for a slot...
    assert!(svc.ready().now_or_never().is_some());
    // ...and the 26th call fails on its first poll.
    let err = svc.call(25).now_or_never().expect("rejected at once").unwrap_err();
    assert_eq!(
        err.downcast_ref::<BulkheadFull>().map(BulkheadFull::reason),
        Some(BulkheadRejection::QueueFull)
    );
    drop(held);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_caller_leaves_at_once_and_takes_no_slot() {
    let probe = Probe::default();
    let layer = BulkheadLayer::new(config(1, 2));
    let handle = layer.handle();
    let mut svc = layer.layer(slow(probe.clone(), false));
    svc.ready().await.unwrap();
    let first = tokio::spawn(svc.call(0));
    svc.ready().await.unwrap();
    let cancelled = tokio::spawn(svc.call(1));
    svc.ready().await.unwrap();
    let third = tokio::spawn(svc.call(2));
    settle().await;
    assert_eq!(handle.queued(), 2);
    cancelled.abort();
    settle().await;
    assert_eq!(handle.queued(), 1, "the cancelled caller left the queue at once");
    assert_eq!(first.await.unwrap().unwrap(), 0);
    assert_eq!(third.await.unwrap().unwrap(), 2);
    assert_eq!(*probe.started.lock(), [0, 2]);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_queued_caller_gives_up_after_max_wait_with_a_distinct_reason() {
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(4)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config);
    let handle = layer.handle();
    let mut svc = layer.layer(slow(Probe::default(), false));
    svc.ready().await.unwrap();
    let first = tokio::spawn(svc.call(0)); // runs 100 ms
    svc.ready().await.unwrap();
    let start = tokio::time::Instant::now();
    let err = svc.call(1).await.unwrap_err();
    let full = err.downcast_ref::<BulkheadFull>().unwrap();
    assert_eq!(
        full.reason(),
        BulkheadRejection::WaitTimedOut(Duration::from_millis(50))
    );
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(handle.queued(), 0);
    first.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[derive(Clone)]
struct Panics;
impl Service<bool> for Panics {
    type Response = ();
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<(), Infallible>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, in_call: bool) -> Self::Future {
        assert!(!in_call, "panic in call");
        Box::pin(async { panic!("panic in the response future") })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_inner_service_returns_its_permit() {
    let layer = BulkheadLayer::new(config(1, 1));
    let handle = layer.handle();
    let mut svc = layer.layer(Panics);
    svc.ready().await.unwrap();
    let joined = tokio::spawn(svc.call(false)).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
    svc.ready().await.unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(svc.call(true))));
    assert!(caught.is_err());
    assert_eq!(handle.in_flight(), 0);
    // The slot is usable again.
    svc.ready().await.unwrap();
    assert!(tokio::spawn(svc.call(false)).await.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_layer_value_and_clones_share_one_bulkhead_unlike_tower() {
    let hold = || service_fn(|_: u32| futures::future::pending::<Result<u32, Infallible>>());

    // Two services from one layer value, and a clone, share one slot: while
    // `a` holds it, `b` and `c` are refused...
    let layer = BulkheadLayer::new(config(1, 0));
    let mut a = layer.layer(hold());
    let mut b = layer.layer(hold());
    let mut c = a.clone();
    a.ready().await.unwrap();
    let held = a.call(1);
    for svc in [&mut b, &mut c] {
        svc.ready().await.unwrap();
        let err = svc.call(2).now_or_never().unwrap().unwrap_err();
        assert!(err.is::<BulkheadFull>());
    }
    assert_eq!(layer.handle().in_flight(), 1);
    // ...and once `a` gives it back, `b` gets it, and `a` is refused.
    drop(held);
    b.ready().await.unwrap();
    let _b_held = b.call(3);
    assert_eq!(layer.handle().in_flight(), 1);
    a.ready().await.unwrap();
    assert!(a.call(4).now_or_never().unwrap().unwrap_err().is::<BulkheadFull>());

    // In the same situation tower's ConcurrencyLimitLayer, which makes a
    // semaphore per wrapped service, admits the second service's call.
    let tower_layer = tower::limit::ConcurrencyLimitLayer::new(1);
    let mut ta = tower_layer.layer(hold());
    let mut tb = tower_layer.layer(hold());
    ta.ready().await.unwrap();
    let _tower_held = ta.call(1);
    assert!(
        tb.ready().now_or_never().is_some(),
        "tower's second service has its own semaphore"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_callers_deadline_ends_its_wait_with_deadline_exceeded_and_frees_its_place() {
    use palisade_core::error::DeadlineExceeded;
    use palisade_core::options::{CallOptionsExt, Deadline};

    let probe = Probe::default();
    let p = probe.clone();
    let inner = service_fn(move |request: http::Request<u32>| {
        let probe = p.clone();
        let id = *request.body();
        async move {
            probe.enter(id);
            tokio::time::sleep(Duration::from_millis(100)).await;
            probe.exit(id);
            Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    // max_wait 50 ms; the deadlines below fall before it, or after it.
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config).protocol(Http::default());
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    let request = |id: u32, deadline: Option<u64>| {
        let mut request = http::Request::new(id);
        if let Some(ms) = deadline {
            request
                .call_options_mut()
                .set_deadline(Deadline::after(Duration::from_millis(ms)));
        }
        request
    };
    svc.ready().await.unwrap();
    let first = tokio::spawn(svc.call(request(0, None))); // holds the slot for 100 ms
    settle().await;

    // A deadline in 20 ms: the wait ends then, with the deadline's error.
    svc.ready().await.unwrap();
    let start = tokio::time::Instant::now();
    let err = svc.call(request(1, Some(20))).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "not BulkheadFull: {err}");
    assert!(!err.downcast_ref::<DeadlineExceeded>().unwrap().was_sent());
    assert_eq!(start.elapsed(), Duration::from_millis(20));
    assert_eq!(handle.queued(), 0, "its queue place was given back");

    // Its place is free: the next caller queues (a full queue would refuse it).
    // A deadline later than max_wait: max_wait ends the wait, as before.
    svc.ready().await.unwrap();
    let err = svc.call(request(2, Some(500))).await.unwrap_err();
    let full = err.downcast_ref::<BulkheadFull>().expect("max_wait came first");
    assert_eq!(
        full.reason(),
        BulkheadRejection::WaitTimedOut(Duration::from_millis(50))
    );

    // A deadline that has already passed: it leaves at once.
    svc.ready().await.unwrap();
    let err = svc.call(request(3, Some(0))).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");

    first.await.unwrap().unwrap();
    assert_eq!(
        *probe.started.lock(),
        [0],
        "no call that ran out of time reached the inner service"
    );
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_a_free_slot_the_deadline_is_left_to_the_layers_below() {
    use palisade_core::options::{CallOptionsExt, Deadline};
    let inner = service_fn(|_: http::Request<u32>| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
    });
    let mut svc = BulkheadLayer::new(config(1, 1)).protocol(Http::default()).layer(inner);
    let mut request = http::Request::new(0);
    request
        .call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(10)));
    svc.ready().await.unwrap();
    assert!(
        svc.call(request).await.is_ok(),
        "admitted at once: the bulkhead does not time it"
    );
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

#[tokio::test(start_paused = true)]
async fn http_permit_is_held_until_the_body_ends_errors_or_is_dropped() {
    let senders = Arc::new(Mutex::new(Vec::new()));
    let s = senders.clone();
    let inner = service_fn(move |_: http::Request<()>| {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Chunk>();
        s.lock().push(tx);
        async move { Ok::<_, Infallible>(http::Response::new(StreamBody::new(rx))) }
    });
    let layer = BulkheadLayer::new(config(1, 0)).protocol(Http::default());
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    let req = || http::Request::new(());

    for ending in ["eos", "error", "dropped"] {
        svc.ready().await.unwrap();
        let response = svc.call(req()).await.unwrap();
        assert_eq!(handle.in_flight(), 1, "headers arrived, body not finished ({ending})");
        let tx = senders.lock().pop().unwrap();
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"a")))).unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        assert_eq!(handle.in_flight(), 1, "half-read ({ending})");
        svc.ready().await.unwrap();
        assert!(svc.call(req()).await.unwrap_err().is::<BulkheadFull>());
        senders.lock().clear();
        match ending {
            "eos" => {
                drop(tx);
                assert!(body.frame().await.is_none());
                assert!(body.is_end_stream());
            }
            "error" => {
                tx.unbounded_send(Err(std::io::Error::other("reset"))).unwrap();
                assert!(body.frame().await.unwrap().is_err());
            }
            _ => drop(body),
        }
        assert_eq!(handle.in_flight(), 0, "released at {ending}");
    }
}

#[tokio::test(start_paused = true)]
async fn live_limit_changes_do_not_revoke_and_raising_admits_waiters() {
    let gates: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let g = gates.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    let inner = service_fn(move |_: u32| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        g.lock().push(tx);
        st.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = rx.await;
            Ok::<_, Infallible>(())
        }
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let config = BulkheadConfig::builder()
        .max_concurrent(2)
        .max_queue(5)
        .listener(Arc::new(move |e: &Event<'_>| ev.lock().push(e.kind.name())))
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config);
    let handle = layer.handle();
    let mut svc = layer.layer(inner);
    let mut calls = Vec::new();
    for id in 0..4 {
        svc.ready().await.unwrap();
        calls.push(tokio::spawn(svc.call(id)));
    }
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (2, 2));
    handle.set_max_concurrent(1).unwrap();
    assert_eq!(handle.in_flight(), 2, "lowering revokes nothing");
    let first = gates.lock().remove(0);
    first.send(()).unwrap();
    settle().await;
    assert_eq!(
        (handle.in_flight(), handle.queued()),
        (1, 2),
        "1 in flight = new limit: nobody admitted"
    );
    handle.set_max_concurrent(3).unwrap();
    settle().await;
    assert_eq!(
        (handle.in_flight(), handle.queued()),
        (3, 0),
        "raising admits waiters at once"
    );
    assert_eq!(started.load(Ordering::SeqCst), 4);
    assert!(handle.set_max_concurrent(0).is_err());
    for gate in gates.lock().drain(..) {
        gate.send(()).unwrap();
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    let events = events.lock();
    assert_eq!(events.iter().filter(|e| **e == "limit_changed").count(), 2);
}

#[tokio::test(start_paused = true)]
async fn rejections_reach_listeners() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let config = BulkheadConfig::builder()
        .max_concurrent(1)
        .max_queue(0)
        .listener(Arc::new(move |e: &Event<'_>| {
            if let EventKind::Rejected { reason } = e.kind {
                s.lock().push(reason);
            }
        }))
        .build()
        .unwrap();
    let mut svc = BulkheadLayer::new(config).layer(service_fn(|_: u32| {
        futures::future::pending::<Result<(), Infallible>>()
    }));
    let _held = svc.call(0);
    let _ = svc.call(1).now_or_never();
    assert_eq!(*seen.lock(), ["queue full"]);
}

#[tokio::test(start_paused = true)]
async fn keyed_partitions_have_their_own_limits_and_are_bounded() {
    let inner = service_fn(|_: (&'static str, u32)| futures::future::pending::<Result<(), Infallible>>());
    let config = BulkheadConfig::builder()
        .max_concurrent(2)
        .max_queue(0)
        .key_limit("a", 1)
        .max_keys(2)
        .build()
        .unwrap();
    let layer = KeyedBulkheadLayer::new(config).key_fn(|r: &(&'static str, u32)| Some(r.0.into()));
    let keys = layer.handle();
    let mut svc = layer.layer(inner);
    let a1 = svc.call(("a", 1));
    let a2 = svc.call(("a", 2)).now_or_never();
    assert!(a2.unwrap().unwrap_err().is::<BulkheadFull>(), "key a allows 1");
    let b1 = svc.call(("b", 1));
    let b2 = svc.call(("b", 2));
    assert_eq!(keys.partition("a").unwrap().in_flight(), 1);
    assert_eq!(keys.partition("b").unwrap().in_flight(), 2);
    // Both partitions are busy and the map is full: key c shares the default partition.
    let c1 = svc.call(("c", 1));
    assert_eq!(keys.len(), 2);
    assert!(keys.partition("c").is_none());
    assert_eq!(keys.default_partition().in_flight(), 1);
    drop((a1, c1));
    // a is now unused, but the map was just found full of busy partitions: it
    // is not rescanned for a second, so a flood of new keys costs no scans.
    let early = svc.call(("d", 0));
    assert!(keys.partition("d").is_none());
    assert_eq!(keys.default_partition().in_flight(), 1);
    drop(early);
    tokio::time::advance(Duration::from_secs(1)).await;
    // After that a new key evicts the unused partition.
    let d1 = svc.call(("d", 1));
    assert_eq!(keys.len(), 2);
    assert!(keys.partition("a").is_none());
    assert_eq!(keys.partition("d").unwrap().in_flight(), 1);
    drop((b1, b2, d1));
    assert_eq!(keys.partition("b").unwrap().in_flight(), 0);
}

/// A service whose latency and failures a test controls.
#[derive(Clone, Default)]
struct Weather {
    latency_ms: Arc<AtomicUsize>,
    failing: Arc<AtomicUsize>,
}

impl Service<u32> for Weather {
    type Response = ();
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<(), BoxError>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: u32) -> Self::Future {
        let latency = Duration::from_millis(self.latency_ms.load(Ordering::SeqCst) as u64);
        let failing = self.failing.load(Ordering::SeqCst) == 1;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if failing { Err("injected".into()) } else { Ok(()) }
        })
    }
}

/// Runs `rounds` bursts of 40 concurrent calls; returns the limit afterwards.
async fn load<S>(svc: &mut S, handle: &palisade_bulkhead::BulkheadHandle, rounds: usize) -> usize
where
    S: Service<u32, Error = BoxError> + Clone,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    for _ in 0..rounds {
        let mut calls = Vec::new();
        for id in 0..40 {
            svc.ready().await.unwrap();
            calls.push(tokio::spawn(svc.call(id)));
        }
        for call in calls {
            let _ = call.await.unwrap();
        }
    }
    handle.max_concurrent()
}

#[tokio::test(start_paused = true)]
async fn aimd_limit_falls_under_latency_and_failures_and_recovers() {
    let weather = Weather::default();
    weather.latency_ms.store(10, Ordering::SeqCst);
    let config = BulkheadConfig::builder()
        .max_concurrent(10)
        .max_queue(100)
        .aimd(AimdConfig {
            floor: 2,
            ceiling: 30,
            latency_threshold: Duration::from_millis(100),
            ..AimdConfig::default()
        })
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config);
    let handle = layer.handle();
    let mut svc = layer.layer(weather.clone());
    let healthy = load(&mut svc, &handle, 3).await;
    assert!(healthy > 10, "fast successes under load grow the limit: {healthy}");
    weather.latency_ms.store(500, Ordering::SeqCst);
    let slow = load(&mut svc, &handle, 2).await;
    assert!(slow < healthy / 2, "slow calls shrink it: {healthy} -> {slow}");
    weather.latency_ms.store(10, Ordering::SeqCst);
    weather.failing.store(1, Ordering::SeqCst);
    let failing = load(&mut svc, &handle, 2).await;
    assert_eq!(failing, 2, "failures push it to the floor");
    weather.failing.store(0, Ordering::SeqCst);
    let recovered = load(&mut svc, &handle, 4).await;
    assert!(recovered > 10, "it recovers: {failing} -> {recovered}");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn gradient_limit_falls_under_latency_and_failures_and_recovers() {
    let weather = Weather::default();
    weather.latency_ms.store(10, Ordering::SeqCst);
    let config = BulkheadConfig::builder()
        .max_concurrent(10)
        .max_queue(100)
        .gradient(GradientConfig {
            floor: 2,
            ceiling: 30,
            long_window: 100,
            ..GradientConfig::default()
        })
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config);
    let handle = layer.handle();
    let mut svc = layer.layer(weather.clone());
    let healthy = load(&mut svc, &handle, 2).await;
    assert!(healthy > 10, "normal latency grows the limit: {healthy}");
    weather.latency_ms.store(200, Ordering::SeqCst);
    let slow = load(&mut svc, &handle, 2).await;
    assert!(slow < healthy / 2, "20x latency shrinks it: {healthy} -> {slow}");
    weather.latency_ms.store(10, Ordering::SeqCst);
    weather.failing.store(1, Ordering::SeqCst);
    let failing = load(&mut svc, &handle, 2).await;
    assert!(failing <= slow, "failures keep it down: {failing}");
    weather.failing.store(0, Ordering::SeqCst);
    let recovered = load(&mut svc, &handle, 6).await;
    assert!(recovered > failing * 2, "it recovers: {failing} -> {recovered}");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_partitions_are_evicted_when_a_new_key_arrives() {
    let inner = service_fn(|_: (&'static str, u32)| std::future::ready(Ok::<_, Infallible>(())));
    let config = BulkheadConfig::builder()
        .max_keys(2)
        .key_idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let layer = KeyedBulkheadLayer::new(config).key_fn(|r: &(&'static str, u32)| Some(r.0.into()));
    let keys = layer.handle();
    let mut svc = layer.layer(inner);
    svc.call(("a", 1)).await.unwrap();
    svc.call(("b", 1)).await.unwrap();
    assert_eq!(keys.len(), 2);
    tokio::time::advance(Duration::from_secs(11)).await;
    svc.call(("c", 1)).await.unwrap();
    // Both idle partitions went, not only the least recently used one.
    assert_eq!(keys.len(), 1);
    assert!(keys.partition("c").is_some());
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_changes_reach_listeners() {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c = changes.clone();
    let weather = Weather::default();
    weather.failing.store(1, Ordering::SeqCst);
    let config = BulkheadConfig::builder()
        .max_concurrent(4)
        .aimd(AimdConfig::default())
        .listener(Arc::new(move |e: &Event<'_>| {
            if let EventKind::LimitChanged { from, to, reason } = e.kind {
                c.lock().push((from, to, reason));
            }
        }))
        .build()
        .unwrap();
    let mut svc = BulkheadLayer::new(config).layer(weather);
    svc.ready().await.unwrap();
    assert!(svc.call(0).await.is_err());
    assert_eq!(*changes.lock(), [(4, 3, "adaptive decrease")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_threads_never_exceed_the_limit_and_lose_no_wakeup() {
    let probe = Probe::default();
    let p = probe.clone();
    let inner = service_fn(move |id: u32| {
        let p = p.clone();
        async move {
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let now = p.active.fetch_add(1, Ordering::SeqCst) + 1;
            p.max.fetch_max(now, Ordering::SeqCst);
            // Leaves on completion and on cancellation alike.
            let _leave = Leave(p.active.clone());
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(id)
        }
    });
    let layer = BulkheadLayer::new(config(3, 10_000));
    let handle = layer.handle();
    let svc = layer.layer(inner);
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u32 {
                svc.ready().await.unwrap();
                let call = svc.call(t * 1000 + i);
                if i % 7 == 0 {
                    // Cancel some calls, queued or running.
                    let _ = futures::FutureExt::now_or_never(call);
                } else {
                    call.await.unwrap();
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("no lost wakeup");
    assert!(probe.max.load(Ordering::SeqCst) <= 3);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

/// Answers with a head after `head_ms` and a body that ends `body_ms` later.
fn streaming(
    head_ms: u64,
    body_ms: u64,
) -> impl Service<
    http::Request<u32>,
    Response = http::Response<StreamBody<futures::channel::mpsc::UnboundedReceiver<Chunk>>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    service_fn(move |_: http::Request<u32>| async move {
        tokio::time::sleep(Duration::from_millis(head_ms)).await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<Chunk>();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(body_ms)).await;
            let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"done"))));
        });
        Ok::<_, Infallible>(http::Response::new(StreamBody::new(rx)))
    })
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_measures_latency_to_the_response_head_not_the_end_of_the_stream() {
    // Heads in 10 ms, bodies that stream for 500 ms: a healthy peer serving
    // long streams. AIMD counts 100 ms or more as slow.
    let config = BulkheadConfig::builder()
        .max_concurrent(4)
        .max_queue(100)
        .aimd(AimdConfig {
            floor: 1,
            ceiling: 30,
            latency_threshold: Duration::from_millis(100),
            ..AimdConfig::default()
        })
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(config).protocol(Http::default());
    let handle = layer.handle();
    let mut svc = layer.layer(streaming(10, 500));
    for _ in 0..3 {
        let mut calls = Vec::new();
        for id in 0..8 {
            svc.ready().await.unwrap();
            let call = svc.call(http::Request::new(id));
            calls.push(tokio::spawn(async move {
                let response = call.await.unwrap();
                // Read to the end: the permit (and the verdict) wait for it.
                response.into_body().collect().await.unwrap();
            }));
        }
        for call in calls {
            call.await.unwrap();
        }
    }
    assert!(
        handle.max_concurrent() > 4,
        "fast heads grow the limit although the streams are long: {}",
        handle.max_concurrent()
    );
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_feeds_an_adaptive_limit_as_the_policy_says() {
    use palisade_core::classify::{AbandonPolicy, Outcome};
    let hang = service_fn(|_: http::Request<u32>| {
        futures::future::pending::<Result<http::Response<http_body_util::Empty<Bytes>>, Infallible>>()
    });
    let aimd = || {
        BulkheadConfig::builder()
            .max_concurrent(4)
            .aimd(AimdConfig::default())
            .build()
            .unwrap()
    };
    for (policy, expected) in [
        (AbandonPolicy::DEFAULT, 4),
        (AbandonPolicy::new().with_call_dropped(Outcome::Failure), 3),
    ] {
        let layer = BulkheadLayer::new(aimd()).protocol(Http::default().with_abandon_policy(policy));
        let handle = layer.handle();
        let mut svc = layer.layer(hang);
        svc.ready().await.unwrap();
        let mut call = Box::pin(svc.call(http::Request::new(0)));
        assert!((&mut call).now_or_never().is_none());
        drop(call);
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(handle.max_concurrent(), expected, "{policy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_future_polled_after_completion_fails_with_the_typed_error() {
    use palisade_core::error::PolledAfterCompletion;
    use palisade_core::event::LayerName;
    let ok = service_fn(|id: u32| std::future::ready(Ok::<_, Infallible>(id)));
    let mut svc = BulkheadLayer::new(config(1, 0)).layer(ok);
    svc.ready().await.unwrap();
    let mut call = Box::pin(svc.call(7));
    assert_eq!((&mut call).await.unwrap(), 7);
    let again = call.now_or_never().unwrap().unwrap_err();
    assert_eq!(
        again
            .downcast_ref::<PolledAfterCompletion>()
            .map(PolledAfterCompletion::layer),
        Some(LayerName::Bulkhead)
    );
}
