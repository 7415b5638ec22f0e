//! The breaker against a small reference model: random sequences of calls,
//! gRPC responses whose bodies end, fail or are dropped, cancelled futures,
//! availability questions and time steps, under a random abandon policy.
//! The model checks the state and the probe-slot accounting after every step.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::NotFound;
use futures::FutureExt;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use http_body::Frame;
use http_body_util::BodyExt;
use palisade_circuit_breaker::{CallGuard, CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState};
use palisade_core::classify::{AbandonPolicy, ClassifyExt, Outcome, ProbeVerdict};
use palisade_core::error::BoxError;
use palisade_core::peer::{Availability, CheckAvailability, Unavailable};
use palisade_core::protocol::{Grpc, GrpcEos};
use proptest::prelude::*;
use tower::Service;

#[derive(Clone, Copy, Debug)]
struct Cfg {
    /// `None`: the consecutive policy is off.
    threshold: Option<u32>,
    /// The rate policies.
    rate: Option<Rate>,
    window: u64,
    cooldown: u64,
    max_cooldown: u64,
    probes: u32,
    successes: u32,
    probe_timeout: u64,
}

#[derive(Clone, Copy, Debug)]
struct Rate {
    min_requests: u32,
    /// The failure-rate threshold, if that policy is on.
    threshold: Option<f64>,
    window_ms: u64,
    buckets: u32,
    /// The slow-call policy: (slow_call_duration ms, slow-call rate threshold).
    slow: Option<(u64, f64)>,
}

/// What the inner service answers.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// An error: a failure, or a business error the classifier ignores.
    Error(Outcome),
    /// A gRPC response whose head decides (`grpc-status` in the headers):
    /// `ok` is status 0, else 14. `open`: its body has not ended yet.
    Unary { ok: bool, open: bool },
    /// An http 503 from a proxy: a failure known from the head.
    Http503 { open: bool },
    /// A gRPC stream: its status waits for the trailers.
    Stream { open: bool },
}

/// How an open body ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Trailers with `grpc-status` 0 (`true`) or 14.
    Trailers(bool),
    /// The end of the stream, without trailers.
    Finish,
    /// An error mid-stream.
    Error,
    /// The caller drops it.
    Drop,
}

#[derive(Clone, Debug)]
enum Step {
    /// A call that completes at once with this reply.
    Call(Reply),
    /// A call left in flight.
    Start,
    Complete(usize, Reply),
    /// The caller drops a pending call's future.
    Drop(usize),
    /// An open response body ends.
    EndBody(usize, End),
    Advance(u64),
    /// Advance by exactly (or 1 ms short of) the window, cooldown or probe timeout.
    AdvanceExact(u8, bool),
    Ask,
}

#[derive(Debug, PartialEq, Eq)]
enum MState {
    Closed,
    Open {
        until: u64,
    },
    HalfOpen {
        probes: BTreeSet<u64>,
        /// Probes whose healthy head arrived and whose body is still open:
        /// successes at `probe_timeout` (`ProbeVerdict::AtEnd`).
        streaming: BTreeSet<u64>,
        successes: u32,
        last_admit: u64,
    },
}

/// The reference: times in ms, probes as a set of call ids.
#[derive(Debug)]
struct Model {
    cfg: Cfg,
    state: MState,
    epoch: u64,
    run: u32,
    last_failure: Option<u64>,
    failed_rounds: u32,
    /// Completed closed-state calls: (bucket epoch, failed, slow).
    window: Vec<(u64, bool, bool)>,
}

#[derive(Clone, Copy, Debug)]
struct MCall {
    id: u64,
    epoch: u64,
    probe: bool,
    /// Admission time (ms).
    start: u64,
}

impl Model {
    fn tick(&mut self, now: u64) {
        match &mut self.state {
            MState::Open { until } if now >= *until => {
                self.state = MState::HalfOpen {
                    probes: BTreeSet::new(),
                    streaming: BTreeSet::new(),
                    successes: 0,
                    last_admit: now,
                };
                self.epoch += 1;
            }
            MState::HalfOpen {
                probes,
                streaming,
                successes,
                last_admit,
            } if probes.len() as u32 >= self.cfg.probes && now - *last_admit >= self.cfg.probe_timeout => {
                // Healthy streams still open are successes; the rest nothing.
                *successes += streaming.len() as u32;
                let close = !streaming.is_empty() && *successes >= self.cfg.successes;
                probes.clear();
                streaming.clear();
                *last_admit = now;
                self.epoch += 1;
                if close {
                    self.close();
                }
            }
            _ => {}
        }
    }

    fn admit(&mut self, id: u64, now: u64) -> Result<MCall, Duration> {
        self.tick(now);
        match &mut self.state {
            MState::Closed => Ok(MCall {
                id,
                epoch: self.epoch,
                probe: false,
                start: now,
            }),
            MState::Open { until } => Err(Duration::from_millis(*until - now)),
            MState::HalfOpen { probes, last_admit, .. } => {
                if (probes.len() as u32) < self.cfg.probes {
                    probes.insert(id);
                    *last_admit = now;
                    Ok(MCall {
                        id,
                        epoch: self.epoch,
                        probe: true,
                        start: now,
                    })
                } else {
                    Err(Duration::ZERO)
                }
            }
        }
    }

    fn ask(&mut self, now: u64) -> Availability {
        self.tick(now);
        match &self.state {
            MState::Closed => Availability::Available,
            MState::Open { until } => Availability::Unavailable {
                reason: Unavailable::Open,
                retry_in: Duration::from_millis(until - now),
            },
            MState::HalfOpen { probes, .. } if (probes.len() as u32) < self.cfg.probes => Availability::Probe,
            MState::HalfOpen { .. } => Availability::Unavailable {
                reason: Unavailable::ProbesBusy,
                retry_in: Duration::ZERO,
            },
        }
    }

    fn open(&mut self, now: u64) {
        let cooldown = self
            .cfg
            .cooldown
            .saturating_mul(1 << self.failed_rounds.min(40))
            .min(self.cfg.max_cooldown);
        self.state = MState::Open { until: now + cooldown };
        self.run = 0;
        self.last_failure = None;
        self.epoch += 1;
    }

    fn close(&mut self) {
        self.state = MState::Closed;
        self.failed_rounds = 0;
        self.run = 0;
        self.last_failure = None;
        self.window.clear();
        self.epoch += 1;
    }

    /// A probe's healthy head arrived and its body stays open.
    fn mark_streaming(&mut self, call: MCall) {
        if call.epoch != self.epoch || !call.probe {
            return;
        }
        if let MState::HalfOpen { streaming, .. } = &mut self.state {
            streaming.insert(call.id);
        }
    }

    fn complete(&mut self, call: MCall, outcome: Outcome, now: u64) {
        if call.epoch != self.epoch {
            return;
        }
        match &mut self.state {
            MState::HalfOpen {
                probes,
                streaming,
                successes,
                ..
            } if call.probe => {
                assert!(probes.remove(&call.id));
                streaming.remove(&call.id);
                match outcome {
                    Outcome::Ignored => {}
                    Outcome::Success => {
                        *successes += 1;
                        if *successes >= self.cfg.successes {
                            self.close();
                        }
                    }
                    Outcome::Failure => {
                        self.failed_rounds += 1;
                        self.open(now);
                    }
                }
            }
            MState::Closed if !call.probe => {
                let failed = match outcome {
                    Outcome::Ignored => return,
                    Outcome::Success => {
                        self.run = 0;
                        false
                    }
                    Outcome::Failure => true,
                };
                let mut trip = false;
                if failed && let Some(threshold) = self.cfg.threshold {
                    let continues = self.last_failure.is_some_and(|t| now - t < self.cfg.window);
                    self.run = if continues { self.run + 1 } else { 1 };
                    self.last_failure = Some(now);
                    trip = self.run >= threshold;
                }
                if let Some(rate) = self.cfg.rate {
                    // Closed-state calls are timed from admission to outcome;
                    // slower than the limit is slow, success or not.
                    let slow = rate.slow.is_some_and(|(limit, _)| now - call.start > limit);
                    let width = rate.window_ms * 1_000_000 / u64::from(rate.buckets);
                    let current = now * 1_000_000 / width;
                    self.window.push((current, failed, slow));
                    let (calls, failures, slow) = self.window(now);
                    let calls_f = f64::from(calls);
                    if calls >= rate.min_requests
                        && (rate.threshold.is_some_and(|t| f64::from(failures) / calls_f >= t)
                            || rate.slow.is_some_and(|(_, t)| f64::from(slow) / calls_f >= t))
                    {
                        trip = true;
                    }
                }
                if trip {
                    self.open(now);
                }
            }
            _ => {}
        }
    }

    fn state(&self) -> CircuitState {
        match self.state {
            MState::Closed => CircuitState::Closed,
            MState::Open { .. } => CircuitState::Open,
            MState::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// (calls, failures, slow calls) in the rate window now.
    fn window(&self, now: u64) -> (u32, u32, u32) {
        let Some(rate) = self.cfg.rate else {
            return (0, 0, 0);
        };
        let buckets = u64::from(rate.buckets);
        let current = now * 1_000_000 / (rate.window_ms * 1_000_000 / buckets);
        let live = self.window.iter().filter(|(e, ..)| current - e < buckets);
        live.fold((0, 0, 0), |(c, f, s), (_, failed, slow)| {
            (c + 1, f + u32::from(*failed), s + u32::from(*slow))
        })
    }

    fn probes(&self) -> u32 {
        match &self.state {
            MState::HalfOpen { probes, .. } => probes.len() as u32,
            _ => 0,
        }
    }
}

fn any_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Failure), Just(Outcome::Success), Just(Outcome::Ignored)]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        3 => Just(Reply::Error(Outcome::Failure)),
        1 => Just(Reply::Error(Outcome::Ignored)),
        3 => (any::<bool>(), prop::bool::weighted(0.3)).prop_map(|(ok, open)| Reply::Unary { ok, open }),
        1 => prop::bool::weighted(0.3).prop_map(|open| Reply::Http503 { open }),
        2 => prop::bool::weighted(0.8).prop_map(|open| Reply::Stream { open }),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        2 => any::<bool>().prop_map(End::Trailers),
        1 => Just(End::Finish),
        1 => Just(End::Error),
        2 => Just(End::Drop),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => reply().prop_map(Step::Call),
        3 => Just(Step::Start),
        3 => (any::<usize>(), reply()).prop_map(|(i, r)| Step::Complete(i, r)),
        2 => any::<usize>().prop_map(Step::Drop),
        3 => (any::<usize>(), end()).prop_map(|(i, e)| Step::EndBody(i, e)),
        4 => prop_oneof![0u64..20, 0u64..400, 0u64..3000].prop_map(Step::Advance),
        2 => (0u8..4, any::<bool>()).prop_map(|(w, short)| Step::AdvanceExact(w, short)),
        1 => Just(Step::Ask),
    ]
}

fn policy() -> impl Strategy<Value = AbandonPolicy> {
    prop_oneof![
        1 => Just(AbandonPolicy::DEFAULT),
        2 => (any_outcome(), any_outcome(), any_outcome(), any::<bool>()).prop_map(|(body, trailers, call, at_head)| {
            AbandonPolicy::new()
                .with_body_dropped(body)
                .with_trailers_dropped(trailers)
                .with_call_dropped(call)
                .with_probe_verdict(if at_head { ProbeVerdict::AtHead } else { ProbeVerdict::AtEnd })
        }),
    ]
}

fn rate() -> impl Strategy<Value = Option<Rate>> {
    let ratio = || prop::sample::select(vec![0.25, 0.5, 1.0]);
    prop_oneof![
        1 => Just(None),
        1 => (
            1u32..=6,
            prop::option::weighted(0.7, ratio()),
            prop::sample::select(vec![100u64, 1000, 4000]),
            prop::sample::select(vec![1u32, 4, 10]),
            prop::option::weighted(0.6, (prop::sample::select(vec![50u64, 300]), ratio())),
        )
            .prop_filter("a rate policy needs a threshold", |r| r.1.is_some() || r.4.is_some())
            .prop_map(|(min_requests, threshold, window_ms, buckets, slow)| Some(Rate {
                min_requests,
                threshold,
                window_ms,
                buckets,
                slow,
            })),
    ]
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        prop_oneof![3 => (1u32..=4).prop_map(Some), 1 => Just(None)],
        rate(),
        prop::sample::select(vec![50u64, 500, 5000]),
        prop::sample::select(vec![100u64, 250, 1000]),
        prop::sample::select(vec![1u64, 3, 8]),
        1u32..=3,
        1u32..=3,
        prop::sample::select(vec![200u64, 1000, 10_000]),
    )
        .prop_filter("a breaker needs a policy", |c| c.0.is_some() || c.1.is_some())
        .prop_map(
            |(threshold, rate, window, cooldown, mult, probes, successes, probe_timeout)| Cfg {
                threshold,
                rate,
                window,
                cooldown,
                max_cooldown: cooldown * mult,
                probes,
                successes,
                probe_timeout,
            },
        )
}

/// A response body the test ends frame by frame.
#[derive(Debug)]
struct TestBody {
    frames: Option<mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>>,
}

impl http_body::Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.frames {
            Some(rx) => rx.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }

    /// A body that is already over when it is wrapped is judged at once.
    fn is_end_stream(&self) -> bool {
        self.frames.is_none()
    }
}

type Frames = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;
type Response = http::Response<palisade_body::TrackedBody<TestBody, GrpcEos, CallGuard>>;
type Fut = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

/// What the test sends the inner service: the reply, and the body it answers with.
type Script = (Reply, TestBody);

fn script(reply: Reply) -> (Script, Option<Frames>) {
    let open = match reply {
        Reply::Error(_) => false,
        Reply::Unary { open, .. } | Reply::Http503 { open } | Reply::Stream { open } => open,
    };
    if open {
        let (tx, rx) = mpsc::unbounded();
        ((reply, TestBody { frames: Some(rx) }), Some(tx))
    } else {
        ((reply, TestBody { frames: None }), None)
    }
}

fn respond(reply: Reply, body: TestBody) -> Result<http::Response<TestBody>, BoxError> {
    let builder = http::Response::builder();
    let builder = match reply {
        Reply::Error(Outcome::Ignored) => return Err(NotFound.into()),
        Reply::Error(_) => return Err("boom".into()),
        Reply::Unary { ok, .. } => builder.header("grpc-status", if ok { "0" } else { "14" }),
        Reply::Http503 { .. } => builder.status(503),
        Reply::Stream { .. } => builder,
    };
    Ok(builder.body(body).unwrap())
}

/// The verdict the model expects from a reply's head: `Some` when the head
/// decides, `None` when the verdict waits for the trailers.
fn head_verdict(reply: Reply) -> Option<Outcome> {
    match reply {
        Reply::Error(outcome) => Some(outcome),
        Reply::Unary { ok: true, .. } => Some(Outcome::Success),
        Reply::Unary { ok: false, .. } | Reply::Http503 { .. } => Some(Outcome::Failure),
        Reply::Stream { .. } => None,
    }
}

/// The outcome the model expects when a body whose head said `head` ends so.
fn body_outcome(head: Option<Outcome>, end: End, policy: AbandonPolicy) -> Outcome {
    match (end, head) {
        (End::Drop, Some(Outcome::Failure)) => Outcome::Failure,
        (End::Drop, Some(Outcome::Success)) => policy.body_dropped(),
        (End::Drop, Some(Outcome::Ignored)) => Outcome::Ignored,
        (End::Drop, None) => policy.trailers_dropped(),
        (End::Error, _) => Outcome::Failure,
        (_, Some(outcome)) => outcome,
        (End::Trailers(true), None) => Outcome::Success,
        // Status 14, or a stream that ended without any status.
        (End::Trailers(false) | End::Finish, None) => Outcome::Failure,
    }
}

/// An open response body, and what the model still expects of it.
struct OpenBody {
    body: Option<palisade_body::TrackedBody<TestBody, GrpcEos, CallGuard>>,
    frames: Frames,
    head: Option<Outcome>,
    /// `None` once the call's outcome is settled (a probe judged at its head).
    call: Option<MCall>,
}

fn run(cfg: Cfg, policy: AbandonPolicy, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let now = || tokio::time::Instant::now().duration_since(start).as_millis() as u64;
        let mut builder = CircuitBreakerConfig::builder();
        builder = match cfg.threshold {
            Some(threshold) => builder.failure_threshold(threshold),
            None => builder.without_consecutive(),
        };
        if let Some(rate) = cfg.rate {
            builder = builder
                .min_requests(rate.min_requests)
                .rate_window(Duration::from_millis(rate.window_ms))
                .rate_buckets(rate.buckets);
            if let Some(threshold) = rate.threshold {
                builder = builder.failure_rate_threshold(threshold);
            }
            if let Some((limit, threshold)) = rate.slow {
                builder = builder
                    .slow_call_duration(Duration::from_millis(limit))
                    .slow_call_rate_threshold(threshold);
            }
        }
        let config = builder
            .failure_window(Duration::from_millis(cfg.window))
            .cooldown(Duration::from_millis(cfg.cooldown))
            .max_cooldown(Duration::from_millis(cfg.max_cooldown))
            .half_open_max_probes(cfg.probes)
            .success_threshold(cfg.successes)
            .probe_timeout(Duration::from_millis(cfg.probe_timeout))
            .build()
            .unwrap();
        let inner = tower::service_fn(|rx: oneshot::Receiver<Script>| async move {
            match rx.await {
                Ok((reply, body)) => respond(reply, body),
                Err(_) => Err(NotFound.into()),
            }
        });
        let classifier = Grpc::default().with_abandon_policy(policy).errors_with(|e: &BoxError| {
            if e.is::<NotFound>() {
                Outcome::Ignored
            } else {
                Outcome::Failure
            }
        });
        let mut svc = CircuitBreaker::with_protocol(inner, config, classifier);
        let handle = svc.handle();
        let mut model = Model {
            cfg,
            state: MState::Closed,
            epoch: 0,
            run: 0,
            last_failure: None,
            failed_rounds: 0,
            window: Vec::new(),
        };
        let mut pending: Vec<(Fut, oneshot::Sender<Script>, MCall)> = Vec::new();
        let mut bodies: Vec<OpenBody> = Vec::new();
        let mut next_id = 0u64;

        // The head of `call`'s response arrived: what the model expects now,
        // and the body to keep if it is still open.
        let answered = |model: &mut Model,
                        bodies: &mut Vec<OpenBody>,
                        call: MCall,
                        reply: Reply,
                        frames: Option<Frames>,
                        result: Result<Response, BoxError>,
                        at: u64|
         -> Result<(), TestCaseError> {
            let head = head_verdict(reply);
            let response = match (reply, result) {
                (Reply::Error(_), Err(e)) => {
                    prop_assert!(!e.is::<CircuitOpen>(), "refused, model admits");
                    model.complete(call, head.unwrap_or(Outcome::Failure), at);
                    return Ok(());
                }
                (Reply::Error(_), Ok(_)) => return Err(TestCaseError::fail("an error became a response")),
                (_, Err(e)) => return Err(TestCaseError::fail(format!("a response became an error: {e}"))),
                (_, Ok(response)) => response,
            };
            let mut call = Some(call);
            if let Some(c) = call
                && c.probe
                && matches!(policy.probe_verdict(), ProbeVerdict::AtHead)
            {
                // Judged at its head: a head that is not a failure is a success.
                model.complete(c, head.unwrap_or(Outcome::Success), at);
                call = None;
            }
            if let Some(c) = call
                && c.probe
            {
                match head {
                    // A failure known from the head reopens at once.
                    Some(Outcome::Failure) => {
                        model.complete(c, Outcome::Failure, at);
                        call = None;
                    }
                    // Healthy: a success at `probe_timeout` if still open then.
                    None | Some(Outcome::Success) if frames.is_some() => model.mark_streaming(c),
                    _ => {}
                }
            }
            match frames {
                Some(frames) => bodies.push(OpenBody {
                    body: Some(response.into_body()),
                    frames,
                    head,
                    call,
                }),
                None => {
                    // Over when wrapped: judged at once, at its end of stream.
                    if let Some(c) = call {
                        model.complete(c, body_outcome(head, End::Finish, policy), at);
                    }
                    drop(response);
                }
            }
            Ok(())
        };

        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Call(_) | Step::Start => {
                    let (tx, rx) = oneshot::channel();
                    let mut fut: Fut = Box::pin(svc.call(rx));
                    next_id += 1;
                    let expected = model.admit(next_id, now());
                    match expected {
                        Err(retry_in) => {
                            let result = (&mut fut).now_or_never().expect("a refusal is ready at once");
                            let err = result.expect_err("model refuses");
                            let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
                            prop_assert_eq!(open.retry_in(), retry_in, "step {}", i);
                        }
                        Ok(call) => {
                            if let Step::Call(reply) = step {
                                let (script, frames) = script(reply);
                                tx.send(script).ok().unwrap();
                                let result = (&mut fut).now_or_never().expect("inner is ready");
                                answered(&mut model, &mut bodies, call, reply, frames, result, now())?;
                            } else {
                                prop_assert!(
                                    (&mut fut).now_or_never().is_none(),
                                    "step {}: admitted call must be pending",
                                    i
                                );
                                pending.push((fut, tx, call));
                            }
                        }
                    }
                }
                Step::Complete(idx, reply) if !pending.is_empty() => {
                    let (mut fut, tx, call) = pending.swap_remove(idx % pending.len());
                    let (script, frames) = script(reply);
                    tx.send(script).ok().unwrap();
                    let result = (&mut fut).now_or_never().expect("inner is ready");
                    answered(&mut model, &mut bodies, call, reply, frames, result, now())?;
                }
                Step::Drop(idx) if !pending.is_empty() => {
                    let (fut, tx, call) = pending.swap_remove(idx % pending.len());
                    drop(fut);
                    drop(tx);
                    model.complete(call, policy.call_dropped(), now());
                }
                Step::EndBody(idx, end) if !bodies.is_empty() => {
                    let mut open = bodies.swap_remove(idx % bodies.len());
                    let mut body = open.body.take().unwrap();
                    match end {
                        End::Drop => drop(body),
                        End::Trailers(ok) => {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", if ok { "0" } else { "14" }.parse().unwrap());
                            open.frames.unbounded_send(Ok(Frame::trailers(trailers))).unwrap();
                            let frame = body.frame().now_or_never().expect("a frame is ready");
                            prop_assert!(matches!(frame, Some(Ok(_))));
                            prop_assert!(body.has_ended());
                        }
                        End::Finish => {
                            open.frames.close_channel();
                            prop_assert!(body.frame().now_or_never().expect("ready").is_none());
                        }
                        End::Error => {
                            open.frames.unbounded_send(Err("reset mid-stream".into())).unwrap();
                            let frame = body.frame().now_or_never().expect("a frame is ready");
                            prop_assert!(matches!(frame, Some(Err(_))));
                        }
                    }
                    if let Some(call) = open.call {
                        model.complete(call, body_outcome(open.head, end, policy), now());
                    }
                }
                Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Step::AdvanceExact(which, short) => {
                    let rate_window = cfg.rate.map_or(cfg.window, |r| r.window_ms);
                    let d = [cfg.window, cfg.cooldown, cfg.probe_timeout, rate_window][usize::from(which)]
                        - u64::from(short);
                    tokio::time::advance(Duration::from_millis(d)).await;
                }
                Step::Ask => {
                    let expected = model.ask(now());
                    prop_assert_eq!(svc.availability(), expected, "step {}", i);
                }
                _ => {}
            }
            let snap = handle.snapshot();
            prop_assert_eq!(snap.state, model.state(), "step {}: {:?}", i, model);
            prop_assert_eq!(snap.probes_in_flight, model.probes(), "step {}", i);
            prop_assert!(snap.probes_in_flight <= cfg.probes);
            if model.state() == CircuitState::Closed {
                prop_assert_eq!(snap.consecutive_failures, model.run, "step {}", i);
                prop_assert_eq!(
                    (snap.window_calls, snap.window_failures, snap.window_slow_calls),
                    model.window(now()),
                    "step {}",
                    i
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_breaker_agrees_with_the_reference_model(
        cfg in cfg(),
        policy in policy(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        run(cfg, policy, steps)?;
    }
}
