//! The breaker against a small reference model: random sequences of calls,
//! outcomes, drops, availability questions and time steps.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::NotFound;
use futures::FutureExt;
use futures::channel::oneshot;
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState};
use palisade_core::classify::{ClassifyExt, Outcome};
use palisade_core::error::BoxError;
use palisade_core::peer::{Availability, CheckAvailability, Unavailable};
use palisade_core::protocol::Plain;
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

#[derive(Clone, Debug)]
enum Step {
    /// A call that completes at once with this outcome.
    Call(Outcome),
    /// A call left in flight.
    Start,
    Complete(usize, Outcome),
    Drop(usize),
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
                    successes: 0,
                    last_admit: now,
                };
                self.epoch += 1;
            }
            MState::HalfOpen { probes, last_admit, .. }
                if probes.len() as u32 >= self.cfg.probes && now - *last_admit >= self.cfg.probe_timeout =>
            {
                probes.clear();
                *last_admit = now;
                self.epoch += 1;
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

    fn complete(&mut self, call: MCall, outcome: Outcome, now: u64) {
        if call.epoch != self.epoch {
            return;
        }
        match &mut self.state {
            MState::HalfOpen { probes, successes, .. } if call.probe => {
                assert!(probes.remove(&call.id));
                match outcome {
                    Outcome::Ignored => {}
                    Outcome::Success => {
                        *successes += 1;
                        if *successes >= self.cfg.successes {
                            self.state = MState::Closed;
                            self.failed_rounds = 0;
                            self.run = 0;
                            self.last_failure = None;
                            self.window.clear();
                            self.epoch += 1;
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

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Failure),
        2 => Just(Outcome::Success),
        1 => Just(Outcome::Ignored),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => outcome().prop_map(Step::Call),
        3 => Just(Step::Start),
        3 => (any::<usize>(), outcome()).prop_map(|(i, o)| Step::Complete(i, o)),
        2 => any::<usize>().prop_map(Step::Drop),
        4 => prop_oneof![0u64..20, 0u64..400, 0u64..3000].prop_map(Step::Advance),
        2 => (0u8..4, any::<bool>()).prop_map(|(w, short)| Step::AdvanceExact(w, short)),
        1 => Just(Step::Ask),
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

type Fut = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

fn reply(outcome: Outcome) -> Result<&'static str, BoxError> {
    match outcome {
        Outcome::Success => Ok("ok"),
        Outcome::Failure => Err("boom".into()),
        Outcome::Ignored => Err(NotFound.into()),
    }
}

fn run(cfg: Cfg, steps: Vec<Step>) -> Result<(), TestCaseError> {
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
        let inner =
            tower::service_fn(
                |rx: oneshot::Receiver<Outcome>| async move { reply(rx.await.unwrap_or(Outcome::Ignored)) },
            );
        let classifier = Plain.errors_with(|e: &BoxError| {
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
        let mut pending: Vec<(Fut, oneshot::Sender<Outcome>, MCall)> = Vec::new();
        let mut next_id = 0u64;
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
                            if let Step::Call(outcome) = step {
                                tx.send(outcome).unwrap();
                                let result = (&mut fut).now_or_never().expect("inner is ready");
                                if let Err(e) = &result {
                                    prop_assert!(!e.is::<CircuitOpen>(), "step {}: refused, model admits", i);
                                }
                                model.complete(call, outcome, now());
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
                Step::Complete(idx, outcome) if !pending.is_empty() => {
                    let (mut fut, tx, call) = pending.swap_remove(idx % pending.len());
                    tx.send(outcome).unwrap();
                    let result = (&mut fut).now_or_never().expect("inner is ready");
                    prop_assert_eq!(result.is_ok(), outcome == Outcome::Success);
                    model.complete(call, outcome, now());
                }
                Step::Drop(idx) if !pending.is_empty() => {
                    let (fut, tx, call) = pending.swap_remove(idx % pending.len());
                    drop(fut);
                    drop(tx);
                    model.complete(call, Outcome::Ignored, now());
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
    fn the_breaker_agrees_with_the_reference_model(cfg in cfg(), steps in prop::collection::vec(step(), 1..120)) {
        run(cfg, steps)?;
    }
}
