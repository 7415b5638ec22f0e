//! Replayable http request bodies.
//!
//! An `http::Request<B>` cannot be cloned, and its body can be read once. The
//! retry layer wraps the body in a [`ReplayBody`]: while the first attempt
//! streams the body, every data frame is also kept in a buffer shared with the
//! later attempts (the frames are [`Bytes`], so keeping one is a reference
//! count, never a copy of the data); trailers are kept too. A later attempt
//! first replays the buffered frames, then goes on reading the original body
//! where the previous attempt stopped (when the server answered before the
//! whole body was sent), buffering as it goes.
//!
//! The buffer is bounded by a cap (64 KiB by default). A body that outgrows
//! the cap drops its buffer and goes on streaming to the current attempt, but
//! the call can no longer be retried: the layer returns the attempt's result
//! as it is, and a debug event says why. A body whose read failed cannot be
//! replayed either.
//!
//! Only one attempt reads at a time: the attempt that holds the state returns
//! it when its body is dropped. A replay polled while an earlier attempt's
//! body is still alive (still owned by a connection) waits until it is
//! dropped.
//!
//! When a call may not be retried at all (0 retries), the body passes through
//! without any shared state or buffering.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

/// The default cap of a replay buffer: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// An http request body that can be sent again for a retry. See the
/// [module docs](self).
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// Not replayable: the call is sent once.
    Passthrough(B),
    Replay(Replay<B>),
}

struct Replay<B> {
    shared: Arc<Shared<B>>,
    /// The state, while this attempt holds it.
    state: Option<State<B>>,
    /// How many buffered frames this attempt has sent.
    replayed: usize,
    /// Whether this attempt has sent the trailers.
    trailers_sent: bool,
    /// Bytes this attempt has sent, for the size hint.
    sent: u64,
    /// The original body's size hint.
    hint: SizeHint,
    /// Whether the original body was empty at the start.
    empty: bool,
}

struct Shared<B> {
    /// Set once the buffer is gone: the body cannot be replayed.
    capped: AtomicBool,
    slot: Mutex<Slot<B>>,
}

struct Slot<B> {
    state: Option<State<B>>,
    waiting: Option<Waker>,
}

struct State<B> {
    /// The original body, until it ended.
    body: Option<B>,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    buffered: usize,
    cap: usize,
}

impl<B> ReplayBody<B> {
    /// A body sent once, never replayed.
    pub fn once(body: B) -> Self {
        Self {
            kind: Kind::Passthrough(body),
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for its first attempt, buffering up to `cap` bytes for the
    /// later ones; [`replay`](Self::replay) makes a later attempt's body.
    pub fn new(body: B, cap: usize) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        // A body known to be larger than the cap is never buffered.
        let capped = hint.lower() > cap as u64;
        let state = State {
            body: Some(body),
            frames: Vec::new(),
            trailers: None,
            buffered: 0,
            cap,
        };
        Self {
            kind: Kind::Replay(Replay {
                shared: Arc::new(Shared {
                    capped: AtomicBool::new(capped),
                    slot: Mutex::new(Slot {
                        state: None,
                        waiting: None,
                    }),
                }),
                state: Some(state),
                replayed: 0,
                trailers_sent: false,
                sent: 0,
                hint,
                empty,
            }),
        }
    }

    /// A body for the next attempt, replaying what was sent; `None` when the
    /// body cannot be replayed (it outgrew its cap, its read failed, or it
    /// was made with [`once`](Self::once)).
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Passthrough(_) => None,
            Kind::Replay(r) => {
                if !r.is_replayable() {
                    return None;
                }
                Some(Self {
                    kind: Kind::Replay(Replay {
                        shared: r.shared.clone(),
                        state: None,
                        replayed: 0,
                        trailers_sent: false,
                        sent: 0,
                        hint: r.hint,
                        empty: r.empty,
                    }),
                })
            }
        }
    }

    /// Whether a later attempt can replay this body.
    pub fn is_replayable(&self) -> bool {
        match &self.kind {
            Kind::Passthrough(_) => false,
            Kind::Replay(r) => r.is_replayable(),
        }
    }
}

impl<B> Replay<B> {
    fn is_replayable(&self) -> bool {
        !self.shared.capped.load(Ordering::Acquire)
    }

    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            let waker = {
                let mut slot = self.shared.slot.lock();
                slot.state = Some(state);
                slot.waiting.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let replay = match &mut this.kind {
            Kind::Passthrough(body) => {
                return Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))));
            }
            Kind::Replay(replay) => replay,
        };
        if replay.state.is_none() {
            let mut slot = replay.shared.slot.lock();
            match slot.state.take() {
                Some(state) => replay.state = Some(state),
                None => {
                    slot.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(state) = replay.state.as_mut() else {
            return Poll::Pending;
        };
        let capped = replay.shared.capped.load(Ordering::Acquire);
        // 1. Frames an earlier attempt sent.
        if !capped && let Some(frame) = state.frames.get(replay.replayed) {
            replay.replayed += 1;
            replay.sent += frame.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
        }
        // 2. The rest of the original body.
        if let Some(body) = state.body.as_mut() {
            return match Pin::new(body).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    state.body = None;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(error))) => {
                    // What was sent is not the whole body: never replay it.
                    replay.shared.capped.store(true, Ordering::Release);
                    state.frames = Vec::new();
                    state.body = None;
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        let data = data.copy_to_bytes(data.remaining());
                        replay.sent += data.len() as u64;
                        if !replay.shared.capped.load(Ordering::Acquire) {
                            if state.buffered + data.len() > state.cap {
                                tracing::debug!(
                                    target: "palisade",
                                    layer = "retry",
                                    event = "replay_capped",
                                    limit = state.cap,
                                    reason = "request body outgrew the replay cap",
                                    "the call will not be retried"
                                );
                                replay.shared.capped.store(true, Ordering::Release);
                                state.frames = Vec::new();
                            } else {
                                state.buffered += data.len();
                                state.frames.push(data.clone());
                                replay.replayed = state.frames.len();
                            }
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            state.body = None;
                            state.trailers = Some(trailers.clone());
                            replay.trailers_sent = true;
                            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                        }
                        // A frame kind this version of http-body does not know: drop it.
                        Err(_) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    },
                },
            };
        }
        // 3. The original body has ended: its trailers, if any.
        if !replay.trailers_sent
            && let Some(trailers) = &state.trailers
        {
            replay.trailers_sent = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough(body) => body.is_end_stream(),
            Kind::Replay(replay) => match &replay.state {
                // An empty body is empty for every attempt.
                None => replay.empty,
                Some(state) => {
                    let frames_left = replay.replayed < state.frames.len();
                    let body_left = state.body.as_ref().is_some_and(|b| !b.is_end_stream());
                    let trailers_left = state.trailers.is_some() && !replay.trailers_sent;
                    !frames_left && !body_left && !trailers_left
                }
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough(body) => body.size_hint(),
            Kind::Replay(replay) => match replay.hint.exact() {
                Some(exact) => SizeHint::with_exact(exact.saturating_sub(replay.sent)),
                None => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(replay.hint.lower().saturating_sub(replay.sent));
                    hint
                }
            },
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Passthrough(_) => f.debug_struct("ReplayBody").field("replayable", &false).finish(),
            Kind::Replay(r) => f
                .debug_struct("ReplayBody")
                .field("replayable", &r.is_replayable())
                .field("replayed", &r.replayed)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(
        parts: &[&'static [u8]],
        trailers: Option<HeaderMap>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: fmt::Debug,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn replays_data_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "7".parse().unwrap());
        let first = ReplayBody::new(chunks(&[b"hel", b"lo"], Some(trailers.clone())), 1024);
        let second = first.replay().unwrap();
        assert_eq!(collect(first).await, (Bytes::from("hello"), Some(trailers.clone())));
        let third = second.replay().unwrap();
        assert_eq!(collect(second).await, (Bytes::from("hello"), Some(trailers.clone())));
        assert_eq!(collect(third).await, (Bytes::from("hello"), Some(trailers)));
    }

    #[tokio::test]
    async fn a_replay_continues_a_partly_sent_body() {
        let mut first = ReplayBody::new(chunks(&[b"a", b"b", b"c"], None), 1024);
        let second = first.replay().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        drop(first); // the server answered early; the attempt is dropped
        assert_eq!(collect(second).await.0, Bytes::from("abc"));
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_sent_once() {
        let first = ReplayBody::new(chunks(&[b"0123", b"4567", b"89"], None), 8);
        assert!(first.is_replayable());
        let handle = first.replay().unwrap();
        let (bytes, _) = collect(first).await;
        assert_eq!(
            bytes,
            Bytes::from("0123456789"),
            "the current attempt gets the whole body"
        );
        assert!(!handle.is_replayable());
        assert!(handle.replay().is_none());
    }

    #[tokio::test]
    async fn a_body_known_to_be_over_the_cap_is_never_buffered() {
        let body = ReplayBody::new(Full::new(Bytes::from_static(&[0; 100])), 10);
        assert!(!body.is_replayable());
        assert_eq!(body.size_hint().exact(), Some(100));
        assert_eq!(collect(body).await.0.len(), 100);
    }

    #[tokio::test]
    async fn a_replay_waits_for_the_previous_attempt_to_let_go() {
        let mut first = ReplayBody::new(chunks(&[b"x", b"y"], None), 1024);
        let second = first.replay().unwrap();
        let _ = first.frame().await.unwrap().unwrap();
        let mut pending = tokio_test::task::spawn(collect(second));
        assert!(pending.poll().is_pending());
        drop(first);
        assert!(pending.is_woken());
        match pending.poll() {
            Poll::Ready((bytes, _)) => assert_eq!(bytes, Bytes::from("xy")),
            Poll::Pending => panic!("the replay must run once the first attempt let go"),
        }
    }

    #[tokio::test]
    async fn passthrough_and_size_hints() {
        let once = ReplayBody::once(Full::new(Bytes::from_static(b"abc")));
        assert!(!once.is_replayable());
        assert!(once.replay().is_none());
        assert_eq!(once.size_hint().exact(), Some(3));
        assert_eq!(collect(once).await.0, Bytes::from("abc"));

        let body = ReplayBody::new(Full::new(Bytes::from_static(b"abc")), 10);
        let replay = body.replay().unwrap();
        assert_eq!(replay.size_hint().exact(), Some(3));
        assert_eq!(collect(body).await.0, Bytes::from("abc"));
        assert!(!replay.is_end_stream());
        assert_eq!(collect(replay).await.0, Bytes::from("abc"));

        let empty = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 10);
        assert!(empty.replay().unwrap().is_end_stream());
    }
}
