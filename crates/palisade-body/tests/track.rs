//! `track` settles a layer's guard with the outcome the classifier decides, when it is known.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use palisade_body::{BodyLimits, Settle, track};
use palisade_core::classify::{AbandonPolicy, ClassifyExt, Outcome};
use palisade_core::protocol::{Grpc, Http, Plain};

/// A guard that writes down how it was settled, or that it was dropped unsettled.
struct Probe {
    log: Arc<Mutex<Vec<&'static str>>>,
    settled: bool,
}

impl Probe {
    fn new() -> (Self, Arc<Mutex<Vec<&'static str>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Probe {
                log: log.clone(),
                settled: false,
            },
            log,
        )
    }
}

impl Settle for Probe {
    fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.log.lock().unwrap().push(outcome.as_str());
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.settled {
            self.log.lock().unwrap().push("unsettled");
        }
    }
}

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;
type GrpcBody = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn grpc_body(trailer_status: Option<&'static str>, error: bool) -> GrpcBody {
    let mut frames: Frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01m")))];
    if error {
        frames.push(Err(std::io::Error::other("stream reset")));
    }
    if let Some(status) = trailer_status {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    StreamBody::new(futures::stream::iter(frames))
}

#[tokio::test]
async fn plain_settles_at_once() {
    let (probe, log) = Probe::new();
    let response: Result<u32, &str> = track(&Plain, Ok(7), probe, BodyLimits::NONE);
    assert_eq!(response, Ok(7));
    assert_eq!(*log.lock().unwrap(), ["success"]);

    let (probe, log) = Probe::new();
    let response: Result<u32, &str> = track(&Plain, Err("refused"), probe, BodyLimits::NONE);
    assert_eq!(response, Err("refused"), "the error passes through untouched");
    assert_eq!(*log.lock().unwrap(), ["failure"]);

    let business = Plain.errors_with(|e: &&str| {
        if e.starts_with("biz") {
            Outcome::Ignored
        } else {
            Outcome::Failure
        }
    });
    let (probe, log) = Probe::new();
    let _ = track::<_, u32, &str, _>(&business, Err("biz: no such user"), probe, BodyLimits::NONE);
    assert_eq!(*log.lock().unwrap(), ["ignored"]);
}

#[tokio::test]
async fn http_settles_when_the_body_ends_not_at_the_head() {
    let (probe, log) = Probe::new();
    let response = http::Response::builder()
        .status(503)
        .body(Full::new(Bytes::from_static(b"busy")))
        .unwrap();
    let response = track::<_, _, (), _>(&Http::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    assert!(log.lock().unwrap().is_empty(), "still streaming: nothing settled yet");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "busy");
    assert_eq!(*log.lock().unwrap(), ["failure"]);
}

#[tokio::test]
async fn grpc_200_with_unavailable_trailers_is_a_failure() {
    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(Some("14"), false));
    let response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    assert_eq!(*log.lock().unwrap(), ["failure"]);

    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(Some("0"), false));
    let response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["success"]);
}

#[tokio::test]
async fn grpc_body_error_mid_stream_is_a_failure() {
    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(None, true));
    let response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert_eq!(*log.lock().unwrap(), ["failure"]);
}

#[tokio::test]
async fn a_grpc_body_dropped_before_its_trailers_settles_nothing_by_default() {
    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(Some("14"), false));
    let response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    drop(response);
    assert_eq!(*log.lock().unwrap(), ["unsettled"]);
}

#[tokio::test]
async fn a_failure_known_from_the_head_counts_even_if_the_body_is_dropped_unread() {
    let (probe, log) = Probe::new();
    let response = http::Response::builder()
        .status(503)
        .body(Full::new(Bytes::from_static(b"busy")))
        .unwrap();
    let response = track::<_, _, (), _>(&Http::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    drop(response);
    assert_eq!(*log.lock().unwrap(), ["failure"]);

    // Whatever the abandon policy says.
    let lenient = Http::default().with_abandon_policy(AbandonPolicy::new().with_body_dropped(Outcome::Ignored));
    let (probe, log) = Probe::new();
    let response = http::Response::builder()
        .status(503)
        .body(Full::new(Bytes::from_static(b"busy")))
        .unwrap();
    drop(track::<_, _, (), _>(&lenient, Ok(response), probe, BodyLimits::NONE).unwrap());
    assert_eq!(*log.lock().unwrap(), ["failure"]);
}

#[tokio::test]
async fn a_2xx_whose_body_is_dropped_unread_is_a_success_by_default() {
    // A hyper client that checks `status()` and drops the body got its answer.
    let (probe, log) = Probe::new();
    let response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
    let response = track::<_, _, (), _>(&Http::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    assert!(log.lock().unwrap().is_empty(), "nothing before the body ends or goes");
    drop(response);
    assert_eq!(*log.lock().unwrap(), ["success"]);

    // Half-read, too.
    let (probe, log) = Probe::new();
    let frames: Frames = vec![
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Ok(Frame::data(Bytes::from_static(b"b"))),
    ];
    let response = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
    let response = track::<_, _, (), _>(&Http::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.is_some());
    drop(body);
    assert_eq!(*log.lock().unwrap(), ["success"]);

    // A policy can say otherwise.
    for (outcome, expected) in [(Outcome::Ignored, "unsettled"), (Outcome::Failure, "failure")] {
        let http = Http::default().with_abandon_policy(AbandonPolicy::new().with_body_dropped(outcome));
        let (probe, log) = Probe::new();
        let response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
        drop(track::<_, _, (), _>(&http, Ok(response), probe, BodyLimits::NONE).unwrap());
        assert_eq!(*log.lock().unwrap(), [expected]);
    }

    // A body read to its end is judged at its end, not as dropped.
    let (probe, log) = Probe::new();
    let response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
    let response = track::<_, _, (), _>(&Http::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["success"]);
}

#[tokio::test]
async fn a_grpc_stream_dropped_before_its_trailers_follows_the_policy() {
    let strict = Grpc::default().with_abandon_policy(AbandonPolicy::new().with_trailers_dropped(Outcome::Failure));
    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(Some("0"), false));
    drop(track::<_, _, (), _>(&strict, Ok(response), probe, BodyLimits::NONE).unwrap());
    assert_eq!(*log.lock().unwrap(), ["failure"]);

    // The policy rides along a closure refinement.
    let refined = strict.errors_with(|_: &()| Outcome::Ignored);
    let (probe, log) = Probe::new();
    let response = http::Response::new(grpc_body(Some("0"), false));
    drop(track::<_, _, (), _>(&refined, Ok(response), probe, BodyLimits::NONE).unwrap());
    assert_eq!(*log.lock().unwrap(), ["failure"]);
}

#[tokio::test]
async fn a_trailers_only_grpc_response_settles_from_its_headers_at_once() {
    // A trailers-only response: the status is in the headers and the body is empty.
    // A reader (tonic) may never poll such a body, so the verdict must not wait for it.
    let (probe, log) = Probe::new();
    let response = http::Response::builder()
        .header("grpc-status", "14")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    assert_eq!(*log.lock().unwrap(), ["failure"]);
    drop(response);
    assert_eq!(*log.lock().unwrap(), ["failure"], "settled exactly once");

    let (probe, log) = Probe::new();
    let response = http::Response::builder()
        .header("grpc-status", "5")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let _response = track::<_, _, (), _>(&Grpc::default(), Ok(response), probe, BodyLimits::NONE).unwrap();
    assert_eq!(*log.lock().unwrap(), ["success"], "NOT_FOUND is the caller's business");
}

#[tokio::test]
async fn transport_errors_settle_as_failures() {
    let (probe, log) = Probe::new();
    let result: Result<http::Response<Empty<Bytes>>, std::io::Error> =
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    let result = track(&Grpc::default(), result, probe, BodyLimits::NONE);
    assert!(result.is_err());
    assert_eq!(*log.lock().unwrap(), ["failure"]);
}
