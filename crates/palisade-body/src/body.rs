//! [`CompletionBody`]: an `http_body::Body` that reports how it ended.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;

use crate::end::{BodyEnd, OnEnd};
use crate::limits::{BodyLimits, Timers};

pin_project! {
    /// Wraps a body and calls its [`OnEnd`] hook exactly once, when the body
    /// ends: at end of stream (with the trailers, if any), on an error, or
    /// when it is dropped before its end.
    ///
    /// Frames and [`size_hint`](Body::size_hint) pass through unchanged and
    /// uncopied, and so does [`is_end_stream`](Body::is_end_stream), with one
    /// exception: once the inner body said it had not ended (when wrapped,
    /// or after a frame), the adapter answers `false` until its next poll
    /// without asking again (`false` is only a hint; an h2 body takes its
    /// connection's lock to answer, and every layer above would ask).
    ///
    /// Errors are boxed into [`BoxError`] (the inner error is still there to
    /// downcast), because the optional [`BodyLimits`] add their own
    /// [`TimedOut`](palisade_core::error::TimedOut) error.
    ///
    /// The end is reported as early as it is known: a body that is already at
    /// its end when wrapped is reported at once, and a data frame after which
    /// the inner body says [`is_end_stream`](Body::is_end_stream) ends it,
    /// because many readers stop polling there. After its end the adapter
    /// yields no more frames.
    pub struct CompletionBody<B, H>
    where
        H: OnEnd,
    {
        #[pin]
        inner: B,
        hook: HookSlot<H>,
        timers: Option<Box<Timers>>,
        ended: bool,
        // The inner body said it had not ended at the latest look (when it
        // was wrapped, or right after the latest frame): until the next
        // poll, `is_end_stream` answers `false` without asking again
        // (allowed: `false` is only a hint), so that the layers joining the
        // body at the response head, and nested bodies, ask the bottom one
        // once per frame, not once per layer (an h2 body takes its
        // connection's lock to answer).
        not_ended_yet: bool,
    }
}

/// The hook of a body that has not ended yet; dropped with it, it reports
/// [`BodyEnd::Dropped`]. The drop lives here rather than on
/// [`CompletionBody`] so that the body itself can be taken apart by value
/// ([`CompletionBody::join`]).
struct HookSlot<H: OnEnd>(Option<H>);

impl<H: OnEnd> Drop for HookSlot<H> {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            hook.on_end(BodyEnd::Dropped);
        }
    }
}

impl<B: Body, H: OnEnd> CompletionBody<B, H> {
    /// Wraps `inner`; `hook` hears how it ends.
    pub fn new(inner: B, hook: H) -> Self {
        Self::with_limits(inner, hook, BodyLimits::NONE)
    }

    /// Wraps `inner` and ends it with a typed
    /// [`TimedOut`](palisade_core::error::TimedOut) error if it takes longer
    /// than `limits` allow. The total limit counts from now.
    pub fn with_limits(inner: B, hook: H, limits: BodyLimits) -> Self {
        let mut body = Self {
            ended: false,
            not_ended_yet: false,
            timers: None,
            hook: HookSlot(Some(hook)),
            inner,
        };
        if body.inner.is_end_stream() {
            end_projected(&mut body.ended, &mut body.hook, &mut body.timers, BodyEnd::Eos(None));
        } else {
            body.not_ended_yet = true;
            body.timers = Timers::new(limits);
        }
        body
    }
}

impl<B, H: OnEnd> CompletionBody<B, H> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the end has been reported.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Adds `hook` to this body instead of wrapping it again: the result has
    /// one poll path and one end-of-stream detection, and reports its end
    /// to this body's hook, then to `hook`, exactly as a
    /// [`CompletionBody::with_limits`] around this body would (see
    /// [`Joined`](crate::Joined) for the rules and the one difference).
    ///
    /// `limits` merge with this body's own: the earlier total deadline (the
    /// new one counts from now) and the shorter idle limit apply, and the
    /// [`TimedOut`](palisade_core::error::TimedOut) error names the limit
    /// that fired. A body that has already ended reports
    /// [`BodyEnd::Eos`] (without trailers) to `hook` at once. The inner body
    /// is asked whether it ended only if it was polled since it last said
    /// it had not (when wrapped, or after a frame): joins at the response
    /// head cost no question to an h2 body, whose answer takes its
    /// connection's lock.
    pub fn join<H2: OnEnd>(self, hook: H2, limits: BodyLimits) -> CompletionBody<B, (H, H2)>
    where
        B: Body,
    {
        let CompletionBody {
            inner,
            hook: mut first,
            mut timers,
            ended,
            not_ended_yet,
        } = self;
        let mut joined = CompletionBody {
            inner,
            hook: HookSlot(None),
            timers: None,
            ended,
            not_ended_yet,
        };
        // As a new wrapper would: a body at its end is reported at once.
        let at_end = joined.ended || (!joined.not_ended_yet && joined.inner.is_end_stream());
        match first.0.take() {
            Some(first) => {
                joined.hook = HookSlot(Some((first, hook)));
                if at_end {
                    end_projected(
                        &mut joined.ended,
                        &mut joined.hook,
                        &mut joined.timers,
                        BodyEnd::Eos(None),
                    );
                } else {
                    joined.timers = Timers::merge(timers.take(), limits);
                }
            }
            // The first hook has heard the end already: only the new one is left.
            None => {
                joined.ended = true;
                hook.on_end(BodyEnd::Eos(None));
            }
        }
        joined
    }
}

fn end_projected<H: OnEnd>(
    ended: &mut bool,
    hook: &mut HookSlot<H>,
    timers: &mut Option<Box<Timers>>,
    end: BodyEnd<'_>,
) {
    *ended = true;
    *timers = None;
    if let Some(hook) = hook.0.take() {
        hook.on_end(end);
    }
}

impl<B, H> Body for CompletionBody<B, H>
where
    B: Body,
    B::Error: Into<BoxError>,
    H: OnEnd,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        *this.not_ended_yet = false;
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(timers) = this.timers.as_mut() {
                    let expired = ready!(timers.poll_expired(cx));
                    end_projected(this.ended, this.hook, this.timers, BodyEnd::Error(&expired));
                    return Poll::Ready(Some(Err(expired.into())));
                }
                return Poll::Pending;
            }
        };
        match frame {
            None => {
                end_projected(this.ended, this.hook, this.timers, BodyEnd::Eos(None));
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    end_projected(this.ended, this.hook, this.timers, BodyEnd::Eos(Some(trailers)));
                } else if inner.is_end_stream() {
                    end_projected(this.ended, this.hook, this.timers, BodyEnd::Eos(None));
                } else {
                    *this.not_ended_yet = true;
                    if let Some(timers) = this.timers.as_mut() {
                        timers.frame_arrived();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                end_projected(this.ended, this.hook, this.timers, BodyEnd::Error(error.as_ref()));
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (!self.not_ended_yet && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

impl<B: fmt::Debug, H: OnEnd> fmt::Debug for CompletionBody<B, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionBody")
            .field("inner", &self.inner)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
