//! The foundation against a real tonic server on loopback: per-call options set on a
//! `tonic::Request` reach the `http::Request` a tower layer sees, and the body adapter
//! classifies real gRPC responses by how they really ended.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_body::{BodyLimits, Settle, track};
use palisade_core::classify::Outcome;
use palisade_core::options::{CallOptions, CallOptionsExt, Deadline};
use palisade_core::protocol::{Grpc, Inspect};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use tower::ServiceBuilder;

/// The options and route one request carried, as a layer saw them.
type Seen = (Option<CallOptions>, Option<String>);

#[tokio::test]
async fn tonic_moves_call_options_into_the_http_request() {
    let server = EchoServer::start("options").await.unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let channel = ServiceBuilder::new()
        .map_request(move |request: http::Request<tonic::body::Body>| {
            // What any Palisade layer sees: options through the Grpc inspector.
            let grpc = Grpc::default();
            record.lock().unwrap().push((
                grpc.call_options(&request).cloned(),
                grpc.route(&request).map(str::to_owned),
            ));
            request
        })
        .service(server.channel());
    let mut client = EchoClient::new(channel);

    let mut request = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        payload: b"abc".to_vec().into(),
    });
    request
        .call_options_mut()
        .set_timeout(Duration::from_millis(1500))
        .set_retries(4)
        .set_deadline(Deadline::after(Duration::from_secs(9)));
    let reply = client.unary(request).await.unwrap().into_inner();
    assert_eq!(reply.payload.as_ref(), b"abc");

    // A request without options carries none.
    client.unary(EchoRequest::default()).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let (options, route) = &seen[0];
    let options = options
        .as_ref()
        .expect("tonic moved the extensions into the http request");
    assert_eq!(options.timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(options.retries(), Some(4));
    assert!(options.deadline().unwrap().remaining() <= Duration::from_secs(9));
    assert_eq!(route.as_deref(), Some("/palisade.testkit.echo.v1.Echo/Unary"));
    assert!(seen[1].0.is_none());
}

/// Records the outcome it is settled with.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<Outcome>>>);

struct Record(Outcomes);

impl Settle for Record {
    fn settle(self, outcome: Outcome) {
        self.0.0.lock().unwrap().push(outcome);
    }
}

#[tokio::test]
async fn real_grpc_outcomes_are_classified_at_their_real_end() {
    let server = EchoServer::start("classified").await.unwrap();
    let outcomes = Outcomes::default();
    let recorder = outcomes.clone();
    let channel = ServiceBuilder::new()
        .map_result(move |result| track(&Grpc::default(), result, Record(recorder.clone()), BodyLimits::NONE))
        .service(server.channel());
    let mut client = EchoClient::new(channel);

    // Unary OK.
    client.unary(EchoRequest::default()).await.unwrap();
    assert_eq!(*outcomes.0.lock().unwrap(), [Outcome::Success]);

    // UNAVAILABLE (a trailers-only response): a failure.
    server.faults().fail_next(1, tonic::Code::Unavailable);
    let status = client.unary(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(outcomes.0.lock().unwrap().last(), Some(&Outcome::Failure));

    // NOT_FOUND: the caller's business, not the peer's health.
    server.faults().fail_next(1, tonic::Code::NotFound);
    client.unary(EchoRequest::default()).await.unwrap_err();
    assert_eq!(outcomes.0.lock().unwrap().last(), Some(&Outcome::Success));

    // A stream that fails after 3 messages: nothing is settled at the head or
    // while messages flow, one failure when it ends.
    outcomes.0.lock().unwrap().clear();
    server.faults().fail_stream_after(3, tonic::Code::Unavailable);
    let mut stream = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        assert!(stream.message().await.unwrap().is_some());
        assert!(
            outcomes.0.lock().unwrap().is_empty(),
            "not settled before the stream ends"
        );
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(*outcomes.0.lock().unwrap(), [Outcome::Failure]);

    // A stream dropped half-read is neither.
    outcomes.0.lock().unwrap().clear();
    server.faults().clear_stream_failure();
    let mut stream = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 10,
            interval_ms: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    assert!(outcomes.0.lock().unwrap().is_empty());

    // A stream read to its end with status OK is one success.
    let mut stream = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(*outcomes.0.lock().unwrap(), [Outcome::Success]);
}
