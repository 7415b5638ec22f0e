//! [`CompletionBody::join`] and the [`Joined`] protocol: one body for a
//! stack of tracking layers, reporting what nested bodies would report.
#![allow(clippy::disallowed_types)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use palisade_body::{BodyLimits, CompletionBody, Joined, Settle, track};
use palisade_core::classify::Outcome;
use palisade_core::error::{BoxError, TimedOut, TimeoutKind};
use palisade_core::protocol::Grpc;
use proptest::prelude::*;

mod support;
use support::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A guard that writes down its name and outcome, or that it was dropped unsettled.
struct Probe {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    settled: bool,
}

fn probe(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Probe {
    Probe {
        name,
        log: log.clone(),
        settled: false,
    }
}

impl Settle for Probe {
    fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {}", self.name, outcome.as_str()));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.settled {
            self.log.lock().unwrap().push(format!("{} unsettled", self.name));
        }
    }
}

/// Three layers over one gRPC response: the lowest tracks, the two above join.
fn three_layers(
    body: ScriptBody,
    log: &Arc<Mutex<Vec<String>>>,
) -> http::Response<impl Body<Data = Bytes, Error = BoxError> + Unpin + use<>> {
    let response = Ok::<_, Infallible>(http::Response::new(body));
    let lower = track(&Grpc::default(), response, probe("breaker", log), BodyLimits::NONE);
    let middle = track(
        &Joined(Grpc::default()),
        lower,
        probe("balancer", log),
        BodyLimits::NONE,
    );
    let upper = track(
        &Joined(Grpc::default()),
        middle,
        probe("bulkhead", log),
        BodyLimits::NONE,
    );
    let response = upper.unwrap();
    // One adapter deep, whatever the number of layers.
    let _: &CompletionBody<ScriptBody, _> = response.body();
    response
}

#[tokio::test]
async fn a_body_ended_before_the_join_reports_its_end_to_the_new_hook_at_once() {
    // Empty from the start: the first hook heard the end when wrapped.
    let (first, second) = (Log::default(), Log::default());
    let body = CompletionBody::new(Empty::<Bytes>::new(), first.hook());
    assert_eq!(first.heard(), [Heard::Eos(None)]);
    let body = body.join(second.hook(), BodyLimits::NONE);
    assert_eq!(second.heard(), [Heard::Eos(None)]);
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(
        (first.heard().len(), second.heard().len()),
        (1, 1),
        "nothing more on drop"
    );

    // Read to its trailers, then joined: the new hook hears an end without
    // trailers, as a wrapper made at that point would.
    let (first, second) = (Log::default(), Log::default());
    let mut body = CompletionBody::new(ScriptBody::new([Step::Data("x"), Step::Trailers("14")]), first.hook());
    while next_frame(&mut body).await.is_some() {}
    let mut body = body.join(second.hook(), BodyLimits::NONE);
    assert!(next_frame(&mut body).await.is_none());
    drop(body);
    assert_eq!(first.heard(), [Heard::Eos(Some("14".into()))]);
    assert_eq!(second.heard(), [Heard::Eos(None)]);
}

/// A body that counts how often it is asked whether it ended.
struct Asked<B> {
    inner: B,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl<B: Body + Unpin> Body for Asked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.is_end_stream()
    }
}

#[tokio::test]
async fn the_layers_joining_at_the_head_ask_the_bottom_body_once() {
    // An h2 body takes its connection's lock to say whether it ended: the
    // wrap and every join at the response head (three layers, and whoever
    // reads the body next) ask it once between them.
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = Asked {
        inner: ScriptBody::new([Step::Data("x"), Step::Trailers("0")]),
        asked: asked.clone(),
    };
    let logs = [Log::default(), Log::default(), Log::default()];
    let mut body = CompletionBody::new(inner, logs[0].hook())
        .join(logs[1].hook(), BodyLimits::NONE)
        .join(logs[2].hook(), BodyLimits::NONE);
    assert!(!body.is_end_stream());
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Reading it still finds its end, reported once to each hook.
    while next_frame(&mut body).await.is_some() {}
    assert!(body.is_end_stream());
    for log in &logs {
        assert_eq!(log.heard(), [Heard::Eos(Some("0".into()))]);
    }
}

#[tokio::test]
async fn trailers_reach_every_layer_once_through_one_body() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let body = three_layers(
        ScriptBody::new([Step::Data("x"), Step::Pending, Step::Data("x"), Step::Trailers("14")]),
        &log,
    )
    .into_body();
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    assert_eq!(
        *log.lock().unwrap(),
        ["breaker failure", "balancer failure", "bulkhead failure"],
        "UNAVAILABLE in the trailers, counted once by each layer"
    );
}

#[tokio::test]
async fn an_error_reaches_every_hook_once() {
    let (first, second) = (Log::default(), Log::default());
    let mut body = CompletionBody::new(ScriptBody::new([Step::Data("x"), Step::Error]), first.hook())
        .join(second.hook(), BodyLimits::NONE);
    assert!(next_frame(&mut body).await.unwrap().is_ok());
    let error = next_frame(&mut body).await.unwrap().unwrap_err();
    assert!(error.is::<ScriptError>(), "the inner error, to downcast");
    assert!(next_frame(&mut body).await.is_none(), "nothing after the error");
    drop(body);
    assert_eq!(first.heard(), [Heard::Error("script error".into())]);
    assert_eq!(second.heard(), [Heard::Error("script error".into())]);

    let log = Arc::new(Mutex::new(Vec::new()));
    let body = three_layers(ScriptBody::new([Step::Data("x"), Step::Error]), &log).into_body();
    assert!(body.collect().await.is_err());
    assert_eq!(
        *log.lock().unwrap(),
        ["breaker failure", "balancer failure", "bulkhead failure"]
    );
}

#[tokio::test]
async fn dropped_before_its_end_reports_dropped_to_every_hook() {
    let (first, second) = (Log::default(), Log::default());
    let mut body = CompletionBody::new(ScriptBody::new([Step::Data("x"), Step::Data("x")]), first.hook())
        .join(second.hook(), BodyLimits::NONE);
    assert!(next_frame(&mut body).await.unwrap().is_ok());
    assert!(first.heard().is_empty() && second.heard().is_empty(), "not ended yet");
    drop(body);
    assert_eq!(first.heard(), [Heard::Dropped]);
    assert_eq!(second.heard(), [Heard::Dropped]);

    // Through `track`: a gRPC verdict waiting for the trailers is ignored
    // when the body is dropped, so every guard is released unsettled.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut body = three_layers(ScriptBody::new([Step::Data("x"), Step::Data("x")]), &log).into_body();
    assert!(next_frame(&mut body).await.unwrap().is_ok());
    assert!(log.lock().unwrap().is_empty(), "every guard held until the end");
    drop(body);
    assert_eq!(
        *log.lock().unwrap(),
        ["breaker unsettled", "balancer unsettled", "bulkhead unsettled"]
    );
}

#[tokio::test(start_paused = true)]
async fn joined_limits_merge_and_the_error_names_the_limit_that_fired() {
    let limited = |total: Option<u64>, idle: Option<u64>| BodyLimits {
        total: total.map(ms),
        idle: idle.map(ms),
    };
    // Frames every 40 ms, forever enough.
    let ticking = || Ticking::new([40; 20]);
    async fn ended_by(mut body: impl Body<Data = Bytes, Error = BoxError> + Unpin) -> (TimedOut, Duration) {
        let start = tokio::time::Instant::now();
        loop {
            if let Err(error) = next_frame(&mut body).await.unwrap() {
                return (error.downcast_ref::<TimedOut>().unwrap().clone(), start.elapsed());
            }
        }
    }

    // The joining layer's total limit is earlier: it fires, named.
    let (first, second) = (Log::default(), Log::default());
    let body = CompletionBody::with_limits(ticking(), first.hook(), limited(Some(500), None))
        .join(second.hook(), limited(Some(200), None));
    let (error, after) = ended_by(body).await;
    assert_eq!(
        (error.kind(), error.limit(), after),
        (TimeoutKind::Body, ms(200), ms(200))
    );
    assert_eq!(first.heard(), [Heard::Error("body timeout of 200ms elapsed".into())]);
    assert_eq!(second.heard(), [Heard::Error("body timeout of 200ms elapsed".into())]);

    // The inner total limit is earlier: it stays.
    let body = CompletionBody::with_limits(ticking(), Log::default().hook(), limited(Some(100), None))
        .join(Log::default().hook(), limited(Some(300), None));
    let (error, after) = ended_by(body).await;
    assert_eq!(
        (error.kind(), error.limit(), after),
        (TimeoutKind::Body, ms(100), ms(100))
    );

    // The shorter idle limit applies, from either side, after every frame.
    let slow = || Ticking::new([40, 40, 60, 40]);
    let body = CompletionBody::with_limits(slow(), Log::default().hook(), limited(None, Some(100)))
        .join(Log::default().hook(), limited(None, Some(50)));
    let (error, after) = ended_by(body).await;
    assert_eq!(
        (error.kind(), error.limit(), after),
        (TimeoutKind::BodyIdle, ms(50), ms(130))
    );
    let body = CompletionBody::with_limits(slow(), Log::default().hook(), limited(None, Some(50)))
        .join(Log::default().hook(), limited(None, Some(100)));
    let (error, after) = ended_by(body).await;
    assert_eq!(
        (error.kind(), error.limit(), after),
        (TimeoutKind::BodyIdle, ms(50), ms(130))
    );

    // No limit below: the joining layer's limits still apply.
    let body =
        CompletionBody::new(ticking(), Log::default().hook()).join(Log::default().hook(), limited(Some(90), None));
    let (error, after) = ended_by(body).await;
    assert_eq!((error.limit(), after), (ms(90), ms(90)));
}

/// What a reader saw of a body: each frame's data (or `None` for a
/// non-data frame or an error), and what each hook heard.
type Seen = (Vec<Option<Option<Bytes>>>, Vec<Heard>, Vec<Heard>);

async fn read<B: Body<Data = Bytes> + Unpin>(mut body: B, reads: usize, first: &Log, second: &Log) -> Seen {
    let mut frames = Vec::new();
    for _ in 0..reads {
        match next_frame(&mut body).await {
            Some(Ok(frame)) => frames.push(Some(frame.into_data().ok())),
            Some(Err(_)) => frames.push(None),
            None => break,
        }
    }
    let end = body.is_end_stream();
    drop(body);
    frames.push(Some(Some(Bytes::from(if end { "end" } else { "open" }))));
    (frames, first.heard(), second.heard())
}

proptest! {
    #[test]
    fn joined_reports_what_nested_bodies_report(
        script in proptest::collection::vec(step(), 0..12),
        reads in 0usize..14,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (nested, joined) = runtime.block_on(async {
            let (first, second) = (Log::default(), Log::default());
            let body = CompletionBody::new(CompletionBody::new(ScriptBody::new(script.clone()), first.hook()), second.hook());
            let nested = read(body, reads, &first, &second).await;
            let (first, second) = (Log::default(), Log::default());
            let body = CompletionBody::new(ScriptBody::new(script.clone()), first.hook()).join(second.hook(), BodyLimits::NONE);
            let joined = read(body, reads, &first, &second).await;
            (nested, joined)
        });
        prop_assert_eq!(nested.1.len(), 1, "reported once: {:?}", nested);
        prop_assert_eq!(nested, joined);
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Data("x")),
        1 => Just(Step::Trailers("0")),
        1 => Just(Step::Trailers("14")),
        1 => Just(Step::Error),
        2 => Just(Step::Pending),
    ]
}

#[test]
fn a_hook_hears_the_end_once_even_when_the_body_is_joined_twice() {
    let hooks: [Log; 3] = Default::default();
    let body = CompletionBody::new(ScriptBody::new([Step::Data("x")]), hooks[0].hook())
        .join(hooks[1].hook(), BodyLimits::NONE)
        .join(hooks[2].hook(), BodyLimits::NONE);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let bytes = runtime.block_on(body.collect()).unwrap().to_bytes();
    assert_eq!(bytes, "x");
    for hook in &hooks {
        assert_eq!(hook.heard(), [Heard::Eos(None)]);
    }
}

#[test]
fn joined_inspects_classifies_and_reports_grpc_as_the_protocol_it_wraps() {
    use palisade_core::classify::{Classify, Verdict};
    use palisade_core::options::CallOptionsExt;
    use palisade_core::protocol::{Http, Inspect, IsGrpc};

    // The timeout writes `grpc-timeout` only for gRPC protocols.
    const { assert!(<Joined<Grpc> as IsGrpc>::IS_GRPC) };
    const { assert!(!<Joined<Http> as IsGrpc>::IS_GRPC) };

    let joined = Joined(Grpc::default());
    let mut request = http::Request::post("/echo.Echo/Unary").body(()).unwrap();
    request.call_options_mut().set_retries(0);
    assert_eq!(joined.route(&request), Some("/echo.Echo/Unary"));
    assert_eq!(joined.method(&request), Some(&http::Method::POST));
    assert!(joined.call_options(&request).is_some());
    assert!(joined.headers_mut(&mut request).is_some());
    assert!(joined.extensions_mut(&mut request).is_some());

    // A trailers-only DEADLINE_EXCEEDED is the peer enforcing the deadline, as for `Grpc`.
    let mut deadline = http::Response::new(());
    deadline
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static("4"));
    assert!(Classify::<_, ()>::is_deadline_response(&joined, &deadline));
    let ok = http::Response::new(());
    assert!(matches!(
        Classify::<_, ()>::classify_response(&joined, &ok),
        Verdict::AtEndOfStream(_)
    ));
    assert_eq!(
        Classify::<http::Response<()>, ()>::abandon_policy(&joined),
        Classify::<http::Response<()>, ()>::abandon_policy(&Grpc::default())
    );
}
