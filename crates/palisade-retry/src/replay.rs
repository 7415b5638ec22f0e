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
//! A replay is made when a retry is decided, which can be before the previous
//! attempt's body is gone (an http/2 connection keeps sending a request body
//! until the server resets the stream). If that body then outgrows the cap or
//! its read fails, the replay can no longer send the whole body: it yields a
//! [`BodyNotReplayable`] error instead of data, so the server never takes a
//! cut-short or empty body for a complete one.
//!
//! Only one attempt reads at a time: the attempt that holds the state returns
//! it when its body is dropped (through the crate's private hand-off, in
//! `handoff.rs`). A replay polled while an earlier attempt's body is still
//! alive (still owned by a connection) waits until it is dropped.
//!
//! When a call may not be retried at all (0 retries), the body passes through
//! without any shared state or buffering.
//!
//! # Committed calls stop buffering
//!
//! Once no replay can happen any more, the layer [commits](ReplayBody::commit)
//! the body: the call's response headers arrived and are not retried, the
//! last attempt is being sent, or no retry is left (the budget is spent, the
//! deadline is too close). From then on the attempt that sends the body
//! passes the rest of it through without buffering, and lets go of the
//! frames it had buffered as soon as it has sent them, so a long-lived
//! client stream does not keep (up to the cap of) its first bytes for
//! nothing. A committed body can no longer be replayed.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use palisade_core::BoxError;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::handoff::HandOff;

/// The default cap of a replay buffer: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// The error a replayed body yields when the body it replays can no longer be
/// sent whole: an earlier attempt's body outgrew the replay cap, or its read
/// failed, after this replay was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyNotReplayable {
    read_failed: bool,
}

impl BodyNotReplayable {
    /// Whether the original body's read failed (else it outgrew the cap).
    pub fn read_failed(&self) -> bool {
        self.read_failed
    }
}

impl fmt::Display for BodyNotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.read_failed {
            f.write_str("request body cannot be replayed: reading it failed")
        } else {
            f.write_str("request body cannot be replayed: it outgrew the replay cap")
        }
    }
}

impl std::error::Error for BodyNotReplayable {}

/// An http request body that can be sent again for a retry. See the
/// [module docs](self).
///
/// Its error is a [`BoxError`]: the original body's error, untouched (downcast
/// it), or [`BodyNotReplayable`] from a replay that cannot send the whole body.
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

#[allow(clippy::large_enum_variant)] // boxing the replay state would cost an allocation per call
enum Kind<B> {
    /// Not replayable: the call is sent once.
    Passthrough(B),
    Replay(Replay<B>),
}

struct Replay<B> {
    shared: Arc<CallBody<B>>,
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
    /// Whether this attempt held the state when the buffer was lost (its read
    /// outgrew the cap or failed, or the body was over the cap from the
    /// start): it has sent every byte so far and may go on. Any other
    /// attempt that finds the buffer lost yields [`BodyNotReplayable`].
    lost_here: bool,
}

/// The body of one call, shared by the [`ReplayBody`] of each of its attempts.
struct CallBody<B> {
    /// Set once the buffer is gone: the body cannot be replayed.
    capped: AtomicBool,
    /// Set once no replay will be made: the attempt sending the body stops
    /// buffering (unlike `capped`, an attempt already made stays whole).
    committed: AtomicBool,
    /// Set when the buffer was lost because the original body's read failed.
    failed: AtomicBool,
    /// The state, while no attempt holds it.
    state: HandOff<State<B>>,
}

struct State<B> {
    /// The original body, until it ended.
    body: Option<B>,
    frames: Frames,
    trailers: Option<HeaderMap>,
    buffered: usize,
    cap: usize,
}

/// The data frames sent so far, the first one inline: a unary call's body
/// is one frame, and buffering it then allocates nothing.
#[derive(Debug, Default)]
struct Frames {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl Frames {
    fn get(&self, i: usize) -> Option<&Bytes> {
        match i {
            0 => self.first.as_ref(),
            _ => self.rest.get(i - 1),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, frame: Bytes) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push(frame);
        }
    }
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
            frames: Frames::default(),
            trailers: None,
            buffered: 0,
            cap,
        };
        Self {
            kind: Kind::Replay(Replay {
                shared: Arc::new(CallBody {
                    capped: AtomicBool::new(capped),
                    committed: AtomicBool::new(false),
                    failed: AtomicBool::new(false),
                    // The first attempt holds the state.
                    state: HandOff::taken(),
                }),
                state: Some(state),
                replayed: 0,
                trailers_sent: false,
                sent: 0,
                hint,
                empty,
                lost_here: capped,
            }),
        }
    }

    /// A body for the next attempt, replaying what was sent; `None` when the
    /// body cannot be replayed (it outgrew its cap, its read failed, or it
    /// was made with [`once`](Self::once)).
    pub fn replay(&self) -> Option<Self> {
        self.source().and_then(|source| source.replay())
    }

    /// What the retry keeps between attempts to make their bodies: the
    /// shared state and what a replay needs to know, not a body of its own
    /// (which would carry room for the whole read state in every call's
    /// future). `None` when the body cannot be replayed.
    pub(crate) fn source(&self) -> Option<ReplaySource<B>> {
        match &self.kind {
            Kind::Replay(r) if r.is_replayable() => Some(ReplaySource {
                shared: r.shared.clone(),
                hint: r.hint,
                empty: r.empty,
            }),
            _ => None,
        }
    }

    /// Whether a later attempt can replay this body.
    pub fn is_replayable(&self) -> bool {
        match &self.kind {
            Kind::Passthrough(_) => false,
            Kind::Replay(r) => r.is_replayable(),
        }
    }

    /// Tells the body that no further replay will be made (the call is
    /// committed): the attempt sending it stops buffering what it reads and
    /// frees what it buffered once it has sent it. Replays made before (the
    /// last attempt's body) still send the whole body; no new replay can be
    /// made. Idempotent; does nothing on a body made with [`once`](Self::once).
    pub fn commit(&self) {
        if let Kind::Replay(r) = &self.kind {
            r.shared.commit();
        }
    }
}

/// Makes the bodies of a call's later attempts ([`ReplayBody::source`]):
/// what [`ReplayBody::replay`] does, kept apart from any body.
pub(crate) struct ReplaySource<B> {
    shared: Arc<CallBody<B>>,
    hint: SizeHint,
    empty: bool,
}

impl<B> ReplaySource<B> {
    /// The next attempt's body; `None` once the body cannot be replayed.
    pub(crate) fn replay(&self) -> Option<ReplayBody<B>> {
        self.is_replayable().then(|| ReplayBody {
            kind: Kind::Replay(Replay {
                shared: self.shared.clone(),
                state: None,
                replayed: 0,
                trailers_sent: false,
                sent: 0,
                hint: self.hint,
                empty: self.empty,
                lost_here: false,
            }),
        })
    }

    pub(crate) fn is_replayable(&self) -> bool {
        self.shared.is_replayable()
    }

    /// As [`ReplayBody::commit`].
    pub(crate) fn commit(&self) {
        self.shared.commit();
    }
}

impl<B> CallBody<B> {
    fn is_replayable(&self) -> bool {
        !self.capped.load(Ordering::Acquire) && !self.committed.load(Ordering::Acquire)
    }

    fn commit(&self) {
        self.committed.store(true, Ordering::Release);
    }
}

impl<B> Replay<B> {
    fn is_replayable(&self) -> bool {
        self.shared.is_replayable()
    }

    /// Whether this attempt can no longer send the whole body.
    fn is_cut(&self) -> bool {
        !self.lost_here && self.shared.capped.load(Ordering::Acquire)
    }

    fn not_replayable(&self) -> BoxError {
        BodyNotReplayable {
            read_failed: self.shared.failed.load(Ordering::Acquire),
        }
        .into()
    }

    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            self.shared.state.put_back(state);
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
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let replay = match &mut this.kind {
            Kind::Passthrough(body) => {
                return Pin::new(body).poll_frame(cx).map(|f| {
                    f.map(|f| {
                        f.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                            .map_err(Into::into)
                    })
                });
            }
            Kind::Replay(replay) => replay,
        };
        if replay.is_cut() {
            // An earlier attempt lost the buffer after this replay was made:
            // never send a cut-short body as if it were whole.
            return Poll::Ready(Some(Err(replay.not_replayable())));
        }
        if replay.state.is_none() {
            match replay.shared.state.poll_take(cx) {
                Poll::Ready(state) => replay.state = Some(state),
                // An earlier attempt's body is alive (owned by its connection).
                Poll::Pending => return Poll::Pending,
            }
            // The state may have been lost by the attempt that just released it.
            if replay.is_cut() {
                return Poll::Ready(Some(Err(replay.not_replayable())));
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
        let committed = replay.shared.committed.load(Ordering::Acquire);
        if committed && !state.frames.is_empty() && replay.replayed >= state.frames.len() {
            // No replay will be made: what this attempt has sent need not be kept.
            state.frames = Frames::default();
            state.buffered = 0;
            replay.replayed = 0;
        }
        if let Some(body) = state.body.as_mut() {
            return match Pin::new(body).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    state.body = None;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(error))) => {
                    // What was sent is not the whole body: never replay it.
                    replay.lost_here = true;
                    replay.shared.failed.store(true, Ordering::Release);
                    replay.shared.capped.store(true, Ordering::Release);
                    state.frames = Frames::default();
                    state.body = None;
                    Poll::Ready(Some(Err(error.into())))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        let data = data.copy_to_bytes(data.remaining());
                        replay.sent += data.len() as u64;
                        if !committed && !replay.shared.capped.load(Ordering::Acquire) {
                            if state.buffered + data.len() > state.cap {
                                tracing::debug!(
                                    target: "palisade",
                                    layer = "retry",
                                    event = "replay_capped",
                                    limit = state.cap,
                                    reason = "request body outgrew the replay cap",
                                    "the call will not be retried"
                                );
                                replay.lost_here = true;
                                replay.shared.capped.store(true, Ordering::Release);
                                state.frames = Frames::default();
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
                            if !committed {
                                state.trailers = Some(trailers.clone());
                            }
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
            // A replay that can only yield its error has not ended.
            Kind::Replay(replay) if replay.is_cut() => false,
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

impl<B> fmt::Debug for ReplaySource<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplaySource")
            .field("replayable", &self.is_replayable())
            .finish_non_exhaustive()
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
        // The replay made before the cap was passed cannot send the body.
        assert!(!handle.is_end_stream());
        let err = handle.collect().await.unwrap_err();
        let err = err.downcast_ref::<BodyNotReplayable>().expect("BodyNotReplayable");
        assert!(!err.read_failed());
    }

    /// The reviewer's trace: the replay is made when the retry is decided, the
    /// previous attempt's body goes on (h2 sends until reset), passes the cap
    /// and is dropped. The replay must fail, never send the tail "89".
    #[tokio::test]
    async fn a_replay_made_before_the_cap_was_passed_errors() {
        let mut first = ReplayBody::new(chunks(&[b"0123", b"4567", b"89"], None), 6);
        let mut replay = first.replay().unwrap();
        assert_eq!(first.frame().await.unwrap().unwrap().into_data().unwrap(), "0123");
        assert_eq!(first.frame().await.unwrap().unwrap().into_data().unwrap(), "4567");
        drop(first);
        let frame = replay.frame().await.expect("an error, not the end of the body");
        let err = frame.expect_err("an error, not data");
        assert!(err.is::<BodyNotReplayable>(), "{err}");
        assert!(!replay.is_replayable());
    }

    #[tokio::test]
    async fn a_replay_waiting_while_the_cap_is_passed_errors() {
        let mut first = ReplayBody::new(chunks(&[b"0123", b"4567", b"89"], None), 6);
        let replay = first.replay().unwrap();
        let _ = first.frame().await.unwrap().unwrap();
        let mut pending = tokio_test::task::spawn(replay.collect());
        assert!(pending.poll().is_pending(), "waits for the first attempt");
        let _ = first.frame().await.unwrap().unwrap(); // passes the cap
        drop(first);
        assert!(pending.is_woken());
        match pending.poll() {
            Poll::Ready(Err(err)) => assert!(err.is::<BodyNotReplayable>(), "{err}"),
            Poll::Ready(Ok(c)) => panic!("a cut body was sent as whole: {:?}", c.to_bytes()),
            Poll::Pending => panic!("the replay must run once the first attempt let go"),
        }
    }

    #[tokio::test]
    async fn a_replay_made_before_a_read_failure_errors() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("disk")),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
        ];
        let mut first = ReplayBody::new(StreamBody::new(futures::stream::iter(frames)), 1024);
        let mut replay = first.replay().unwrap();
        assert_eq!(first.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        let err = first.frame().await.unwrap().unwrap_err();
        assert!(
            err.downcast_ref::<std::io::Error>().is_some(),
            "the body's own error, untouched"
        );
        drop(first);
        let err = replay
            .frame()
            .await
            .expect("an error, not an empty body")
            .expect_err("an error, not data");
        let err = err.downcast_ref::<BodyNotReplayable>().expect("BodyNotReplayable");
        assert!(err.read_failed());
    }

    #[tokio::test]
    async fn every_waiting_replay_is_woken() {
        let mut first = ReplayBody::new(chunks(&[b"x", b"y"], None), 1024);
        let second = first.replay().unwrap();
        let third = first.replay().unwrap();
        let _ = first.frame().await.unwrap().unwrap();
        let mut a = tokio_test::task::spawn(collect(second));
        let mut b = tokio_test::task::spawn(collect(third));
        assert!(a.poll().is_pending());
        assert!(b.poll().is_pending());
        assert!(!a.is_woken() && !b.is_woken(), "waiting replays do not wake each other");
        drop(first);
        assert!(a.is_woken() && b.is_woken());
        match a.poll() {
            Poll::Ready((bytes, _)) => assert_eq!(bytes, Bytes::from("xy")),
            Poll::Pending => panic!("the replay must run"),
        }
        assert!(b.is_woken(), "released by the second, the third runs");
        match b.poll() {
            Poll::Ready((bytes, _)) => assert_eq!(bytes, Bytes::from("xy")),
            Poll::Pending => panic!("the replay must run"),
        }
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

    /// A frame whose bytes count their own drop: kept in a replay buffer,
    /// a frame stays alive after it was sent.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>, Vec<u8>);

    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.1
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted_frames(
        n: usize,
        len: usize,
        freed: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin + use<> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..n)
            .map(|i| {
                Ok(Frame::data(Bytes::from_owner(Counted(
                    freed.clone(),
                    vec![i as u8; len],
                ))))
            })
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    fn buffered_frames<B>(body: &ReplayBody<B>) -> usize {
        match &body.kind {
            Kind::Replay(Replay { state: Some(state), .. }) => state.frames.len(),
            _ => 0,
        }
    }

    #[tokio::test]
    async fn a_committed_body_stops_buffering_and_frees_what_it_sent() {
        let freed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut first = ReplayBody::new(counted_frames(4, 1024, &freed), 64 * 1024);
        let handle = first.replay().unwrap();
        let _ = first.frame().await.unwrap().unwrap();
        assert_eq!(buffered_frames(&first), 1, "buffered while a retry may come");
        assert_eq!(freed.load(Ordering::SeqCst), 0);

        // The response headers arrived: no replay will be made.
        handle.commit();
        assert!(!handle.is_replayable() && !first.is_replayable());
        assert!(handle.replay().is_none());
        while let Some(frame) = first.frame().await {
            drop(frame.unwrap());
            assert_eq!(buffered_frames(&first), 0, "nothing is buffered once committed");
        }
        assert_eq!(freed.load(Ordering::SeqCst), 4, "every frame was freed once sent");
    }

    #[tokio::test]
    async fn the_last_attempt_sends_the_whole_body_without_buffering_the_rest() {
        let freed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut first = ReplayBody::new(counted_frames(3, 16, &freed), 1024);
        let last = first.replay().unwrap();
        let _ = first.frame().await.unwrap().unwrap();
        drop(first); // the first attempt failed after sending one frame
        // The last attempt is about to be sent: commit, then send it.
        let mut last = last;
        last.commit();
        let mut sent = Vec::new();
        while let Some(frame) = last.frame().await {
            sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
            // Only the frame buffered before the commit may still be held,
            // until the next read: nothing new is kept for a replay.
            let alive = sent.len() / 16 - freed.load(Ordering::SeqCst);
            assert!(alive <= 1, "{alive} sent frames still held");
        }
        assert_eq!(sent.len(), 48, "the replay made before the commit is whole");
        assert_eq!(&sent[..16], &[0u8; 16][..]);
        assert_eq!(&sent[32..], &[2u8; 16][..]);
        assert_eq!(buffered_frames(&last), 0);
        assert_eq!(freed.load(Ordering::SeqCst), 3);
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

/// How each attempt is handed to the inner service: chosen once, in the
/// builder ([`RetryLayerBuilder::attempt_body`](crate::RetryLayerBuilder::attempt_body),
/// or `tonic_body` with the `tonic`
/// feature), so that no `map_request` is needed between the layer and the
/// service below it.
///
/// `Attempt` is the attempt as the protocol makes it: `Req` itself for
/// [`Plain`](palisade_core::protocol::Plain), `http::Request<ReplayBody<B>>`
/// for [`Http`](palisade_core::protocol::Http) and
/// [`Grpc`](palisade_core::protocol::Grpc). The conversion runs once per
/// attempt, just before the inner service is called (after the layer wrote
/// its headers, such as `grpc-timeout`). The built-in choices:
///
/// - [`KeepReplayBody`], the default: the attempt as it is (nothing runs);
/// - `TonicBody` (feature `tonic`): the body put into a
///   `tonic::body::Body`, the request type a tonic `Channel` takes.
pub trait AttemptBody<Attempt> {
    /// What the inner service receives.
    type Output;

    /// Turns one attempt into what the inner service receives.
    fn attempt(attempt: Attempt) -> Self::Output;
}

/// The default [`AttemptBody`]: the inner service receives the attempt as
/// the protocol makes it (`http::Request<ReplayBody<B>>` on the http paths).
/// Costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepReplayBody;

impl<A> AttemptBody<A> for KeepReplayBody {
    type Output = A;

    #[inline(always)]
    fn attempt(attempt: A) -> A {
        attempt
    }
}

/// The [`AttemptBody`] for a tonic `Channel` (feature `tonic`): the inner
/// service receives `http::Request<tonic::body::Body>`, the replayable body
/// inside it. `tonic::body::Body::new` boxes the body once per attempt,
/// exactly what the `map_request(|r| r.map(tonic::body::Body::new))` it
/// replaces did; nothing else is added.
///
/// It takes the requests a tonic-generated client sends,
/// `http::Request<tonic::body::Body>`, and only those: so the request type
/// of the whole stack is known from the channel below, and a stack built
/// with it needs no type annotation (`ServiceExt::map_response` on it, a
/// `BoxCloneService::new` of it).
#[cfg(feature = "tonic")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TonicBody;

#[cfg(feature = "tonic")]
impl AttemptBody<http::Request<ReplayBody<tonic::body::Body>>> for TonicBody {
    type Output = http::Request<tonic::body::Body>;

    #[inline]
    fn attempt(attempt: http::Request<ReplayBody<tonic::body::Body>>) -> http::Request<tonic::body::Body> {
        attempt.map(tonic::body::Body::new)
    }
}
