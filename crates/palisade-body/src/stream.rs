//! [`CompletionStream`]: the same contract as [`CompletionBody`](crate::CompletionBody)
//! for a `futures::Stream` of results, for services whose responses are not http.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::end::{BodyEnd, OnEnd};

pin_project! {
    /// Wraps a stream of `Result<T, E>` and calls its hook exactly once: at
    /// the end of the stream ([`BodyEnd::Eos`] with no trailers), at the first
    /// `Err` item ([`BodyEnd::Error`]), or when dropped before either
    /// ([`BodyEnd::Dropped`]). Items pass through unchanged; after an error the
    /// stream goes on yielding whatever the inner stream yields, and after
    /// its end it yields nothing more.
    ///
    /// Unlike the body adapter it has no time limits: it cannot make an error
    /// of the inner stream's type. Wrap the stream in `tokio_stream`'s
    /// `timeout` if you need one.
    pub struct CompletionStream<S, H>
    where
        H: OnEnd,
    {
        #[pin]
        inner: S,
        hook: Option<H>,
        finished: bool,
    }

    impl<S, H> PinnedDrop for CompletionStream<S, H>
    where
        H: OnEnd,
    {
        fn drop(this: Pin<&mut Self>) {
            if let Some(hook) = this.project().hook.take() {
                hook.on_end(BodyEnd::Dropped);
            }
        }
    }
}

impl<S, H: OnEnd> CompletionStream<S, H> {
    /// Wraps `inner`; `hook` hears how it ends.
    pub fn new(inner: S, hook: H) -> Self {
        Self {
            inner,
            hook: Some(hook),
            finished: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, T, E, H> Stream for CompletionStream<S, H>
where
    S: Stream<Item = Result<T, E>>,
    E: Error + 'static,
    H: OnEnd,
{
    type Item = Result<T, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let item = ready!(this.inner.poll_next(cx));
        match &item {
            None => {
                *this.finished = true;
                if let Some(hook) = this.hook.take() {
                    hook.on_end(BodyEnd::Eos(None));
                }
            }
            Some(Err(error)) => {
                if let Some(hook) = this.hook.take() {
                    hook.on_end(BodyEnd::Error(error));
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            (0, Some(0))
        } else {
            self.inner.size_hint()
        }
    }
}

impl<S: fmt::Debug, H: OnEnd> fmt::Debug for CompletionStream<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionStream")
            .field("inner", &self.inner)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
