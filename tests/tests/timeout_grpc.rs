//! `palisade-timeout` against real tonic servers over HTTP/2 on loopback:
//! a client timeout cancels the server's handler (unary and server
//! streaming), and a deadline flows through a chain of three services.
//!
//! These tests run in real time (a real server, a real socket): the limits
//! are a few hundred milliseconds and every wait is bounded.
#![allow(clippy::disallowed_types, missing_docs)]

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use palisade_core::error::{DeadlineExceeded, TimedOut, TimeoutKind};
use palisade_core::options::{CallOptionsExt, Deadline};
use palisade_core::protocol::Grpc;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::echo_server::{Echo, EchoServer as EchoService};
use palisade_testkit::echo::{EchoReply, EchoRequest, StreamRequest};
use palisade_timeout::{DeadlineServerLayer, Timeout, TimeoutLayer, current_deadline, grpc_timeout, with_deadline};
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};
use tonic::{Request, Response, Status};
use tower::Layer;

/// How long after a client's limit the server's work must have stopped.
/// Cancellation itself takes one loopback round trip (an RST_STREAM, well
/// under a millisecond on an idle machine); the rest is slack for a loaded
/// 2-core machine running other builds and tests at the same time, so the
/// bound stays robust while still failing if cancellation only happened
/// through some much later cleanup (connection close, keep-alive, test end).
const SLACK: Duration = Duration::from_secs(1);

/// The instant by which work started at `start` under `limit` must have stopped.
fn stop_by(start: Instant, limit: Duration) -> Instant {
    start + limit + SLACK
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Client = EchoClient<Timeout<Channel, Grpc>>;

fn client(channel: Channel, layer: &TimeoutLayer<Grpc>) -> Client {
    EchoClient::new(layer.layer(channel))
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: Default::default(),
    }
}

/// The Palisade error behind a tonic status (tonic keeps it as the source).
fn source<E: std::error::Error + 'static>(status: &Status) -> &E {
    status
        .source()
        .and_then(|e| e.downcast_ref::<E>())
        .unwrap_or_else(|| panic!("unexpected status {status:?}"))
}

#[tokio::test]
async fn unary_timeout_cancels_the_handler() {
    let server = EchoServer::start("slow").await.unwrap();
    server.faults().set_hang(true);
    let layer = TimeoutLayer::builder().grpc().timeout(Some(ms(200))).build().unwrap();
    let mut client = client(server.channel(), &layer);

    let start = Instant::now();
    let status = client.unary(echo("hi")).await.unwrap_err();
    let timed_out: &TimedOut = source(&status);
    assert_eq!((timed_out.kind(), timed_out.limit()), (TimeoutKind::Attempt, ms(200)));
    let sent = server.stats().last_grpc_timeout().expect("grpc-timeout sent");
    assert!(sent <= ms(200) && sent > ms(100), "grpc-timeout {sent:?}");

    timeout_at(stop_by(start, ms(200)), server.stats().wait_for_cancelled(1))
        .await
        .expect("the server's handler is cancelled within SLACK of the client's timeout");
    assert_eq!(server.stats().finished(), 0);
}

#[tokio::test]
async fn server_streaming_timeout_before_headers_cancels_the_handler() {
    let server = EchoServer::start("slow").await.unwrap();
    server.faults().set_hang(true);
    let layer = TimeoutLayer::builder().grpc().timeout(Some(ms(200))).build().unwrap();
    let mut client = client(server.channel(), &layer);
    let request = StreamRequest {
        message: "s".into(),
        count: 10,
        payload: Default::default(),
        interval_ms: 0,
    };
    let start = Instant::now();
    let status = client.server_stream(request).await.unwrap_err();
    assert_eq!(source::<TimedOut>(&status).limit(), ms(200));
    timeout_at(stop_by(start, ms(200)), server.stats().wait_for_cancelled(1))
        .await
        .expect("the server's handler is cancelled within SLACK of the client's timeout");
    assert_eq!(server.stats().streams_completed(), 0);
}

#[tokio::test]
async fn server_streaming_body_timeout_cancels_the_stream() {
    let server = EchoServer::start("stream").await.unwrap();
    let layer = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_secs(5)))
        .body_timeout(ms(300))
        .build()
        .unwrap();
    // A body-limited layer (`TimeoutLayer<Grpc, BodyLimited>`) wraps the body.
    let mut client = EchoClient::new(layer.layer(server.channel()));
    // 1000 replies 20 ms apart: 20 s if nobody stops it.
    let request = StreamRequest {
        message: "s".into(),
        count: 1000,
        payload: Default::default(),
        interval_ms: 20,
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    // The body limit counts from the response headers, which just arrived.
    let start = Instant::now();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended normally after {received} replies"),
            Err(status) => break status,
        }
    };
    assert!(received > 0, "replies flowed before the body limit");
    assert!(received < 1000);
    let timed_out: &TimedOut = source(&status);
    assert_eq!((timed_out.kind(), timed_out.limit()), (TimeoutKind::Body, ms(300)));
    drop(stream);
    timeout_at(stop_by(start, ms(300)), server.stats().wait_for_cancelled(1))
        .await
        .expect("the server's stream is cancelled after the body timeout");
    assert_eq!(server.stats().streams_completed(), 0);
}

/// Service B of the chain: relays unary calls to C through a client wrapped in
/// `TimeoutLayer<Grpc>`.
///
/// With `detach` off the call to C runs in the handler with no deadline code
/// at all: it inherits the deadline that `DeadlineServerLayer` made current.
///
/// With `detach` on, the call runs in a task of its own, handed the
/// handler's deadline with `current_deadline` / `with_deadline` (as the crate
/// docs say to do for spawned work). Neither tonic's server (which enforces
/// the incoming `grpc-timeout` itself by dropping the handler) nor A's stream
/// reset can end that task: only B's `TimeoutLayer` can, so the recorded
/// outcome proves that our layer in B fired, not tonic.
#[derive(Clone)]
struct Relay {
    next: Client,
    probe: Arc<RelayProbe>,
    detach: bool,
}

#[derive(Default)]
struct RelayProbe {
    started: AtomicU64,
    /// Handlers that ended, cancelled (dropped) or returned.
    stopped: AtomicU64,
    /// Calls to C that got a reply.
    replied: AtomicU64,
    /// Detached calls to C that ended, and how.
    calls_ended: AtomicU64,
    outcome: parking_lot::Mutex<Option<Result<(), Status>>>,
    grpc_timeout: parking_lot::Mutex<Option<Duration>>,
    deadline_in_extensions: parking_lot::Mutex<Option<Deadline>>,
    changed: Notify,
}

impl RelayProbe {
    async fn wait(&self, counter: impl Fn(&RelayProbe) -> &AtomicU64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if counter(self).load(Ordering::SeqCst) > 0 {
                return;
            }
            notified.await;
        }
    }

    fn bump(&self, counter: impl Fn(&RelayProbe) -> &AtomicU64) {
        counter(self).fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Counts the handler as stopped when it returns or is dropped.
struct StopGuard(Arc<RelayProbe>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.bump(|p| &p.stopped);
    }
}

#[tonic::async_trait]
impl Echo for Relay {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        *self.probe.grpc_timeout.lock() = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout::parse(v.as_bytes()));
        *self.probe.deadline_in_extensions.lock() = request.extensions().get::<Deadline>().copied();
        let _guard = StopGuard(self.probe.clone());
        let mut next = self.next.clone();
        let result = if self.detach {
            let deadline = current_deadline().expect("B's handler runs with A's deadline current");
            let probe = self.probe.clone();
            let task = tokio::spawn(async move {
                let result = with_deadline(deadline, next.unary(request.into_inner())).await;
                let (reply, outcome) = match result {
                    Ok(reply) => (Ok(reply), Ok(())),
                    Err(status) => (
                        Err(Status::new(status.code(), status.message().to_owned())),
                        Err(status),
                    ),
                };
                *probe.outcome.lock() = Some(outcome);
                probe.bump(|p| &p.calls_ended);
                reply
            });
            task.await.map_err(|e| Status::internal(e.to_string()))?
        } else {
            next.unary(request.into_inner()).await
        };
        if result.is_ok() {
            self.probe.replied.fetch_add(1, Ordering::SeqCst);
        }
        result.map_err(|status| Status::new(status.code(), status.message().to_owned()))
    }

    type ServerStreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

    async fn server_stream(&self, _: Request<StreamRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        Err(Status::unimplemented("relay: unary only"))
    }

    async fn client_stream(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("relay: unary only"))
    }
}

#[tokio::test]
async fn a_deadline_flows_from_a_through_b_to_c_and_stops_both() {
    // C: slow (hangs until cancelled).
    let c = EchoServer::start("c").await.unwrap();
    c.faults().set_hang(true);

    // B: a tonic server with the deadline layer, calling C through TimeoutLayer<Grpc>.
    let probe = Arc::new(RelayProbe::default());
    let to_c = TimeoutLayer::builder().grpc().build().unwrap();
    let relay = Relay {
        next: client(c.channel(), &to_c),
        probe: probe.clone(),
        detach: true,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    let b = tokio::spawn(
        Server::builder()
            .layer(DeadlineServerLayer::new())
            .add_service(EchoService::new(relay))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    // A: the client, with a 300 ms deadline on the call and the default 30 s timeout.
    let to_b = TimeoutLayer::builder().grpc().build().unwrap();
    let channel = Endpoint::from_shared(format!("http://{b_addr}"))
        .unwrap()
        .connect_lazy();
    let mut a = client(channel, &to_b);
    let mut request = Request::new(echo("chain"));
    let start = Instant::now();
    request.call_options_mut().set_deadline(Deadline::after(ms(300)));
    let status = a.unary(request).await.unwrap_err();
    let exceeded: &DeadlineExceeded = source(&status);
    assert!(exceeded.was_sent());
    assert!(exceeded.budget().unwrap() <= ms(300));

    // The deadline reached B and, reduced by B's time, C.
    let at_b = probe.grpc_timeout.lock().expect("B received grpc-timeout");
    assert!(at_b <= ms(300) && at_b > ms(200), "B got {at_b:?}");
    assert!(
        probe.deadline_in_extensions.lock().is_some(),
        "B's request carries the deadline"
    );

    // B's call to C was ended by B's own TimeoutLayer: palisade's typed
    // DeadlineExceeded (tonic keeps it as the status' source), not a status
    // from tonic's server or channel.
    timeout_at(stop_by(start, ms(300)), probe.wait(|p| &p.calls_ended))
        .await
        .expect("B's call to C ends at the deadline");
    let outcome = probe.outcome.lock().take().expect("recorded");
    let status = outcome.expect_err("C never replies");
    let in_b: &DeadlineExceeded = source(&status);
    assert!(in_b.was_sent());
    assert!(in_b.budget().unwrap() <= at_b, "B gave C {:?}", in_b.budget());
    let at_c = c.stats().last_grpc_timeout().expect("C received grpc-timeout");
    assert!(at_c <= at_b, "C got {at_c:?}, more than B's {at_b:?}");
    assert!(at_c > ms(100), "C got {at_c:?}");

    // B and C stop work: B's handler ends, and C's handler is cancelled.
    timeout_at(stop_by(start, ms(300)), probe.wait(|p| &p.stopped))
        .await
        .expect("B's handler stops");
    assert_eq!(probe.replied.load(Ordering::SeqCst), 0);
    timeout_at(stop_by(start, ms(300)), c.stats().wait_for_cancelled(1))
        .await
        .expect("C's handler is cancelled");
    assert_eq!(probe.started.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().finished(), 0);
    b.abort();
}

#[tokio::test]
async fn a_chain_with_time_to_spare_succeeds_and_forwards_the_budget() {
    let c = EchoServer::start("c").await.unwrap();
    let probe = Arc::new(RelayProbe::default());
    let relay = Relay {
        next: client(c.channel(), &TimeoutLayer::builder().grpc().build().unwrap()),
        probe: probe.clone(),
        detach: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = listener.local_addr().unwrap();
    let b = tokio::spawn(
        Server::builder()
            .layer(DeadlineServerLayer::new())
            .add_service(EchoService::new(relay))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{b_addr}"))
        .unwrap()
        .connect_lazy();
    let mut a = client(channel, &TimeoutLayer::builder().grpc().build().unwrap());
    let mut request = Request::new(echo("chain"));
    request
        .call_options_mut()
        .set_deadline(Deadline::after(Duration::from_secs(20)));
    let reply = a.unary(request).await.unwrap().into_inner();
    assert_eq!((reply.message.as_str(), reply.server.as_str()), ("chain", "c"));
    let at_c = c.stats().last_grpc_timeout().unwrap();
    assert!(
        at_c <= Duration::from_secs(20) && at_c > Duration::from_secs(15),
        "C got {at_c:?}"
    );

    // Without a deadline from A, B's client uses its own 30 s timeout.
    let reply = a.unary(echo("plain")).await.unwrap().into_inner();
    assert_eq!(reply.message, "plain");
    let at_c = c.stats().last_grpc_timeout().unwrap();
    assert!(
        at_c > Duration::from_secs(29) && at_c <= Duration::from_secs(30),
        "C got {at_c:?}"
    );
    b.abort();
}
