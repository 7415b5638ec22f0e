//! The facade's named stacks (`palisade::stack`) over a real tonic server on
//! loopback: a stack held in a struct field by its alias, cloned into
//! `tokio::spawn`ed tasks and called through the tonic generated client, with
//! no boxing. Issue 15: a boxed stack tripped tonic's bounds inside
//! `tokio::spawn`; the aliases are the layers' own types, so they keep
//! `Send + Sync + Clone` and tonic's `GrpcService` bounds hold.

use std::future::{Ready, ready};
use std::time::Duration;

use bytes::Bytes;
use palisade::BoxError;
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, CircuitState};
use palisade::core::backoff::Backoff;
use palisade::core::error::CircuitOpen;
use palisade::fallback::source::Source;
use palisade::fallback::{FallbackLayer, FallbackReason, FromFallback};
use palisade::retry::RetryLayer;
use palisade::stack::{GrpcFallbackStack, GrpcStack, with_fallback};
use palisade::timeout::{TimeoutKind, TimeoutLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceBuilder;

const TASKS: usize = 8;
const CALLS_PER_TASK: usize = 5;

/// What a task's client needs of the stack, checked where the compiler sees it.
fn assert_spawnable<T: Send + Sync + Clone + 'static>(_: &T) {}

/// A client holding the README's a-la-carte stack by its name.
#[derive(Clone)]
struct Echo {
    stack: GrpcStack,
    breaker: CircuitBreakerHandle,
}

impl Echo {
    fn new(channel: Channel) -> Result<Self, BoxError> {
        let breaker = CircuitBreakerLayer::builder().grpc().failure_threshold(3).build()?;
        let handle = breaker.handle();
        let stack = ServiceBuilder::new()
            .layer(
                TimeoutLayer::builder()
                    .grpc()
                    .kind(TimeoutKind::Total)
                    .timeout(Some(Duration::from_secs(10)))
                    .build()?,
            )
            .layer(
                RetryLayer::builder()
                    .grpc()
                    .tonic_body()
                    .retries(2)
                    .backoff(Backoff::constant(Duration::from_millis(1)).build()?)
                    .build()?,
            )
            .layer(
                BulkheadLayer::builder()
                    .grpc()
                    .max_concurrent(16)
                    .max_queue(64)
                    .build()?,
            )
            .layer(breaker)
            .layer(
                TimeoutLayer::builder()
                    .grpc()
                    .timeout(Some(Duration::from_secs(5)))
                    .build()?,
            )
            .service(channel);
        Ok(Self { stack, breaker: handle })
    }
}

fn hello(task: usize, call: usize) -> EchoRequest {
    EchoRequest {
        message: format!("{task}.{call}"),
        payload: Bytes::new(),
    }
}

/// Calls through a clone of `client` (and so of its stack) from `TASKS`
/// spawned tasks and returns every reply's `(message, server)`.
async fn spawn_calls<C: EchoCalls + Clone>(client: &C) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            for call in 0..CALLS_PER_TASK {
                replies.push(client.call(hello(task, call)).await);
            }
            replies
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.expect("the task ran to its end"));
    }
    replies
}

/// One unary call that must succeed: the reply's `(message, server)`, the
/// server suffixed with the reason of a fallback answer.
trait EchoCalls: Send + 'static {
    fn call(&mut self, request: EchoRequest) -> impl Future<Output = (String, String)> + Send;
}

impl EchoCalls for EchoClient<GrpcStack> {
    async fn call(&mut self, request: EchoRequest) -> (String, String) {
        let reply = self.unary(request).await.expect("the stack answered").into_inner();
        (reply.message, reply.server)
    }
}

impl EchoCalls for EchoClient<Guarded> {
    async fn call(&mut self, request: EchoRequest) -> (String, String) {
        let response = self.unary(request).await.expect("the stack or its fallback answered");
        let reason = response.extensions().get::<FromFallback>().map(|f| f.reason);
        let reply = response.into_inner();
        let server = match reason {
            Some(FallbackReason::CircuitOpen) => format!("{} (circuit open)", reply.server),
            Some(other) => format!("{} ({other})", reply.server),
            None => reply.server,
        };
        (reply.message, server)
    }
}

#[tokio::test]
async fn a_named_stack_in_a_struct_serves_spawned_tonic_clients() {
    let server = EchoServer::start("named").await.unwrap();
    // Two failures on the way: the stack's retries absorb them.
    server.faults().fail_next(2, Code::Unavailable);
    let echo = Echo::new(server.channel()).unwrap();
    assert_spawnable(&echo.stack);

    let replies = spawn_calls(&EchoClient::new(echo.stack.clone())).await;

    assert_eq!(replies.len(), TASKS * CALLS_PER_TASK);
    for task in 0..TASKS {
        for call in 0..CALLS_PER_TASK {
            let message = format!("{task}.{call}");
            assert!(
                replies.iter().any(|(m, s)| *m == message && s == "named"),
                "no reply from the server to {message}: {replies:?}"
            );
        }
    }
    // Every call reached the server, plus the two retried attempts.
    assert_eq!(server.stats().requests(), (TASKS * CALLS_PER_TASK + 2) as u64);
    assert_eq!(echo.breaker.state(), CircuitState::Closed);
}

/// The fallback's source, a type of the test's own so that the stack's type
/// can be written.
#[derive(Clone, Copy, Debug)]
struct Stale;

impl Source<(), http::Response<Body>> for Stale {
    type Future = Ready<Result<http::Response<Body>, BoxError>>;

    fn fall_back(&self, error: &BoxError, (): ()) -> Self::Future {
        let message = if error.is::<CircuitOpen>() {
            "stale"
        } else {
            "unexpected"
        };
        ready(Ok(grpc_reply(message, "fallback")))
    }
}

/// The a-la-carte stack with a fallback on top, by its name.
type Guarded = GrpcFallbackStack<Stale>;

#[tokio::test]
async fn a_named_fallback_stack_answers_spawned_tonic_clients_while_the_breaker_is_open() {
    let server = EchoServer::start("guarded").await.unwrap();
    let echo = Echo::new(server.channel()).unwrap();
    let fallback = FallbackLayer::builder()
        .grpc()
        .on_error::<CircuitOpen>()
        .source(Stale)
        .build()
        .unwrap();
    let guarded: Guarded = with_fallback(&fallback, echo.stack.clone());
    assert_spawnable(&guarded);
    let client = EchoClient::new(guarded);

    // Closed: every call reaches the server, none is a fallback.
    let replies = spawn_calls(&client).await;
    assert_eq!(replies.len(), TASKS * CALLS_PER_TASK);
    assert!(replies.iter().all(|(_, s)| s == "guarded"), "{replies:?}");
    assert_eq!(server.stats().requests(), (TASKS * CALLS_PER_TASK) as u64);

    // Open: every call is answered by the fallback, the server sees none.
    echo.breaker.force_open();
    let replies = spawn_calls(&client).await;
    assert_eq!(replies.len(), TASKS * CALLS_PER_TASK);
    assert!(
        replies
            .iter()
            .all(|(m, s)| m == "stale" && s == "fallback (circuit open)"),
        "{replies:?}"
    );
    assert_eq!(
        server.stats().requests(),
        (TASKS * CALLS_PER_TASK) as u64,
        "the open breaker let a call reach the server"
    );
}

/// A unary gRPC `EchoReply { message, server }` with status OK, as the
/// fallback answers it: one length-prefixed message and an OK trailer.
fn grpc_reply(message: &str, server: &str) -> http::Response<Body> {
    palisade_fallback::grpc::grpc_reply(&palisade_testkit::echo::EchoReply {
        message: message.into(),
        server: server.into(),
        ..Default::default()
    })
}
