//! The fallback layer's behaviour, through its public API, against in-process services.
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::error::{CircuitOpen, NoAvailablePeers, TimedOut, TimeoutKind};
use palisade_core::event::{Event, EventKind, LayerName};
use palisade_core::protocol::{GrpcCode, Http};
use palisade_fallback::policy::ClassifiedFailure;
use palisade_fallback::source::Value;
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

use palisade_fallback::error::{BoxError, FailedResponse, FallbackFailed};
use palisade_fallback::{CallFallback, FallbackLayer, FallbackReason, FromFallback, Served};

type Resp = http::Response<String>;

fn open() -> BoxError {
    CircuitOpen::new(Some("10.0.0.1:80".into()), Duration::from_secs(3)).into()
}

fn timed_out() -> BoxError {
    TimedOut::new(TimeoutKind::Total, Duration::from_secs(1)).into()
}

/// A backend that fails with `error()` for requests ending in "!" and echoes otherwise.
fn backend(
    error: fn() -> BoxError,
) -> impl Service<http::Request<String>, Response = Resp, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: http::Request<String>| async move {
        if req.body().ends_with('!') {
            Err(error())
        } else {
            Ok(http::Response::new(format!("echo {}", req.body())))
        }
    })
}

fn req(body: &str) -> http::Request<String> {
    http::Request::post("http://peer/echo").body(body.to_owned()).unwrap()
}

fn mark(resp: &Resp) -> Option<FromFallback> {
    resp.extensions().get::<FromFallback>().copied()
}

#[tokio::test]
async fn value_source_answers_errors_and_marks_http_responses() {
    let layer = FallbackLayer::value(http::Response::new("fallback".to_owned()));
    let svc = layer.layer(backend(open));

    let ok = svc.clone().oneshot(req("hi")).await.unwrap();
    assert_eq!(ok.body(), "echo hi");
    assert_eq!(mark(&ok), None);

    let fell = svc.clone().oneshot(req("hi!")).await.unwrap();
    assert_eq!(fell.body(), "fallback");
    assert_eq!(
        mark(&fell),
        Some(FromFallback {
            reason: FallbackReason::CircuitOpen,
            per_call: false
        })
    );
    // Cloned each time.
    let again = svc.oneshot(req("x!")).await.unwrap();
    assert_eq!(again.body(), "fallback");
}

#[tokio::test]
async fn a_future_polled_after_completion_fails_with_the_typed_error() {
    use palisade_core::error::PolledAfterCompletion;
    let mut svc = FallbackLayer::value(http::Response::new("fallback".to_owned())).layer(backend(open));
    for body in ["hi", "hi!"] {
        svc.ready().await.unwrap();
        let mut call = tokio_test::task::spawn(svc.call(req(body)));
        let first = tokio_test::assert_ready!(call.poll());
        assert!(first.is_ok(), "answered by the backend or the fallback");
        let again = tokio_test::assert_ready!(call.poll()).unwrap_err();
        let typed = again.downcast_ref::<PolledAfterCompletion>().expect("the typed error");
        assert_eq!(typed.layer(), LayerName::Fallback);
    }
}

#[tokio::test]
async fn fn_source_gets_the_error_and_the_kept_value() {
    let layer = FallbackLayer::builder()
        .http()
        .keep(|r: &http::Request<String>| r.body().len())
        .from_fn(|error: &BoxError, len: usize| {
            let open = error.downcast_ref::<CircuitOpen>().expect("the inner error");
            http::Response::new(format!("{len} bytes, retry in {:?}", open.retry_in()))
        })
        .build()
        .unwrap();
    let resp = layer.layer(backend(open)).oneshot(req("four!")).await.unwrap();
    assert_eq!(resp.body(), "5 bytes, retry in 3s");
    assert!(mark(&resp).is_some());
}

#[tokio::test]
async fn try_fn_source_that_fails_yields_fallback_failed_with_both_causes() {
    #[derive(Debug, PartialEq)]
    struct CacheMiss(u32);
    impl std::fmt::Display for CacheMiss {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cache miss for key {}", self.0)
        }
    }
    impl std::error::Error for CacheMiss {}

    let layer = FallbackLayer::try_from_fn(|_: &BoxError, ()| Err::<Resp, _>(CacheMiss(42)));
    let err = layer.layer(backend(timed_out)).oneshot(req("x!")).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().expect("FallbackFailed");
    assert_eq!(
        failed.original().downcast_ref::<TimedOut>(),
        Some(&TimedOut::new(TimeoutKind::Total, Duration::from_secs(1)))
    );
    assert_eq!(failed.fallback().downcast_ref::<CacheMiss>(), Some(&CacheMiss(42)));
    let message = err.to_string();
    assert!(message.contains("cache miss for key 42"), "{message}");
    assert!(message.contains("total timeout of 1s elapsed"), "{message}");

    // And a try_fn that succeeds answers.
    let layer = FallbackLayer::try_from_fn(|_: &BoxError, ()| Ok::<_, CacheMiss>(http::Response::new("hit".into())));
    let resp = layer.layer(backend(timed_out)).oneshot(req("x!")).await.unwrap();
    assert_eq!(resp.body(), "hit");
    assert_eq!(mark(&resp).map(|m| m.reason), Some(FallbackReason::TimedOut));
}

#[tokio::test(start_paused = true)]
async fn async_source_answers_after_its_own_wait_or_fails_with_both_causes() {
    let layer = FallbackLayer::builder()
        .http()
        .keep(|r: &http::Request<String>| r.body().clone())
        .from_async(|error: &BoxError, body: String| {
            let kind = FallbackReason::of(&**error);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if body.starts_with("bad") {
                    Err("secondary down")
                } else {
                    Ok(http::Response::new(format!("{kind} for {body}")))
                }
            }
        })
        .build()
        .unwrap();
    let svc = layer.layer(backend(open));
    let resp = svc.clone().oneshot(req("x!")).await.unwrap();
    assert_eq!(resp.body(), "circuit open for x!");
    assert!(mark(&resp).is_some());

    let err = svc.oneshot(req("bad!")).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.original().is::<CircuitOpen>());
    assert_eq!(failed.fallback().to_string(), "secondary down");
}

#[tokio::test]
async fn service_source_is_driven_to_readiness_and_sent_the_kept_request() {
    let (cache, mut handle) = tower_test::mock::pair::<String, Resp>();
    handle.allow(0);
    let layer = FallbackLayer::builder()
        .http()
        .keep(|r: &http::Request<String>| format!("cache:{}", r.body()))
        .from_service(cache)
        .build()
        .unwrap();
    let svc = layer.layer(backend(open));
    let mut call = tokio_test::task::spawn(svc.oneshot(req("k!")));
    assert!(call.poll().is_pending(), "the cache is not ready yet");
    handle.allow(1);
    assert!(call.poll().is_pending());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "cache:k!");
    send.send_response(http::Response::new("from cache".into()));
    let resp = call.await.unwrap();
    assert_eq!(resp.body(), "from cache");
    assert_eq!(mark(&resp).map(|m| m.reason), Some(FallbackReason::CircuitOpen));
}

#[tokio::test]
async fn dropping_the_call_while_the_fallback_service_is_not_ready_sends_nothing() {
    let (cache, mut handle) = tower_test::mock::pair::<(), Resp>();
    handle.allow(0);
    let layer = FallbackLayer::from_service(cache);
    let svc = layer.layer(backend(open));
    let mut call = tokio_test::task::spawn(svc.oneshot(req("k!")));
    assert!(call.poll().is_pending());
    drop(call);
    handle.allow(1);
    // The layer still holds the cache service, so the handle stays open: a
    // request sent would be ready at once, none is.
    assert!(tokio_test::task::spawn(handle.next_request()).poll().is_pending());
}

#[test]
fn services_and_futures_are_send_sync_static_for_typical_sources() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn assert_future_send<S: Service<R>, R>(svc: &mut S, r: R)
    where
        S::Future: Send + 'static,
    {
        drop(svc.call(r));
    }
    let layer = FallbackLayer::builder()
        .http()
        .on_refused()
        .on_failed_response()
        .keep_head()
        .from_async(|_: &BoxError, _head: palisade_fallback::extract::RequestHead| async {
            Ok::<_, BoxError>(http::Response::new(String::new()))
        })
        .listener(Arc::new(|_: &Event<'_>| {}))
        .build()
        .unwrap();
    assert_send_sync(&layer);
    let mut svc = layer.layer(backend(open));
    assert_send_sync(&svc);
    assert_future_send(&mut svc, req("x"));
}

#[tokio::test]
async fn service_source_error_is_wrapped_with_the_original() {
    let cache = service_fn(|_: ()| async { Err::<Resp, BoxError>("cache unreachable".into()) });
    let layer = FallbackLayer::from_service(cache);
    let err = layer.layer(backend(open)).oneshot(req("k!")).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.original().is::<CircuitOpen>());
    assert_eq!(failed.fallback().to_string(), "cache unreachable");
}

#[tokio::test]
async fn excluded_error_passes_through_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let address = Arc::new(AtomicUsize::new(0));
    let addr = address.clone();
    let inner = service_fn(move |_: ()| {
        let addr = addr.clone();
        async move {
            let error = timed_out();
            addr.store(&*error as *const _ as *const () as usize, Ordering::SeqCst);
            Err::<Served<()>, _>(error)
        }
    });
    let layer = FallbackLayer::builder()
        .plain()
        .on_error::<CircuitOpen>()
        .on_error::<NoAvailablePeers>()
        .from_fn(move |_: &BoxError, ()| {
            seen.fetch_add(1, Ordering::SeqCst);
            Served {
                value: (),
                from_fallback: None,
            }
        })
        .unmarked()
        .build()
        .unwrap();
    let err = layer.layer(inner).oneshot(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<TimedOut>(),
        Some(&TimedOut::new(TimeoutKind::Total, Duration::from_secs(1)))
    );
    assert_eq!(
        &*err as *const _ as *const () as usize,
        address.load(Ordering::SeqCst),
        "the same box"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the fallback was not called");
}

#[tokio::test]
async fn type_rules_match_each_named_kind_and_closures() {
    let layer = FallbackLayer::builder()
        .plain()
        .on_error::<CircuitOpen>()
        .on_error_where(|e| e.to_string().contains("teapot"))
        .value(7u32)
        .served()
        .build()
        .unwrap();
    let svc = |e: fn() -> BoxError| layer.layer(service_fn(move |_: ()| async move { Err::<u32, _>(e()) }));
    assert_eq!(svc(open).oneshot(()).await.unwrap().value, 7);
    assert_eq!(svc(|| "i am a teapot".into()).oneshot(()).await.unwrap().value, 7);
    assert!(svc(timed_out).oneshot(()).await.unwrap_err().is::<TimedOut>());
}

#[tokio::test]
async fn refused_and_timeout_helpers_name_the_core_kinds() {
    use palisade_core::error::{BulkheadFull, BulkheadRejection, DeadlineExceeded};
    let refused = FallbackLayer::builder()
        .plain()
        .on_refused()
        .value(1u8)
        .served()
        .build()
        .unwrap();
    let timeouts = FallbackLayer::builder()
        .plain()
        .on_timeout()
        .value(1u8)
        .served()
        .build()
        .unwrap();
    type MakeError = fn() -> BoxError;
    let errors: [(MakeError, bool, bool); 6] = [
        (open, true, false),
        (|| NoAvailablePeers::new(2, 2, 0, 0).into(), true, false),
        (
            || BulkheadFull::new(3, 10, BulkheadRejection::QueueFull).into(),
            true,
            false,
        ),
        (timed_out, false, true),
        (|| DeadlineExceeded::before_send().into(), false, true),
        (|| "io".into(), false, false),
    ];
    for (error, by_refused, by_timeouts) in errors {
        let inner = service_fn(move |_: ()| async move { Err::<u8, _>(error()) });
        let got = refused.layer(inner).oneshot(()).await;
        assert_eq!(got.is_ok(), by_refused, "{}", error());
        let got = timeouts.layer(inner).oneshot(()).await;
        assert_eq!(got.is_ok(), by_timeouts, "{}", error());
    }
}

#[tokio::test]
async fn per_call_fallback_wins_over_the_layers() {
    let layer = FallbackLayer::builder()
        .http()
        .value(http::Response::new("layer".to_owned()))
        .build()
        .unwrap();
    let svc = layer.layer(backend(open));

    let mut request = req("x!");
    request
        .extensions_mut()
        .insert(CallFallback::<Resp>::new(|e| http::Response::new(format!("call: {e}"))));
    let resp = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(
        resp.body(),
        "call: circuit open for peer 10.0.0.1:80: next probe allowed in 3s"
    );
    assert_eq!(
        mark(&resp),
        Some(FromFallback {
            reason: FallbackReason::CircuitOpen,
            per_call: true
        })
    );

    // Without one, the layer's answers.
    let resp = svc.clone().oneshot(req("x!")).await.unwrap();
    assert_eq!(resp.body(), "layer");
    assert_eq!(mark(&resp).map(|m| m.per_call), Some(false));

    // A successful call ignores it.
    let mut request = req("fine");
    request
        .extensions_mut()
        .insert(CallFallback::value(http::Response::new("unused".to_owned())));
    assert_eq!(svc.oneshot(request).await.unwrap().body(), "echo fine");
}

#[tokio::test]
async fn per_call_fallback_obeys_the_predicate_and_needs_a_protocol_with_extensions() {
    let layer = FallbackLayer::builder()
        .http()
        .on_error::<CircuitOpen>()
        .value(http::Response::new("layer".to_owned()))
        .build()
        .unwrap();
    let mut request = req("x!");
    request
        .extensions_mut()
        .insert(CallFallback::value(http::Response::new("call".to_owned())));
    let err = layer.layer(backend(timed_out)).oneshot(request).await.unwrap_err();
    assert!(err.is::<TimedOut>());

    // The Plain protocol never looks at extensions.
    let plain = FallbackLayer::value(http::Response::new("layer".to_owned()));
    let mut request = req("x!");
    request
        .extensions_mut()
        .insert(CallFallback::value(http::Response::new("call".to_owned())));
    assert_eq!(
        plain.layer(backend(open)).oneshot(request).await.unwrap().body(),
        "layer"
    );
}

fn status_backend(
    status: u16,
    grpc_status: Option<&'static str>,
) -> impl Service<http::Request<()>, Response = Resp, Error = BoxError> + Clone {
    service_fn(move |_: http::Request<()>| async move {
        let mut builder = http::Response::builder().status(status);
        if let Some(code) = grpc_status {
            builder = builder.header("grpc-status", code);
        }
        Ok::<_, BoxError>(builder.body("from peer".to_owned()).unwrap())
    })
}

#[tokio::test]
async fn http_5xx_heads_are_answered_when_asked() {
    let layer = FallbackLayer::builder()
        .http()
        .on_failed_response()
        .from_fn(|e: &BoxError, ()| {
            let failed = e.downcast_ref::<FailedResponse>().unwrap();
            http::Response::new(format!("fallback after {}", failed.status().unwrap().as_u16()))
        })
        .build()
        .unwrap();
    let resp = layer
        .layer(status_backend(503, None))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "fallback after 503");
    assert_eq!(mark(&resp).map(|m| m.reason), Some(FallbackReason::FailedResponse));
    let resp = layer
        .layer(status_backend(404, None))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "from peer");
    assert_eq!(mark(&resp), None);

    // Without the rule a 503 passes.
    let plain = FallbackLayer::value(http::Response::new("fallback".to_owned()));
    assert_eq!(
        plain
            .layer(status_backend(503, None))
            .oneshot(http::Request::new(()))
            .await
            .unwrap()
            .body(),
        "from peer"
    );
}

/// The common spelling: protocol right after the source, one rule as its own type.
fn failed_heads_answered() -> FallbackLayer<Value<Resp>, Http, ClassifiedFailure> {
    FallbackLayer::builder()
        .http()
        .on_failed_response()
        .value(http::Response::new("fallback".to_owned()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_named_layer_and_added_rules_each_answer() {
    let named = failed_heads_answered();
    let resp = named
        .layer(status_backend(503, None))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "fallback");

    // A second rule nests; both still replace a response.
    let both = FallbackLayer::builder()
        .http()
        .on_failed_response()
        .on_response(|r: &Resp| r.status() == 404)
        .value(http::Response::new("fallback".to_owned()))
        .build()
        .unwrap();
    for (status, body) in [(503, "fallback"), (404, "fallback"), (200, "from peer")] {
        let resp = both
            .layer(status_backend(status, None))
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(resp.body(), body, "status {status}");
    }
}

#[tokio::test]
async fn grpc_trailers_only_failures_are_answered_streams_pass() {
    let layer = FallbackLayer::builder()
        .grpc()
        .on_failed_response()
        .from_fn(|e: &BoxError, ()| {
            let failed = e.downcast_ref::<FailedResponse>().unwrap();
            assert_eq!(failed.grpc_status(), Some(GrpcCode::UNAVAILABLE));
            http::Response::new("fallback".to_owned())
        })
        .build()
        .unwrap();
    let resp = layer
        .layer(status_backend(200, Some("14")))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "fallback");
    // NOT_FOUND is not a failure; a stream's verdict waits for its trailers.
    let resp = layer
        .layer(status_backend(200, Some("5")))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "from peer");
    let resp = layer
        .layer(status_backend(200, None))
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.body(), "from peer");
}

#[tokio::test]
async fn closure_response_rule() {
    let layer = FallbackLayer::builder()
        .plain()
        .on_response(|r: &u32| *r == 0)
        .value(99u32)
        .served()
        .build()
        .unwrap();
    let svc = |n: u32| layer.layer(service_fn(move |_: ()| async move { Ok::<_, BoxError>(n) }));
    let zero = svc(0).oneshot(()).await.unwrap();
    assert_eq!(
        (zero.value, zero.from_fallback.map(|f| f.reason)),
        (99, Some(FallbackReason::FailedResponse))
    );
    assert_eq!(
        svc(5).oneshot(()).await.unwrap(),
        Served {
            value: 5,
            from_fallback: None
        }
    );
}

#[tokio::test]
async fn listeners_hear_each_fallback_shared_by_every_service_of_one_layer() {
    let heard = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = heard.clone();
    let layer = FallbackLayer::builder()
        .http()
        .listener(Arc::new(move |e: &Event<'_>| {
            assert_eq!(e.layer, LayerName::Fallback);
            if let EventKind::Fallback { reason } = e.kind {
                log.lock().push(reason.to_owned());
            }
        }))
        .value(http::Response::new(String::new()))
        .build()
        .unwrap();
    let a = layer.layer(backend(open));
    let b = layer.layer(backend(timed_out));
    a.clone().oneshot(req("ok")).await.unwrap();
    a.clone().oneshot(req("x!")).await.unwrap();
    a.oneshot(req("x!")).await.unwrap();
    b.oneshot(req("y!")).await.unwrap();
    assert_eq!(*heard.lock(), ["circuit open", "circuit open", "timed out"]);
}

fn req_to(path: &str, body: &str) -> http::Request<String> {
    http::Request::post(format!("http://peer{path}"))
        .body(body.to_owned())
        .unwrap()
}

#[tokio::test]
async fn routes_override_which_failures_are_answered() {
    let heard = Arc::new(AtomicUsize::new(0));
    let count = heard.clone();
    let layer = FallbackLayer::builder()
        .http()
        .on_error::<CircuitOpen>()
        .on_failed_response()
        .route("/pay", palisade_fallback::RouteFallback::Off)
        .route(
            "/search",
            palisade_fallback::RouteFallback::OnErrors(
                palisade_fallback::policy::ErrorPolicy::any().or_type::<TimedOut>(),
            ),
        )
        .listener(Arc::new(move |e: &Event<'_>| {
            if matches!(e.kind, EventKind::Fallback { .. }) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .value(http::Response::new("fallback".to_owned()))
        .build()
        .unwrap();

    // A route without an override follows the layer: CircuitOpen is answered,
    // TimedOut is not.
    let open_svc = layer.layer(backend(open));
    let timeout_svc = layer.layer(backend(timed_out));
    assert_eq!(
        open_svc.clone().oneshot(req_to("/echo", "x!")).await.unwrap().body(),
        "fallback"
    );
    assert!(
        timeout_svc
            .clone()
            .oneshot(req_to("/echo", "x!"))
            .await
            .unwrap_err()
            .is::<TimedOut>()
    );
    assert_eq!(heard.load(Ordering::Relaxed), 1);

    // Off: the error passes through untouched, nothing is heard, even with a
    // per-call fallback.
    let mut request = req_to("/pay", "x!");
    request
        .extensions_mut()
        .insert(CallFallback::value(http::Response::new("call".to_owned())));
    let err = open_svc.clone().oneshot(request).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(heard.load(Ordering::Relaxed), 1);

    // Off also lets a failed response through as the peer's response.
    let resp = layer
        .layer(status_backend(503, None))
        .oneshot(http::Request::post("http://peer/pay").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.body(), "from peer");
    assert_eq!(mark(&resp), None);

    // OnErrors: the route's own predicate, not the layer's.
    assert_eq!(
        timeout_svc.oneshot(req_to("/search", "x!")).await.unwrap().body(),
        "fallback"
    );
    assert!(
        open_svc
            .oneshot(req_to("/search", "x!"))
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    assert_eq!(heard.load(Ordering::Relaxed), 2);
}

#[test]
fn a_route_configured_twice_is_an_error_at_build() {
    let err = FallbackLayer::builder()
        .http()
        .route("/pay", palisade_fallback::RouteFallback::Off)
        .route("/other", palisade_fallback::RouteFallback::Off)
        .route(
            "/pay",
            palisade_fallback::RouteFallback::OnErrors(palisade_fallback::policy::ErrorPolicy::any()),
        )
        .value(http::Response::new("fallback".to_owned()))
        .build()
        .unwrap_err();
    assert_eq!(err.layer(), "fallback");
    assert_eq!(err.field(), "route");
    assert!(err.to_string().contains("`/pay` is configured twice"), "{err}");
    let err = FallbackLayer::builder()
        .http()
        .route("", palisade_fallback::RouteFallback::Off)
        .value(http::Response::new(String::new()))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "route");
}

#[tokio::test]
async fn the_source_is_shared_by_clones_and_services_of_one_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let layer = FallbackLayer::from_fn(move |_: &BoxError, ()| {
        seen.fetch_add(1, Ordering::SeqCst);
        http::Response::new(String::new())
    });
    let a = layer.layer(backend(open));
    let b = layer.clone().layer(backend(open));
    a.clone().oneshot(req("1!")).await.unwrap();
    a.oneshot(req("2!")).await.unwrap();
    b.oneshot(req("3!")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(Arc::strong_count(&calls), 2, "one closure, shared");
}

#[test]
fn build_without_a_source_names_the_field() {
    let err = FallbackLayer::builder()
        .plain()
        .on_error::<CircuitOpen>()
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "source");
    assert_eq!(err.layer(), "fallback");
}

/// A service whose `poll_ready` fails.
#[derive(Clone)]
struct Broken;

impl Service<()> for Broken {
    type Response = Resp;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Resp, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(open()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(http::Response::new(String::new())))
    }
}

#[tokio::test]
async fn poll_ready_errors_are_not_answered() {
    let layer = FallbackLayer::value(http::Response::new("fallback".to_owned()));
    let err = layer.layer(Broken).ready().await.err().expect("poll_ready failed");
    assert!(err.is::<CircuitOpen>());
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_drops_the_kept_value_and_the_fallback_in_flight() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let layer = FallbackLayer::builder()
        .http()
        .keep(move |_: &http::Request<String>| DropFlag(d.clone()))
        .from_async(|_: &BoxError, flag: DropFlag| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(flag);
            Ok::<_, BoxError>(http::Response::new(String::new()))
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(backend(open));

    // Dropped while the inner call runs (before its first poll).
    let future = svc.ready().await.unwrap().call(req("a!"));
    drop(future);
    assert_eq!(drops.load(Ordering::SeqCst), 1);

    // Dropped while the fallback runs.
    let mut call = tokio_test::task::spawn(svc.ready().await.unwrap().call(req("a!")));
    assert!(call.poll().is_pending());
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the fallback holds the kept value");
    drop(call);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn polling_after_completion_is_an_error_not_a_panic() {
    let layer = FallbackLayer::value(http::Response::new(String::new()));
    let mut svc = layer.layer(backend(open));
    let mut future = Box::pin(svc.ready().await.unwrap().call(req("ok")));
    assert!(future.as_mut().await.is_ok());
    let waker = futures_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(matches!(Pin::new(&mut future).poll(&mut cx), Poll::Ready(Err(_))));
}

fn futures_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Open,
    Timeout,
    Other,
}

fn error_of(kind: Kind) -> BoxError {
    match kind {
        Kind::Open => open(),
        Kind::Timeout => timed_out(),
        Kind::Other => "other".into(),
    }
}

proptest! {
    /// Against a reference model: a success passes unmarked; an error is answered
    /// iff the predicate accepts it (any error when no type is named), else it is
    /// returned as it is.
    #[test]
    fn matches_the_reference_model(
        results in proptest::collection::vec(prop_oneof![
            any::<u8>().prop_map(Ok),
            prop_oneof![Just(Kind::Open), Just(Kind::Timeout), Just(Kind::Other)].prop_map(Err),
        ], 1..20),
        on_open in any::<bool>(),
        on_timeout in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut builder = FallbackLayer::builder().plain();
        if on_open { builder = builder.on_error::<CircuitOpen>(); }
        if on_timeout { builder = builder.on_error::<TimedOut>(); }
        let layer = builder.value(255u8).served().build().unwrap();
        let svc = layer.layer(service_fn(|r: Result<u8, Kind>| async move { r.map_err(error_of) }));
        for r in results {
            let got = rt.block_on(svc.clone().oneshot(r));
            let accepts = |k: Kind| (!on_open && !on_timeout)
                || (on_open && matches!(k, Kind::Open))
                || (on_timeout && matches!(k, Kind::Timeout));
            match (r, got) {
                (Ok(n), Ok(s)) => prop_assert_eq!(s, Served { value: n, from_fallback: None }),
                (Err(k), Ok(s)) => {
                    prop_assert!(accepts(k));
                    prop_assert_eq!(s.value, 255);
                    prop_assert!(s.is_fallback());
                }
                (Err(k), Err(e)) => {
                    prop_assert!(!accepts(k));
                    prop_assert_eq!(e.to_string(), error_of(k).to_string());
                }
                (Ok(_), Err(e)) => prop_assert!(false, "success turned into {}", e),
            }
        }
    }
}

#[cfg(feature = "metrics")]
mod metrics_feature {
    use super::*;
    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use std::sync::atomic::AtomicU64;

    /// Records the `palisade_fallback_total{reason="circuit open"}` counter.
    #[derive(Default)]
    struct OneCounter {
        seen: parking_lot::Mutex<Vec<String>>,
        value: Arc<AtomicU64>,
    }

    impl Recorder for OneCounter {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            self.seen.lock().push(format!("{}{{{}}}", key.name(), labels.join(",")));
            Counter::from_arc(self.value.clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn each_fallback_increments_the_counter() {
        let recorder = OneCounter::default();
        let layer = FallbackLayer::value(http::Response::new(String::new()));
        let mut svc = layer.layer(backend(open));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        metrics::with_local_recorder(&recorder, || {
            for body in ["ok", "a!", "b!"] {
                let mut future = Box::pin(svc.call(req(body)));
                assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
            }
        });
        assert_eq!(recorder.value.load(Ordering::SeqCst), 2);
        assert_eq!(
            *recorder.seen.lock(),
            [
                "palisade_fallback_total{reason=circuit open}",
                "palisade_fallback_total{reason=circuit open}"
            ]
        );
    }
}

#[tokio::test]
async fn only_routes_answers_the_named_routes_and_lets_every_other_call_through() {
    let layer = FallbackLayer::builder()
        .http()
        .on_failed_response()
        .only_routes()
        .route(
            "/search",
            palisade_fallback::RouteFallback::OnErrors(palisade_fallback::policy::ErrorPolicy::any()),
        )
        .value(http::Response::new("fallback".to_owned()))
        .build()
        .unwrap();

    // The named route: an error and a failed response are answered.
    let svc = layer.layer(backend(open));
    assert_eq!(
        svc.clone().oneshot(req_to("/search", "x!")).await.unwrap().body(),
        "fallback"
    );
    let failed = layer
        .layer(status_backend(503, None))
        .oneshot(http::Request::post("http://peer/search").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (failed.status(), failed.body().as_str()),
        (http::StatusCode::OK, "fallback")
    );

    // Any other route: the error and the failed response pass through untouched.
    assert!(
        svc.oneshot(req_to("/echo", "x!"))
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    let failed = layer
        .layer(status_backend(503, None))
        .oneshot(http::Request::post("http://peer/echo").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (failed.status(), failed.body().as_str()),
        (http::StatusCode::SERVICE_UNAVAILABLE, "from peer")
    );
    assert_eq!(mark(&failed), None);
}

#[test]
fn only_routes_without_a_route_is_an_error_at_build() {
    let error = FallbackLayer::builder()
        .http()
        .only_routes()
        .value(http::Response::new(String::new()))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "only_routes");
}
