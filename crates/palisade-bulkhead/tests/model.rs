//! A proptest of the bulkhead against a small reference model: random
//! arrivals, completions (success and error), body ends, body errors, body
//! drops, cancellations, `max_wait` timeouts, call deadlines that pass while
//! queued, and live limit changes.
//!
//! After every step the real bulkhead must agree with the model on permits
//! held and callers queued (so in-flight never exceeds the limit except for
//! permits held across a lowering, and the queue never exceeds its size), on
//! the order in which the inner service was called (FIFO), and on how every
//! call ended. At the end every permit must have come back.
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::task::noop_waker_ref;
use http_body::{Body, Frame};
use http_body_util::StreamBody;
use palisade_bulkhead::error::{BoxError, BulkheadFull, BulkheadRejection};
use palisade_bulkhead::{Bulkhead, BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_core::error::DeadlineExceeded;
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::protocol::Http;
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::sample::Index;
use tower::{Layer, Service};

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type InnerBody = StreamBody<mpsc::UnboundedReceiver<Chunk>>;
type InnerResult = Result<http::Response<InnerBody>, Boom>;

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}
impl std::error::Error for Boom {}

#[derive(Default)]
struct Ctl {
    results: HashMap<u32, oneshot::Sender<InnerResult>>,
    started: Vec<u32>,
}

#[derive(Clone)]
struct Svc(Arc<Mutex<Ctl>>);

impl Service<http::Request<u32>> for Svc {
    type Response = http::Response<InnerBody>;
    type Error = Boom;
    type Future = Pin<Box<dyn Future<Output = InnerResult> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<u32>) -> Self::Future {
        let id = *request.body();
        let (tx, rx) = oneshot::channel();
        let mut ctl = self.0.lock();
        ctl.results.insert(id, tx);
        ctl.started.push(id);
        Box::pin(async move { rx.await.unwrap_or(Err(Boom)) })
    }
}

type Bh = Bulkhead<Svc, Http>;
type Fut = <Bh as Service<http::Request<u32>>>::Future;
type Resp = <Bh as Service<http::Request<u32>>>::Response;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    QueueFull,
    WaitTimedOut,
    /// The call's deadline passed while it was queued.
    DeadlineExceeded,
    Failed,
    Gone,
}

enum Real {
    Pending(Pin<Box<Fut>>),
    Body(Pin<Box<Resp>>, Option<mpsc::UnboundedSender<Chunk>>),
    Ended(Ended),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    /// Waiting until `until` at most; `by_deadline`: that is the call's
    /// deadline (else `max_wait`).
    Queued {
        until: u64,
        by_deadline: bool,
    },
    Running,
    Body,
    Ended(Ended),
}

#[derive(Debug, Clone)]
enum Op {
    /// A call, with a deadline this many ms from now if `Some`.
    Arrive(Option<u64>),
    Complete(Index, bool),
    EndBody(Index, bool),
    DropBody(Index),
    Cancel(Index),
    Advance(u64),
    SetLimit(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::option::weighted(0.4, 0u64..120).prop_map(Op::Arrive),
        3 => (any::<Index>(), any::<bool>()).prop_map(|(i, ok)| Op::Complete(i, ok)),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(i, e)| Op::EndBody(i, e)),
        1 => any::<Index>().prop_map(Op::DropBody),
        1 => any::<Index>().prop_map(Op::Cancel),
        1 => (0u64..80).prop_map(Op::Advance),
        1 => (1usize..5).prop_map(Op::SetLimit),
    ]
}

struct Model {
    limit: usize,
    max_queue: usize,
    max_wait: Option<u64>,
    now: u64,
    in_flight: usize,
    queue: VecDeque<u32>,
    calls: Vec<M>,
    started: Vec<u32>,
}

impl Model {
    fn grant(&mut self) {
        while self.in_flight < self.limit {
            let Some(id) = self.queue.pop_front() else { break };
            self.in_flight += 1;
            self.calls[id as usize] = M::Running;
            self.started.push(id);
        }
    }

    fn release(&mut self) {
        self.in_flight -= 1;
        self.grant();
    }

    fn arrive(&mut self, deadline: Option<u64>) {
        let id = self.calls.len() as u32;
        if self.queue.is_empty() && self.in_flight < self.limit {
            // A free slot: the deadline is for the layers below.
            self.in_flight += 1;
            self.calls.push(M::Running);
            self.started.push(id);
        } else if self.queue.len() < self.max_queue {
            let max_wait = self.max_wait.map_or(u64::MAX, |w| self.now + w);
            let deadline = deadline.map_or(u64::MAX, |d| self.now + d);
            // A tie is the deadline's.
            let (until, by_deadline) = if deadline <= max_wait {
                (deadline, true)
            } else {
                (max_wait, false)
            };
            self.queue.push_back(id);
            self.calls.push(M::Queued { until, by_deadline });
        } else {
            self.calls.push(M::Ended(Ended::QueueFull));
        }
    }

    /// Queued calls whose wait is over leave the queue.
    fn expire(&mut self) {
        let now = self.now;
        let expired: Vec<(u32, bool)> = self
            .queue
            .iter()
            .filter_map(|&id| match self.calls[id as usize] {
                M::Queued { until, by_deadline } if until <= now => Some((id, by_deadline)),
                _ => None,
            })
            .collect();
        for (id, by_deadline) in expired {
            self.queue.retain(|&q| q != id);
            self.calls[id as usize] = M::Ended(if by_deadline {
                Ended::DeadlineExceeded
            } else {
                Ended::WaitTimedOut
            });
        }
    }

    fn pick(&self, index: &Index, want: impl Fn(&M) -> bool) -> Option<u32> {
        let ids: Vec<u32> = (0..self.calls.len() as u32)
            .filter(|&i| want(&self.calls[i as usize]))
            .collect();
        (!ids.is_empty()).then(|| ids[index.index(ids.len())])
    }
}

fn classify(error: &BoxError) -> Ended {
    if let Some(full) = error.downcast_ref::<BulkheadFull>() {
        match full.reason() {
            BulkheadRejection::QueueFull => Ended::QueueFull,
            _ => Ended::WaitTimedOut,
        }
    } else if error.is::<DeadlineExceeded>() {
        Ended::DeadlineExceeded
    } else if error.is::<Boom>() {
        Ended::Failed
    } else {
        panic!("unexpected error {error}")
    }
}

/// Polls every pending call until nothing changes.
fn poll_all(real: &mut [Real]) {
    let mut cx = Context::from_waker(noop_waker_ref());
    loop {
        let mut changed = false;
        for call in real.iter_mut() {
            if let Real::Pending(fut) = call
                && let Poll::Ready(result) = fut.as_mut().poll(&mut cx)
            {
                *call = match result {
                    Ok(response) => Real::Body(Box::pin(response), None),
                    Err(e) => Real::Ended(classify(&e)),
                };
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

fn check(model: &Model, real: &[Real], handle: &BulkheadHandle, ctl: &Mutex<Ctl>) -> Result<(), TestCaseError> {
    prop_assert_eq!(handle.in_flight(), model.in_flight, "permits held");
    prop_assert_eq!(handle.queued(), model.queue.len(), "callers queued");
    prop_assert!(handle.queued() <= model.max_queue);
    prop_assert_eq!(
        &ctl.lock().started,
        &model.started,
        "FIFO: the inner service is called in admission order"
    );
    for (id, (m, r)) in model.calls.iter().zip(real).enumerate() {
        let agree = match (m, r) {
            (M::Queued { .. } | M::Running, Real::Pending(_)) => true,
            (M::Body, Real::Body(..)) => true,
            (M::Ended(a), Real::Ended(b)) => a == b,
            _ => false,
        };
        prop_assert!(
            agree,
            "call {} model {:?} real {}",
            id,
            m,
            match r {
                Real::Pending(_) => "pending".to_string(),
                Real::Body(..) => "body".to_string(),
                Real::Ended(e) => format!("{e:?}"),
            }
        );
    }
    Ok(())
}

fn run(limit: usize, max_queue: usize, max_wait: Option<u64>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut builder = BulkheadConfig::builder().max_concurrent(limit).max_queue(max_queue);
        if let Some(w) = max_wait {
            builder = builder.max_wait(Duration::from_millis(w));
        }
        let layer = BulkheadLayer::new(builder.build().unwrap()).protocol(Http::default());
        let handle = layer.handle();
        let ctl = Arc::new(Mutex::new(Ctl::default()));
        let mut svc: Bh = layer.layer(Svc(ctl.clone()));
        let mut model = Model {
            limit,
            max_queue,
            max_wait,
            now: 0,
            in_flight: 0,
            queue: VecDeque::new(),
            calls: Vec::new(),
            started: Vec::new(),
        };
        let mut real: Vec<Real> = Vec::new();
        let mut cx = Context::from_waker(noop_waker_ref());

        for op in ops {
            match op {
                Op::Arrive(deadline) => {
                    let id = model.calls.len() as u32;
                    model.arrive(deadline);
                    model.expire();
                    let mut request = http::Request::new(id);
                    if let Some(ms) = deadline {
                        request
                            .call_options_mut()
                            .set_deadline(Deadline::after(Duration::from_millis(ms)));
                    }
                    prop_assert!(svc.poll_ready(&mut cx).is_ready(), "poll_ready never waits for a slot");
                    real.push(Real::Pending(Box::pin(svc.call(request))));
                }
                Op::Complete(i, ok) => {
                    let Some(id) = model.pick(&i, |m| *m == M::Running) else {
                        continue;
                    };
                    let tx = ctl.lock().results.remove(&id);
                    let Some(tx) = tx else { continue };
                    if ok {
                        let (btx, brx) = mpsc::unbounded();
                        let _ = tx.send(Ok(http::Response::new(StreamBody::new(brx))));
                        model.calls[id as usize] = M::Body;
                        poll_all(&mut real);
                        if let Real::Body(_, sender) = &mut real[id as usize] {
                            *sender = Some(btx);
                        }
                    } else {
                        let _ = tx.send(Err(Boom));
                        model.calls[id as usize] = M::Ended(Ended::Failed);
                        model.release();
                    }
                }
                Op::EndBody(i, error) => {
                    let Some(id) = model.pick(&i, |m| *m == M::Body) else {
                        continue;
                    };
                    let Real::Body(body, sender) = &mut real[id as usize] else {
                        prop_assert!(false, "call {} should have a body", id);
                        unreachable!()
                    };
                    let sender = sender.take();
                    if error && let Some(s) = &sender {
                        let _ = s.unbounded_send(Err(std::io::Error::other("reset")));
                    }
                    drop(sender);
                    let frame = body.as_mut().poll_frame(&mut cx);
                    prop_assert!(
                        matches!(
                            (&frame, error),
                            (Poll::Ready(None), false) | (Poll::Ready(Some(Err(_))), true)
                        ),
                        "body end"
                    );
                    real[id as usize] = Real::Ended(Ended::Gone);
                    model.calls[id as usize] = M::Ended(Ended::Gone);
                    model.release();
                }
                Op::DropBody(i) => {
                    let Some(id) = model.pick(&i, |m| *m == M::Body) else {
                        continue;
                    };
                    real[id as usize] = Real::Ended(Ended::Gone);
                    model.calls[id as usize] = M::Ended(Ended::Gone);
                    model.release();
                }
                Op::Cancel(i) => {
                    let Some(id) = model.pick(&i, |m| matches!(m, M::Queued { .. } | M::Running)) else {
                        continue;
                    };
                    real[id as usize] = Real::Ended(Ended::Gone);
                    ctl.lock().results.remove(&id);
                    match model.calls[id as usize] {
                        M::Queued { .. } => model.queue.retain(|&q| q != id),
                        _ => model.in_flight -= 1,
                    }
                    model.calls[id as usize] = M::Ended(Ended::Gone);
                    model.grant();
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                    model.expire();
                }
                Op::SetLimit(n) => {
                    handle.set_max_concurrent(n).unwrap();
                    model.limit = n;
                    model.grant();
                }
            }
            poll_all(&mut real);
            check(&model, &real, &handle, &ctl)?;
        }

        // Every permit comes back once everything ends.
        real.clear();
        ctl.lock().results.clear();
        prop_assert_eq!(handle.in_flight(), 0, "every permit came back");
        prop_assert_eq!(handle.queued(), 0);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bulkhead_agrees_with_the_model(
        limit in 1usize..4,
        max_queue in 0usize..4,
        max_wait in proptest::option::of(1u64..100),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(limit, max_queue, max_wait, ops)?;
    }
}
