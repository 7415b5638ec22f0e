//! Optional time limits on a body: total time and idle time between frames.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::error::{TimedOut, TimeoutKind};
use tokio::time::{Instant, Sleep};

/// Time limits a [`CompletionBody`](crate::CompletionBody) enforces. Both off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyLimits {
    /// The longest the whole body may take, counted from when the adapter was made.
    pub total: Option<Duration>,
    /// The longest the body may go without producing a frame.
    pub idle: Option<Duration>,
}

impl BodyLimits {
    /// No limits.
    pub const NONE: BodyLimits = BodyLimits {
        total: None,
        idle: None,
    };

    /// Whether any limit is set.
    pub fn is_some(&self) -> bool {
        self.total.is_some() || self.idle.is_some()
    }
}

/// The timers of a limited body. Boxed only when a limit is set, so an
/// unlimited body creates no timer.
#[derive(Debug)]
pub(crate) struct Timers {
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl Timers {
    pub(crate) fn new(limits: BodyLimits) -> Option<Box<Timers>> {
        if !limits.is_some() {
            return None;
        }
        let now = Instant::now();
        let timer = |limit: Duration| (limit, Box::pin(tokio::time::sleep_until(deadline(now, limit))));
        Some(Box::new(Timers {
            total: limits.total.map(timer),
            idle: limits.idle.map(timer),
        }))
    }

    /// The timers of a body that already had `timers`, joined by a layer with
    /// `limits` (see [`CompletionBody::join`](crate::CompletionBody::join)):
    /// the earlier total deadline, with its limit, and the shorter idle
    /// limit, counted from now (never later than the current idle deadline).
    pub(crate) fn merge(timers: Option<Box<Timers>>, limits: BodyLimits) -> Option<Box<Timers>> {
        let Some(mut timers) = timers else {
            return Timers::new(limits);
        };
        let now = Instant::now();
        let earlier = |slot: &mut Option<(Duration, Pin<Box<Sleep>>)>, limit: Duration, at: Instant| match slot {
            Some((current, sleep)) => {
                if at < sleep.deadline() {
                    *current = limit;
                    sleep.as_mut().reset(at);
                }
            }
            None => *slot = Some((limit, Box::pin(tokio::time::sleep_until(at)))),
        };
        if let Some(limit) = limits.total {
            earlier(&mut timers.total, limit, deadline(now, limit));
        }
        if let Some(limit) = limits.idle
            && timers.idle.as_ref().is_none_or(|(current, _)| limit < *current)
        {
            earlier(&mut timers.idle, limit, deadline(now, limit));
            // The shorter limit governs from here on, also after a frame.
            if let Some((current, _)) = &mut timers.idle {
                *current = limit;
            }
        }
        Some(timers)
    }

    /// A frame arrived: the idle timer starts again.
    pub(crate) fn frame_arrived(&mut self) {
        if let Some((limit, sleep)) = &mut self.idle {
            let at = deadline(Instant::now(), *limit);
            sleep.as_mut().reset(at);
        }
    }

    /// `Ready` with the error of the first limit that has passed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<TimedOut> {
        if let Some((limit, sleep)) = &mut self.total
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(TimedOut::new(TimeoutKind::Body, *limit));
        }
        if let Some((limit, sleep)) = &mut self.idle
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(TimedOut::new(TimeoutKind::BodyIdle, *limit));
        }
        Poll::Pending
    }
}

fn deadline(now: Instant, limit: Duration) -> Instant {
    // A limit too large to add is the same as a very distant deadline.
    palisade_core::time::after(now, limit)
}
