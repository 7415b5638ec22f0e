//! The retry layer's behaviour, in paused time, against in-process services.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::{BoxError, CircuitOpen, DeadlineExceeded, NoAvailablePeers};
use palisade_core::event::{Event, EventKind};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::peer::PeerId;
use palisade_core::retry::{RetryDecision, Retryable};
use palisade_retry::{Attempts, ReplayBody, RetryLayer, RouteRetry};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Debug, PartialEq)]
struct Fail(u32);
impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {} failed", self.0)
    }
}
impl std::error::Error for Fail {}

/// A service that fails with a retryable error, recording when it was called.
fn always_failing(
    log: Arc<Mutex<Vec<Instant>>>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |()| {
        let mut log = log.lock();
        log.push(Instant::now());
        let n = log.len() as u32;
        async move { Err::<(), BoxError>(Retryable::yes(Fail(n)).into()) }
    })
}

fn no_jitter(b: palisade_core::backoff::BackoffBuilder) -> Backoff {
    b.jitter(Jitter::None).build().unwrap()
}

fn offsets(log: &[Instant], start: Instant) -> Vec<u64> {
    log.iter().map(|t| (*t - start).as_millis() as u64).collect()
}

#[derive(Default)]
struct Recorder {
    delays: Mutex<Vec<Duration>>,
    exhausted: AtomicU32,
}

impl palisade_core::event::Listener for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        match event.kind {
            EventKind::Retry { delay, .. } => self.delays.lock().push(delay),
            EventKind::BudgetExhausted => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_500ms_without_jitter_sleeps_500_then_1000() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::new(Recorder::default());
    let layer = RetryLayer::builder()
        .plain()
        .retries(2)
        .backoff(no_jitter(Backoff::exponential(Duration::from_millis(500)).factor(2.0)))
        .listener(recorder.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(log.clone()));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(offsets(&log.lock(), start), [0, 500, 1500]);
    assert_eq!(
        *recorder.delays.lock(),
        [Duration::from_millis(500), Duration::from_millis(1000)]
    );
    // The last attempt's error, untouched.
    let marked = err.downcast_ref::<Retryable>().expect("the inner error type");
    assert_eq!(marked.inner().downcast_ref::<Fail>(), Some(&Fail(3)));
}

async fn attempt_offsets(backoff: Backoff, retries: u32) -> Vec<u64> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::builder()
        .plain()
        .retries(retries)
        .backoff(backoff)
        .no_budget()
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(log.clone()));
    let start = Instant::now();
    let _ = svc.ready().await.unwrap().call(()).await;
    let at = offsets(&log.lock(), start);
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn pollys_table() {
    let s = Duration::from_secs(1);
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::constant(s)), 3).await,
        [1000, 1000, 1000]
    );
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::linear(s)), 3).await,
        [1000, 2000, 3000]
    );
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::exponential(s).factor(2.0)), 3).await,
        [1000, 2000, 4000]
    );
    let cap = Duration::from_millis(1500);
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::constant(s).max_delay(cap)), 3).await,
        [1000, 1000, 1000]
    );
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::linear(s).max_delay(cap)), 3).await,
        [1000, 1500, 1500]
    );
    assert_eq!(
        attempt_offsets(no_jitter(Backoff::exponential(s).factor(2.0).max_delay(cap)), 3).await,
        [1000, 1500, 1500]
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_style_bounds_hold_over_many_calls() {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .factor(2.0)
        .max_delay(Duration::from_secs(1))
        .jitter(Jitter::Proportional { low: 0.8, high: 1.2 })
        .build()
        .unwrap();
    let bounds = [(80, 120), (160, 240), (320, 480)];
    for _ in 0..100 {
        let gaps = attempt_offsets(backoff, 3).await;
        assert_eq!(gaps.len(), 3);
        for (gap, (low, high)) in gaps.iter().zip(bounds) {
            assert!((low..=high).contains(gap), "{gap} ms not in [{low}, {high}]");
        }
    }
    // And over many seeds, straight from the backoff the layer uses.
    for seed in 0..2000 {
        let mut rng = fastrand::Rng::with_seed(seed);
        for (n, (low, high)) in bounds.iter().enumerate() {
            let d = backoff.delay_with(n as u32, None, &mut rng).as_secs_f64() * 1000.0;
            assert!(d >= *low as f64 - 1e-6 && d <= *high as f64 + 1e-6, "seed {seed}: {d}");
        }
    }
}

fn counting(
    fail: bool,
    calls: Arc<AtomicU32>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |()| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if fail {
                Err::<(), BoxError>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
            } else {
                Ok(())
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_a_burst_of_failures() {
    // 20 % and a floor of 1 per second over 10 s: 10 retries of floor.
    let recorder = Arc::new(Recorder::default());
    let layer = RetryLayer::builder()
        .plain()
        .retries(1)
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .budget(0.2, 1, Duration::from_secs(10))
        .listener(recorder.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let svc = layer.layer(counting(true, calls.clone()));
    let burst = (0..100).map(|_| svc.clone().oneshot(()));
    let results = futures::future::join_all(burst).await;
    assert!(results.iter().all(Result::is_err));
    // 100 first attempts + floor 10 + 20 % of 100 requests.
    assert_eq!(calls.load(Ordering::Relaxed), 130);
    assert_eq!(recorder.exhausted.load(Ordering::Relaxed), 70);
}

#[tokio::test(start_paused = true)]
async fn successful_requests_deposit() {
    let layer = RetryLayer::builder()
        .plain()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .budget(0.2, 1, Duration::from_secs(10))
        .build()
        .unwrap();
    let budget = || layer.budget().unwrap().available();
    assert_eq!(budget(), 10);
    let ok_calls = Arc::new(AtomicU32::new(0));
    // One layer value: its services share the budget.
    let good = layer.layer(counting(false, ok_calls.clone()));
    for _ in 0..50 {
        good.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(ok_calls.load(Ordering::Relaxed), 50, "no retries of successes");
    assert_eq!(budget(), 20, "50 successful requests deposited 10 retries");
    let calls = Arc::new(AtomicU32::new(0));
    let bad = layer.layer(counting(true, calls.clone()));
    for _ in 0..100 {
        let _ = bad.clone().oneshot(()).await;
    }
    assert_eq!(calls.load(Ordering::Relaxed), 100 + 10 + 30);
    // Deposits expire: after the TTL only the floor is left.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(budget(), 10);
}

#[tokio::test(start_paused = true)]
async fn throttle_stops_retries_at_half_the_tokens() {
    let recorder = Arc::new(Recorder::default());
    let layer = RetryLayer::builder()
        .plain()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .no_budget()
        .throttle(4, 0.5)
        .listener(recorder.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let svc = layer.layer(counting(true, calls.clone()));
    // Call 1: attempt fails (4 -> 3), retry allowed; retry fails (3 -> 2) and is the last.
    let _ = svc.clone().oneshot(()).await;
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // Call 2: attempt fails (2 -> 1): at or below half, no retry.
    let _ = svc.clone().oneshot(()).await;
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(recorder.exhausted.load(Ordering::Relaxed), 1);
    assert_eq!(layer.throttle().unwrap().tokens(), 1.0);
}

fn grpc_response(headers: &[(&'static str, &'static str)]) -> http::Response<Full<Bytes>> {
    let mut builder = http::Response::builder().status(200);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

type Bodies = Arc<Mutex<Vec<(Instant, Bytes)>>>;

/// Answers `first` to the first attempt and 200 to the later ones; records bodies.
fn scripted(
    first: fn() -> http::Response<Full<Bytes>>,
    bodies: Bodies,
) -> impl Service<
    http::Request<ReplayBody<Full<Bytes>>>,
    Response = http::Response<Full<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone {
    service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
        let bodies = bodies.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            let n = {
                let mut b = bodies.lock();
                b.push((Instant::now(), body));
                b.len()
            };
            Ok::<_, BoxError>(if n == 1 {
                first()
            } else {
                grpc_response(&[("grpc-status", "0")])
            })
        }
    })
}

fn grpc_request(body: &'static [u8]) -> http::Request<Full<Bytes>> {
    http::Request::post("http://peer/echo.Echo/Unary")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_sets_the_delay_exactly() {
    let bodies: Bodies = Arc::default();
    let svc = RetryLayer::grpc().layer(scripted(
        || grpc_response(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "2000")]),
        bodies.clone(),
    ));
    let start = Instant::now();
    let res = svc.oneshot(grpc_request(b"hello")).await.unwrap();
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let b = bodies.lock();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].0 - start, Duration::ZERO);
    assert_eq!(b[1].0 - start, Duration::from_millis(2000));
    assert_eq!(b[1].1, Bytes::from_static(b"hello"), "the body was replayed");
}

#[tokio::test(start_paused = true)]
async fn negative_or_malformed_pushback_means_no_retry() {
    for first in [
        (|| grpc_response(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")])) as fn() -> _,
        || grpc_response(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "abc")]),
        // Beyond max_pushback (10 s): skipped.
        || grpc_response(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "60000")]),
    ] {
        let bodies: Bodies = Arc::default();
        let svc = RetryLayer::grpc().layer(scripted(first, bodies.clone()));
        let res = svc.oneshot(grpc_request(b"x")).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "14", "the first answer is returned");
        assert_eq!(res.extensions().get::<Attempts>(), None, "one attempt: not marked");
        assert_eq!(bodies.lock().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn http_retry_after_and_idempotency() {
    let bodies: Bodies = Arc::default();
    let first = || {
        http::Response::builder()
            .status(503)
            .header("retry-after", "3")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let svc = RetryLayer::http().layer(scripted(first, bodies.clone()));
    let start = Instant::now();
    let get = http::Request::put("http://peer/item/1")
        .body(Full::new(Bytes::from_static(b"v")))
        .unwrap();
    let res = svc.clone().oneshot(get).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(bodies.lock()[1].0 - start, Duration::from_secs(3));
    assert_eq!(bodies.lock()[1].1, Bytes::from_static(b"v"));

    // POST is not idempotent: the 503 stands ...
    let bodies: Bodies = Arc::default();
    let svc = RetryLayer::http().layer(scripted(first, bodies.clone()));
    let post = http::Request::post("http://peer/items")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
    assert_eq!(bodies.lock().len(), 1);
    // ... unless the caller marks it idempotent.
    let mut post = http::Request::post("http://peer/items")
        .body(Full::new(Bytes::new()))
        .unwrap();
    post.call_options_mut().set_idempotent(true);
    bodies.lock().clear();
    assert_eq!(svc.oneshot(post).await.unwrap().status(), 200);
    assert_eq!(bodies.lock().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_not_retried() {
    let bodies: Bodies = Arc::default();
    let layer = RetryLayer::builder().grpc().replay_cap(4).build().unwrap();
    let svc = layer.layer(scripted(|| grpc_response(&[("grpc-status", "14")]), bodies.clone()));
    let res = svc.oneshot(grpc_request(b"too long")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(bodies.lock().len(), 1);
    assert_eq!(bodies.lock()[0].1, Bytes::from_static(b"too long"), "sent once, whole");
}

#[tokio::test(start_paused = true)]
async fn a_response_with_its_status_in_the_trailers_is_committed() {
    let bodies: Bodies = Arc::default();
    // 200 without grpc-status: the status would come in the trailers.
    let svc = RetryLayer::grpc().layer(scripted(|| grpc_response(&[]), bodies.clone()));
    let res = svc.oneshot(grpc_request(b"x")).await.unwrap();
    assert!(res.headers().get("grpc-status").is_none());
    assert_eq!(bodies.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_sleeps_and_attempts() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
        let mut log = log2.lock();
        log.push(Instant::now());
        let n = log.len() as u32;
        drop(req);
        async move { Err::<http::Response<()>, BoxError>(Retryable::yes(Fail(n)).into()) }
    });
    let layer = RetryLayer::builder()
        .http()
        .retries(5)
        .backoff(no_jitter(Backoff::constant(Duration::from_millis(600))))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let mut req = http::Request::get("http://peer/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.call_options_mut()
        .set_deadline(Deadline::after(Duration::from_millis(1000)));
    let start = Instant::now();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(
        offsets(&log.lock(), start),
        [0, 600],
        "a sleep to 1200 ms would pass the deadline"
    );
    assert_eq!(Instant::now() - start, Duration::from_millis(600), "returned at once");
    let marked = err.downcast_ref::<Retryable>().unwrap();
    assert_eq!(marked.inner().downcast_ref::<Fail>(), Some(&Fail(2)));
}

#[tokio::test(start_paused = true)]
async fn what_is_never_retried() {
    let errors: Vec<fn() -> BoxError> = vec![
        || DeadlineExceeded::in_flight(Duration::from_secs(1)).into(),
        || Retryable::no(CircuitOpen::new(None, Duration::ZERO)).into(),
        || "a business error".into(),
    ];
    for make in errors {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = RetryLayer::builder()
            .plain()
            .retries(3)
            .build()
            .unwrap()
            .layer(service_fn(move |()| {
                c.fetch_add(1, Ordering::Relaxed);
                async move { Err::<(), BoxError>(make()) }
            }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "{err}");
    }
    // And what is: NoAvailablePeers and CircuitOpen, after the backoff.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = RetryLayer::builder()
        .plain()
        .retries(3)
        .build()
        .unwrap()
        .layer(service_fn(move |()| {
            let n = c.fetch_add(1, Ordering::Relaxed);
            async move {
                Err::<(), BoxError>(if n.is_multiple_of(2) {
                    NoAvailablePeers::new(2, 2, 0, 0).into()
                } else {
                    CircuitOpen::new(None, Duration::from_secs(1)).into()
                })
            }
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    assert!(err.is::<CircuitOpen>(), "the last attempt's error");
}

#[tokio::test(start_paused = true)]
async fn per_call_and_per_route_retries() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
        log2.lock().push(req.uri().path().to_owned());
        async move { Err::<http::Response<()>, BoxError>(Retryable::yes("down").into()) }
    });
    let layer = RetryLayer::builder()
        .grpc()
        .retries(2)
        .backoff(no_jitter(Backoff::constant(Duration::from_millis(1))))
        .route("/svc/Once", RouteRetry::new().retries(0))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let call = |path: &str, retries: Option<u32>| {
        let mut req = http::Request::post(format!("http://peer{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Some(r) = retries {
            req.call_options_mut().set_retries(r);
        }
        svc.clone().oneshot(req)
    };
    let count = |path: &str| log.lock().iter().filter(|p| *p == path).count();
    let _ = call("/svc/Many", None).await;
    assert_eq!(count("/svc/Many"), 3);
    let _ = call("/svc/Once", None).await;
    assert_eq!(count("/svc/Once"), 1);
    let _ = call("/svc/Call", Some(0)).await;
    assert_eq!(count("/svc/Call"), 1, "0 disables");
    let _ = call("/svc/Once", Some(4)).await;
    assert_eq!(count("/svc/Once"), 1 + 5, "the call's option wins over the route");
}

#[tokio::test(start_paused = true)]
async fn a_user_predicate_replaces_or_extends() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner = service_fn(move |()| {
        let n = c.fetch_add(1, Ordering::Relaxed);
        async move { if n == 0 { Ok::<u32, BoxError>(7) } else { Ok(0) } }
    });
    // Extend: also retry a response of 7.
    let layer = RetryLayer::builder()
        .plain()
        .or_retry_if(|_: &(), r: &Result<u32, BoxError>| {
            if matches!(r, Ok(7)) {
                RetryDecision::Retry
            } else {
                RetryDecision::DoNotRetry
            }
        })
        .build()
        .unwrap();
    assert_eq!(layer.layer(inner.clone()).oneshot(()).await.unwrap(), 0);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // Replace: nothing retried, not even a connection error.
    let layer = RetryLayer::builder()
        .plain()
        .predicate(|_: &(), _: &Result<(), BoxError>| RetryDecision::DoNotRetry)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let _ = layer.layer(counting(true, calls.clone())).oneshot(()).await;
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn peers_are_switched_using_the_attempt_record() {
    // Two peers; the service picks the first peer not in the record, records it
    // and names it in the response. Peer "a" is down.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let inner = service_fn(move |mut req: http::Request<ReplayBody<Full<Bytes>>>| {
        let record = req.attempt_record_mut();
        let peer = ["a", "b"]
            .into_iter()
            .map(PeerId::from)
            .find(|p| !record.contains(p))
            .unwrap_or_else(|| PeerId::from("a"));
        record.record(peer.clone());
        seen2.lock().push((peer.clone(), req.attempt_record().unwrap().len()));
        let status = if peer.as_str() == "a" { 503 } else { 200 };
        async move {
            let mut res = http::Response::builder().status(status).body(()).unwrap();
            res.extensions_mut().insert(peer);
            Ok::<_, BoxError>(res)
        }
    });
    let svc = RetryLayer::builder().http().retries(3).build().unwrap().layer(inner);
    let res = svc
        .oneshot(http::Request::get("http://svc/").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*seen.lock(), [(PeerId::from("a"), 1), (PeerId::from("b"), 2)]);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_budget() {
    let layer = RetryLayer::builder()
        .plain()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .budget(0.2, 1, Duration::from_secs(10))
        .build()
        .unwrap();
    let c1 = Arc::new(AtomicU32::new(0));
    let c2 = Arc::new(AtomicU32::new(0));
    let a = layer.layer(counting(true, c1.clone()));
    let b = layer.clone().layer(counting(true, c2.clone()));
    for _ in 0..10 {
        let _ = a.clone().oneshot(()).await;
        let _ = b.clone().oneshot(()).await;
    }
    // Floor 10 + 20 % of 20 requests = 14 retries in all, whichever service asked.
    assert_eq!(c1.load(Ordering::Relaxed) + c2.load(Ordering::Relaxed), 20 + 14);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_during_backoff_stops_it() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::builder()
        .plain()
        .retries(3)
        .backoff(no_jitter(Backoff::constant(Duration::from_secs(1))))
        .build()
        .unwrap();
    let svc = layer.layer(always_failing(log.clone()));
    let mut call = tokio_test::task::spawn(svc.oneshot(()));
    assert!(call.poll().is_pending());
    assert_eq!(log.lock().len(), 1);
    drop(call);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(log.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_errors_pass_through() {
    let mut mock_svc = {
        let (svc, mut handle) = tower_test::mock::pair::<(), ()>();
        handle.allow(0);
        drop(handle);
        RetryLayer::new().layer(svc)
    };
    let err = futures::future::poll_fn(|cx| mock_svc.poll_ready(cx))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
}

/// A two-peer service whose balancer records the peer in the attempt record
/// (the shared handle in the attempt's copy of the request); peer "a" refuses
/// connections: an error, no response naming the peer.
#[tokio::test(start_paused = true)]
async fn a_peer_recorded_by_an_attempt_that_errored_is_avoided() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
        let record = req.attempt_record().expect("the retry layer started a record").clone();
        let peer = ["a", "b"]
            .into_iter()
            .map(PeerId::from)
            .find(|p| !record.contains(p))
            .unwrap_or_else(|| PeerId::from("a"));
        record.record(peer.clone());
        seen2.lock().push(peer.clone());
        async move {
            if peer.as_str() == "a" {
                return Err::<http::Response<()>, BoxError>(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                );
            }
            Ok(http::Response::new(()))
        }
    });
    let svc = RetryLayer::builder()
        .http()
        .retries(3)
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .build()
        .unwrap()
        .layer(inner);
    let res = svc
        .oneshot(http::Request::get("http://svc/").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*seen.lock(), [PeerId::from("a"), PeerId::from("b")]);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
}

type MockReq = http::Request<ReplayBody<Full<Bytes>>>;

/// The service never gets ready for the retry: the call's deadline still ends
/// it, with the last attempt's error (with and without a backoff sleep first).
#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_wait_for_readiness() {
    for backoff_ms in [0, 100] {
        let (mock, mut handle) = tower_test::mock::pair::<MockReq, http::Response<()>>();
        handle.allow(1);
        let svc = RetryLayer::builder()
            .http()
            .retries(3)
            .backoff(no_jitter(Backoff::constant(Duration::from_millis(backoff_ms))))
            .no_budget()
            .build()
            .unwrap()
            .layer(mock);
        let mut req = http::Request::get("http://peer/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.call_options_mut()
            .set_deadline(Deadline::after(Duration::from_millis(1000)));
        let start = Instant::now();
        let call = tokio::spawn(svc.oneshot(req));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_error(Retryable::yes(Fail(1)));
        let result = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the deadline must end the call while the service is not ready")
            .unwrap();
        let err = result.unwrap_err();
        let marked = err
            .downcast_ref::<Retryable>()
            .expect("the last attempt's error, untouched");
        assert_eq!(marked.inner().downcast_ref::<Fail>(), Some(&Fail(1)));
        assert_eq!(Instant::now() - start, Duration::from_millis(1000));
        drop(handle);
    }
}

/// Answers each call with the next status of `script` (the last one repeats).
type Script = Arc<Mutex<Vec<(u16, Option<&'static str>)>>>;

fn statuses(
    script: Script,
) -> impl Service<MockReq, Response = http::Response<()>, Error = BoxError, Future: Send> + Clone {
    service_fn(move |_: MockReq| {
        let (status, grpc) = {
            let mut s = script.lock();
            if s.len() > 1 { s.remove(0) } else { s[0] }
        };
        let mut builder = http::Response::builder().status(status);
        if let Some(code) = grpc {
            builder = builder.header("grpc-status", code);
        }
        let res = builder.body(()).unwrap();
        async move { Ok::<_, BoxError>(res) }
    })
}

#[tokio::test(start_paused = true)]
async fn only_real_successes_refill_the_throttle() {
    let get = || {
        http::Request::get("http://peer/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Http: a 500 is not retried, and is no success either.
    let layer = RetryLayer::builder()
        .http()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .no_budget()
        .throttle(4, 0.5)
        .build()
        .unwrap();
    let script = Arc::new(Mutex::new(vec![(503, None), (503, None), (500, None)]));
    let svc = layer.layer(statuses(script.clone()));
    let _ = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 2.0, "two failed attempts");
    for _ in 0..10 {
        assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 500);
    }
    assert_eq!(layer.throttle().unwrap().tokens(), 2.0, "a 500 refills nothing");
    *script.lock() = vec![(200, None)];
    let _ = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 2.5, "a 200 refills");

    // Grpc: a trailers-only INTERNAL is no success; no status in the headers is.
    let layer = RetryLayer::builder()
        .grpc()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .no_budget()
        .throttle(4, 0.5)
        .build()
        .unwrap();
    let script = Arc::new(Mutex::new(vec![
        (200, Some("14")),
        (200, Some("14")),
        (200, Some("13")),
    ]));
    let svc = layer.layer(statuses(script.clone()));
    let post = || {
        http::Request::post("http://peer/echo.Echo/Unary")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let _ = svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 2.0);
    for _ in 0..10 {
        let res = svc.clone().oneshot(post()).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "13");
    }
    assert_eq!(layer.throttle().unwrap().tokens(), 2.0, "INTERNAL refills nothing");
    *script.lock() = vec![(200, None)];
    let _ = svc.clone().oneshot(post()).await.unwrap();
    *script.lock() = vec![(200, Some("0"))];
    let _ = svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 3.0, "OK refills");
}

#[tokio::test(start_paused = true)]
async fn a_per_call_retries_option_is_clamped() {
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let inner = service_fn(move |_: MockReq| {
        calls2.fetch_add(1, Ordering::Relaxed);
        async move { Err::<http::Response<()>, BoxError>(Retryable::yes(Fail(0)).into()) }
    });
    let svc = RetryLayer::builder()
        .http()
        .backoff(no_jitter(Backoff::constant(Duration::ZERO)))
        .no_budget()
        .build()
        .unwrap()
        .layer(inner);
    let mut req = http::Request::get("http://peer/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.call_options_mut().set_retries(1_000_000);
    let _ = svc.oneshot(req).await.unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), palisade_retry::MAX_RETRIES + 1);
}

type Chunked = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::io::Error>>>,
>;

/// The first attempt's body stays alive after its 503 (as an h2 connection
/// keeps sending it) and outgrows the cap during the backoff: the retry
/// decided earlier is not sent; the 503 stands.
#[tokio::test(start_paused = true)]
async fn a_body_that_outgrows_the_cap_after_the_retry_was_decided_is_not_resent() {
    let held: Arc<Mutex<Option<ReplayBody<Chunked>>>> = Arc::default();
    let held2 = held.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let inner = service_fn(move |req: http::Request<ReplayBody<Chunked>>| {
        calls2.fetch_add(1, Ordering::Relaxed);
        *held2.lock() = Some(req.into_body());
        async move { Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap()) }
    });
    let svc = RetryLayer::builder()
        .http()
        .replay_cap(6)
        .backoff(no_jitter(Backoff::constant(Duration::from_millis(100))))
        .no_budget()
        .build()
        .unwrap()
        .layer(inner);
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = ["0123", "4567", "89"]
        .into_iter()
        .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    let req = http::Request::put("http://peer/")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let mut call = tokio_test::task::spawn(svc.oneshot(req));
    assert!(call.poll().is_pending(), "backing off before the retry");
    let body = held.lock().take().unwrap();
    let sent = body.collect().await.unwrap().to_bytes();
    assert_eq!(sent, Bytes::from("0123456789"), "the first attempt sends it whole");
    tokio::time::advance(Duration::from_millis(100)).await;
    match call.poll() {
        std::task::Poll::Ready(res) => assert_eq!(res.unwrap().status(), 503),
        std::task::Poll::Pending => panic!("the call must end with the 503"),
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1, "no attempt with a cut-short body");
}

#[tokio::test(start_paused = true)]
async fn a_huge_backoff_waits_instead_of_overflowing_the_clock() {
    // `Instant + Duration::MAX` overflows: the retry must wait "forever", not panic.
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::builder()
        .plain()
        .retries(1)
        .no_budget()
        .backoff(no_jitter(Backoff::constant(Duration::MAX)))
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(log.clone()));
    let call = svc.ready().await.unwrap().call(());
    let outcome = tokio::time::timeout(Duration::from_secs(3600), call).await;
    assert!(outcome.is_err(), "the backoff has not ended after an hour");
    assert_eq!(log.lock().len(), 1, "no second attempt yet");
}

#[tokio::test(start_paused = true)]
async fn each_later_attempt_waits_its_own_delay() {
    // Three retries share one sleep, reset for each: every attempt still
    // waits its own linear delay.
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RetryLayer::builder()
        .plain()
        .retries(3)
        .no_budget()
        .backoff(no_jitter(Backoff::linear(Duration::from_millis(100))))
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(log.clone()));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 4 failed");
    assert_eq!(offsets(&log.lock(), start), vec![0, 100, 300, 600]);
}
