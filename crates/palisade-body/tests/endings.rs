//! Every way a body can end is reported exactly once, and frames pass through.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use palisade_body::{BodyLimits, CompletionBody, CompletionStream, Guard};
use palisade_core::error::{TimedOut, TimeoutKind};
use proptest::prelude::*;

mod support;
use support::*;

#[tokio::test]
async fn end_of_stream_is_reported_once_with_the_data_intact() {
    let log = Log::default();
    let body = CompletionBody::new(Full::new(Bytes::from_static(b"payload")), log.hook());
    assert_eq!(body.size_hint().exact(), Some(7));
    assert!(!body.is_end_stream());
    let collected = body.collect().await.unwrap().to_bytes();
    assert_eq!(collected, "payload");
    assert_eq!(log.heard(), [Heard::Eos(None)]);
}

#[tokio::test]
async fn trailers_are_reported_with_the_end() {
    let log = Log::default();
    let mut body = CompletionBody::new(ScriptBody::new([Step::Data("a"), Step::Trailers("14")]), log.hook());
    assert!(next_frame(&mut body).await.unwrap().unwrap().is_data());
    assert!(log.heard().is_empty(), "nothing is reported before the end");
    let trailers = next_frame(&mut body).await.unwrap().unwrap().into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(log.heard(), [Heard::Eos(Some("14".into()))]);
}

#[tokio::test]
async fn polled_again_after_the_end_yields_nothing_and_reports_nothing() {
    let log = Log::default();
    let mut body = CompletionBody::new(ScriptBody::new([Step::Data("a"), Step::Data("b")]), log.hook());
    assert!(next_frame(&mut body).await.is_some());
    assert!(next_frame(&mut body).await.is_some());
    // The inner body said is_end_stream after "b": the end is known already.
    assert_eq!(log.heard(), [Heard::Eos(None)]);
    for _ in 0..3 {
        assert!(next_frame(&mut body).await.is_none());
    }
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    drop(body);
    assert_eq!(log.heard(), [Heard::Eos(None)]);
}

#[tokio::test]
async fn dropped_in_the_middle_is_reported_as_dropped() {
    let log = Log::default();
    let mut body = CompletionBody::new(
        ScriptBody::new([Step::Data("a"), Step::Data("b"), Step::Data("c")]),
        log.hook(),
    );
    assert!(next_frame(&mut body).await.is_some());
    assert!(log.heard().is_empty());
    drop(body);
    assert_eq!(log.heard(), [Heard::Dropped]);
}

#[tokio::test]
async fn dropped_unread_is_reported_as_dropped() {
    let log = Log::default();
    let body = CompletionBody::new(ScriptBody::new([Step::Data("a")]), log.hook());
    drop(body);
    assert_eq!(log.heard(), [Heard::Dropped]);
}

#[tokio::test]
async fn error_then_drop_reports_the_error_only() {
    let log = Log::default();
    let mut body = CompletionBody::new(
        ScriptBody::new([Step::Data("a"), Step::Error, Step::Data("b")]),
        log.hook(),
    );
    assert!(next_frame(&mut body).await.unwrap().is_ok());
    let err = next_frame(&mut body).await.unwrap().unwrap_err();
    assert!(err.is::<ScriptError>(), "the inner error is boxed, not replaced");
    assert!(next_frame(&mut body).await.is_none());
    drop(body);
    assert_eq!(log.heard(), [Heard::Error("script error".into())]);
}

#[tokio::test]
async fn a_body_empty_from_the_start_is_reported_when_wrapped() {
    let log = Log::default();
    let body = CompletionBody::new(Empty::<Bytes>::new(), log.hook());
    // Readers may never poll an empty body: the end must not wait for a poll.
    assert_eq!(log.heard(), [Heard::Eos(None)]);
    assert!(body.is_end_stream());
    drop(body);
    assert_eq!(log.heard(), [Heard::Eos(None)]);
}

#[tokio::test]
async fn guards_are_held_until_the_end() {
    let permit = Arc::new(());
    let body = CompletionBody::new(
        ScriptBody::new([Step::Data("a"), Step::Data("b")]),
        Guard(permit.clone()),
    );
    assert_eq!(Arc::strong_count(&permit), 2, "the guard lives in the body");
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "ab");
    assert_eq!(Arc::strong_count(&permit), 1, "released at the end");

    let body = CompletionBody::new(
        ScriptBody::new([Step::Data("a")]),
        (Guard(permit.clone()), Guard(permit.clone())),
    );
    assert_eq!(Arc::strong_count(&permit), 3);
    drop(body);
    assert_eq!(Arc::strong_count(&permit), 1, "released on drop");
}

#[tokio::test(start_paused = true)]
async fn total_time_limit_ends_the_body_with_a_typed_error() {
    let log = Log::default();
    let limits = BodyLimits {
        total: Some(Duration::from_millis(100)),
        idle: None,
    };
    let mut body = CompletionBody::with_limits(Ticking::new([10_000]), log.hook(), limits);
    let started = tokio::time::Instant::now();
    let err = next_frame(&mut body).await.unwrap().unwrap_err();
    let timed_out = err.downcast_ref::<TimedOut>().expect("a TimedOut error");
    assert_eq!(timed_out.kind(), TimeoutKind::Body);
    assert_eq!(timed_out.limit(), Duration::from_millis(100));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(log.heard(), [Heard::Error("body timeout of 100ms elapsed".into())]);
    assert!(next_frame(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn idle_limit_restarts_with_every_frame() {
    let limits = BodyLimits {
        total: None,
        idle: Some(Duration::from_millis(50)),
    };
    // Frames every 40 ms keep it alive; the 80 ms gap kills it.
    let log = Log::default();
    let mut body = CompletionBody::with_limits(Ticking::new([40, 40, 40, 80, 10]), log.hook(), limits);
    for _ in 0..3 {
        assert!(next_frame(&mut body).await.unwrap().is_ok());
    }
    let err = next_frame(&mut body).await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<TimedOut>().unwrap().kind(), TimeoutKind::BodyIdle);
    assert_eq!(log.heard(), [Heard::Error("body idle timeout of 50ms elapsed".into())]);
}

#[tokio::test(start_paused = true)]
async fn limits_do_not_fire_on_a_body_that_finishes_in_time() {
    let limits = BodyLimits {
        total: Some(Duration::from_millis(500)),
        idle: Some(Duration::from_millis(50)),
    };
    let log = Log::default();
    let body = CompletionBody::with_limits(Ticking::new([40, 40, 40, 40]), log.hook(), limits);
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "...");
    assert_eq!(log.heard(), [Heard::Eos(None)]);
}

#[tokio::test]
async fn a_stream_reports_end_error_and_drop_once() {
    let items = |v: Vec<Result<u8, ScriptError>>| futures::stream::iter(v);

    let log = Log::default();
    let mut s = CompletionStream::new(items(vec![Ok(1), Ok(2)]), log.hook());
    assert_eq!(s.next().await.unwrap().unwrap(), 1);
    assert_eq!(s.next().await.unwrap().unwrap(), 2);
    assert!(s.next().await.is_none());
    assert!(s.next().await.is_none(), "polled again after the end");
    drop(s);
    assert_eq!(log.heard(), [Heard::Eos(None)]);

    let log = Log::default();
    let mut s = CompletionStream::new(items(vec![Ok(1), Err(ScriptError), Ok(3)]), log.hook());
    assert!(s.next().await.unwrap().is_ok());
    assert!(s.next().await.unwrap().is_err());
    assert_eq!(s.next().await.unwrap().unwrap(), 3, "items after an error pass through");
    drop(s);
    assert_eq!(log.heard(), [Heard::Error("script error".into())]);

    let log = Log::default();
    let mut s = CompletionStream::new(items(vec![Ok(1), Ok(2)]), log.hook());
    assert!(s.next().await.is_some());
    drop(s);
    assert_eq!(log.heard(), [Heard::Dropped]);
}

/// The model: what a reader that reads up to `reads` frames and then drops the body hears.
fn expected(script: &[Step], reads: usize) -> Heard {
    if script.is_empty() {
        return Heard::Eos(None);
    }
    let mut frames = 0;
    for (i, step) in script.iter().enumerate() {
        if matches!(step, Step::Pending) {
            continue;
        }
        if frames >= reads {
            return Heard::Dropped;
        }
        frames += 1;
        match step {
            // After the last step the inner body says is_end_stream: that ends it.
            Step::Data(_) if script[i + 1..].is_empty() => return Heard::Eos(None),
            Step::Data(_) | Step::Pending => {}
            Step::Trailers(s) => return Heard::Eos(Some((*s).into())),
            Step::Error => return Heard::Error("script error".into()),
        }
    }
    // Only pending steps were left: the next read sees the end.
    if frames >= reads {
        Heard::Dropped
    } else {
        Heard::Eos(None)
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

proptest! {
    #[test]
    fn exactly_one_report_for_any_frames_and_drop_point(
        script in proptest::collection::vec(step(), 0..12),
        reads in 0usize..14,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let log = Log::default();
        let heard = runtime.block_on(async {
            let mut body = CompletionBody::new(ScriptBody::new(script.clone()), log.hook());
            let mut frames = Vec::new();
            for _ in 0..reads {
                match next_frame(&mut body).await {
                    Some(Ok(frame)) => frames.push(frame.into_data().ok()),
                    Some(Err(_)) => frames.push(None),
                    None => break,
                }
            }
            // Data frames pass through unchanged.
            for data in frames.into_iter().flatten() {
                assert_eq!(data, "x");
            }
            drop(body);
            log.heard()
        });
        prop_assert_eq!(heard.len(), 1, "reported {:?}", heard);
        prop_assert_eq!(&heard[0], &expected(&script, reads));
    }
}
