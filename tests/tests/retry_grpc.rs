//! The retry layer over real tonic servers: replayed bodies, peer switching
//! through the attempt record, committed streams.
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::error::BoxError;
use palisade_core::options::CallOptionsExt;
use palisade_core::peer::PeerId;
use palisade_retry::{Attempts, ReplayBody, RetryLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoRequest, StreamRequest};
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Layer, Service, ServiceExt};

/// A small balancer over two peers that honours the attempt record: it picks
/// the first peer no earlier attempt used, records it, and names it in the
/// response's extensions.
#[derive(Clone)]
struct TwoPeers {
    peers: Vec<(PeerId, Channel)>,
}

impl TwoPeers {
    fn new(a: &EchoServer, b: &EchoServer) -> Self {
        Self {
            peers: vec![
                (PeerId::from(a.name()), a.channel()),
                (PeerId::from(b.name()), b.channel()),
            ],
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<ReplayBody<Body>>> for TwoPeers {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<ReplayBody<Body>>) -> Self::Future {
        let record = req.attempt_record_mut();
        let (peer, channel) = self
            .peers
            .iter()
            .find(|(peer, _)| !record.contains(peer))
            .unwrap_or(&self.peers[0])
            .clone();
        record.record(peer.clone());
        let req = req.map(Body::new);
        Box::pin(async move {
            let mut channel = channel;
            let mut res = channel.ready().await?.call(req).await?;
            res.extensions_mut().insert(peer);
            Ok(res)
        })
    }
}

async fn servers() -> (EchoServer, EchoServer) {
    (
        EchoServer::start("a").await.unwrap(),
        EchoServer::start("b").await.unwrap(),
    )
}

fn client(
    a: &EchoServer,
    b: &EchoServer,
) -> EchoClient<palisade_retry::Retry<TwoPeers, palisade_core::protocol::Grpc, palisade_retry::DefaultPredicate>> {
    EchoClient::new(RetryLayer::grpc().layer(TwoPeers::new(a, b)))
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unary_call_is_retried_on_the_other_peer_with_the_same_body() {
    let (a, b) = servers().await;
    a.faults().fail_next(1, Code::Unavailable);
    let mut client = client(&a, &b);
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let request = EchoRequest {
        message: "hello".into(),
        payload: payload.clone().into(),
    };
    // Spawned: the retry future and the replayed body are Send.
    let call = tokio::spawn(async move { client.unary(request).await });
    let reply = tokio::time::timeout(LIMIT, call).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let reply = reply.into_inner();
    assert_eq!(reply.server, "b");
    assert_eq!(&reply.payload[..], &payload[..]);
    assert_eq!(a.stats().requests(), 1);
    assert_eq!(b.stats().requests(), 1);
    assert_eq!(
        b.stats().last_payload().as_deref(),
        Some(&payload[..]),
        "the second server got the original body"
    );
}

#[tokio::test]
async fn a_unary_body_over_the_cap_is_not_retried() {
    let (a, b) = servers().await;
    a.faults().fail_next(1, Code::Unavailable);
    let mut client = client(&a, &b);
    let request = EchoRequest {
        message: "big".into(),
        payload: vec![7u8; 100 * 1024].into(),
    };
    let status = tokio::time::timeout(LIMIT, client.unary(request))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(a.stats().requests(), 1);
    assert_eq!(b.stats().requests(), 0, "a body over 64 KiB is sent once");
}

#[tokio::test]
async fn client_streaming_below_the_cap_is_retried() {
    let (a, b) = servers().await;
    a.faults().fail_next(1, Code::Unavailable);
    let mut client = client(&a, &b);
    let messages = (0..3u8).map(|i| EchoRequest {
        message: format!("m{i}"),
        payload: vec![i; 10].into(),
    });
    let reply = tokio::time::timeout(LIMIT, client.client_stream(futures::stream::iter(messages)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "b");
    assert_eq!(reply.message, "m0m1m2");
    assert_eq!(reply.payload.len(), 30);
    assert_eq!(reply.count, 3);
}

#[tokio::test]
async fn a_server_stream_failing_after_its_first_message_is_not_retried() {
    let (a, b) = servers().await;
    a.faults().fail_stream_after(1, Code::Unavailable);
    let mut client = client(&a, &b);
    let request = StreamRequest {
        message: "s".into(),
        count: 3,
        payload: Default::default(),
        interval_ms: 0,
    };
    let mut stream = tokio::time::timeout(LIMIT, client.server_stream(request))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.server, "a");
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(a.stats().requests(), 1);
    assert_eq!(b.stats().requests(), 0, "committed once headers arrived");
}

#[tokio::test]
async fn a_per_call_option_disables_retries() {
    let (a, b) = servers().await;
    a.faults().fail_next(1, Code::Unavailable);
    let mut client = client(&a, &b);
    let mut request = tonic::Request::new(EchoRequest {
        message: "once".into(),
        payload: Default::default(),
    });
    request.call_options_mut().set_retries(0);
    let status = tokio::time::timeout(LIMIT, client.unary(request))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(b.stats().requests(), 0);
}

/// Peer `a` is stopped: its attempt fails with a refused connection (an
/// error, no response naming the peer). The balancer's entry in the attempt
/// record (a handle shared by every attempt's copy of the request) is enough
/// for the retry to go to `b`.
#[tokio::test]
async fn a_refused_peer_recorded_by_the_balancer_is_avoided_on_the_retry() {
    let (a, b) = servers().await;
    a.refuse_connections().await;
    let mut client = client(&a, &b);
    let request = EchoRequest {
        message: "refused".into(),
        payload: vec![3u8; 64].into(),
    };
    let reply = tokio::time::timeout(LIMIT, client.unary(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let reply = reply.into_inner();
    assert_eq!(reply.server, "b");
    assert_eq!(a.stats().requests(), 0);
    assert_eq!(b.stats().requests(), 1);
    assert_eq!(b.stats().last_payload().as_deref(), Some(&[3u8; 64][..]));
}
