//! What the body tests share: a hook that logs how a body ended, and a body
//! that plays a script of frames, errors and pending polls.
#![allow(dead_code, unreachable_pub, clippy::disallowed_types)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use palisade_body::BodyEnd;
use palisade_core::error::BoxError;

/// What the hook heard, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    Eos(Option<String>),
    Error(String),
    Dropped,
}

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Heard>>>);

impl Log {
    pub fn hook(&self) -> impl FnOnce(BodyEnd<'_>) + Send + 'static {
        let log = self.0.clone();
        move |end: BodyEnd<'_>| {
            let heard = match end {
                BodyEnd::Eos(trailers) => Heard::Eos(
                    trailers
                        .and_then(|t| t.get("grpc-status"))
                        .map(|v| v.to_str().unwrap().to_owned()),
                ),
                BodyEnd::Error(e) => Heard::Error(e.to_string()),
                BodyEnd::Dropped => Heard::Dropped,
            };
            log.lock().unwrap().push(heard);
        }
    }

    pub fn heard(&self) -> Vec<Heard> {
        self.0.lock().unwrap().clone()
    }
}

/// One step of a scripted body.
#[derive(Clone, Debug)]
pub enum Step {
    Data(&'static str),
    Trailers(&'static str),
    Error,
    Pending,
}

/// A body that plays a script, saying `is_end_stream` once the script is spent.
pub struct ScriptBody {
    steps: VecDeque<Step>,
    done: bool,
}

impl ScriptBody {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            done: false,
        }
    }
}

#[derive(Debug)]
pub struct ScriptError;
impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("script error")
    }
}
impl std::error::Error for ScriptError {}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = ScriptError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ScriptError>>> {
        match self.steps.pop_front() {
            None => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(d.as_bytes()))))),
            Some(Step::Trailers(status)) => {
                self.done = true;
                self.steps.clear();
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static(status));
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Some(Step::Error) => {
                self.done = true;
                self.steps.clear();
                Poll::Ready(Some(Err(ScriptError)))
            }
            Some(Step::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.steps.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(7)
    }
}

pub async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// A body that yields a frame whenever it is polled after its next due time.
pub struct Ticking {
    gaps: VecDeque<Duration>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Ticking {
    pub fn new(gaps: impl IntoIterator<Item = u64>) -> Self {
        let mut gaps: VecDeque<Duration> = gaps.into_iter().map(Duration::from_millis).collect();
        let first = gaps.pop_front().unwrap_or_default();
        Self {
            gaps,
            sleep: Box::pin(tokio::time::sleep(first)),
        }
    }
}

impl Body for Ticking {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::task::ready!(self.sleep.as_mut().poll(cx));
        match self.gaps.pop_front() {
            Some(gap) => {
                let at = tokio::time::Instant::now() + gap;
                self.sleep.as_mut().reset(at);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
            }
            None => Poll::Ready(None),
        }
    }
}
