//! The tonic echo server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::SERVER_HEADER;
use crate::echo::echo_client::EchoClient;
use crate::echo::echo_server::{Echo, EchoServer as EchoService};
use crate::echo::{EchoReply, EchoRequest, StreamRequest};
use crate::faults::Faults;
use crate::net::{ConnCtx, ConnHandler, ServerCore, conn_builder};
use crate::stats::Stats;

/// A real tonic gRPC server of the [`echo`](crate::echo) service on
/// `127.0.0.1` with an ephemeral port.
///
/// - `Unary` echoes `message` and `payload`.
/// - `ServerStream` sends `count` replies (with `sequence` 0, 1, …), waiting
///   `interval_ms` between them.
/// - `ClientStream` concatenates the messages and payloads of all requests,
///   and reports how many there were in `count`.
///
/// Every reply carries the server's name in `server`; every answer (also an
/// error status) carries it in the `x-testkit-server` metadata.
///
/// The server records the `grpc-timeout` header ([`Stats::last_grpc_timeout`])
/// but does not enforce it: deadlines are the client's business here.
///
/// The server speaks HTTP/2 (prior knowledge) as gRPC requires. Dropping the
/// handle stops it: the listener closes and every connection and handler is
/// aborted.
///
/// A server started with [`EchoServer::start_with_capacity`] runs at most a
/// given number of handlers at once *per connection* (as tonic's
/// `Server::concurrency_limit_per_connection` does): further requests on that
/// connection wait, in arrival order, for a handler to finish, and are counted
/// in [`Stats`] only when their handler starts. Combined with a latency
/// ([`Faults::set_latency`]) this gives the server a capacity.
#[derive(Debug)]
pub struct EchoServer {
    shared: Arc<Shared>,
    core: ServerCore,
}

#[derive(Debug)]
struct Shared {
    name: String,
    stats: Arc<Stats>,
    faults: Faults<Code>,
}

impl EchoServer {
    /// Starts a server named `name` on `127.0.0.1:0`.
    pub async fn start(name: impl Into<String>) -> io::Result<Self> {
        Self::start_inner(name.into(), None)
    }

    /// Starts a server named `name` on `127.0.0.1:0` that runs at most
    /// `per_connection` handlers at once on each connection (at least 1); the
    /// other requests of that connection wait for a handler to finish, in
    /// arrival order.
    pub async fn start_with_capacity(name: impl Into<String>, per_connection: usize) -> io::Result<Self> {
        Self::start_inner(name.into(), Some(per_connection.max(1)))
    }

    fn start_inner(name: String, per_connection: Option<usize>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            name,
            stats: Arc::new(Stats::default()),
            faults: Faults::default(),
        });
        let service = EchoService::new(Handler {
            shared: Arc::clone(&shared),
        });
        let handler: ConnHandler = Arc::new(move |stream, ctx, spawner| {
            let service = TowerToHyperService::new(service.clone());
            let limit = per_connection.map(|n| ConnectionLimit(Arc::new(Semaphore::new(n))));
            Box::pin(async move {
                let service = hyper::service::service_fn(move |mut req| {
                    let path = RequestPath(req.uri().path().to_owned());
                    req.extensions_mut().insert(ctx.clone());
                    req.extensions_mut().insert(path);
                    if let Some(limit) = &limit {
                        req.extensions_mut().insert(limit.clone());
                    }
                    hyper::service::Service::call(&service, req)
                });
                let builder = conn_builder(spawner);
                // A connection error only ends this connection.
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            })
        });
        let core = ServerCore::start(handler, Arc::clone(&shared.stats))?;
        Ok(Self { shared, core })
    }

    /// Starts `n` servers named `{prefix}-0`, `{prefix}-1`, … (for multi-peer
    /// tests).
    pub async fn start_many(prefix: &str, n: usize) -> io::Result<Vec<Self>> {
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            servers.push(Self::start(format!("{prefix}-{i}")).await?);
        }
        Ok(servers)
    }

    /// The server's name, reported in every answer.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the server listens on (the same across
    /// [`EchoServer::refuse_connections`] and
    /// [`EchoServer::resume_connections`]).
    pub fn addr(&self) -> SocketAddr {
        self.core.addr()
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A tonic endpoint for this server, to configure before connecting.
    pub fn endpoint(&self) -> Endpoint {
        #[expect(
            clippy::expect_used,
            reason = "`http://` and an IP socket address always form a valid URI"
        )]
        Endpoint::from_shared(self.url()).expect("valid URI")
    }

    /// A channel that connects on first use (and reconnects after a
    /// connection is lost); call errors report connection failures.
    pub fn channel(&self) -> Channel {
        self.endpoint().connect_lazy()
    }

    /// An echo client over [`EchoServer::channel`].
    pub fn client(&self) -> EchoClient<Channel> {
        EchoClient::new(self.channel())
    }

    /// An echo client over a channel connected now.
    pub async fn connect(&self) -> Result<EchoClient<Channel>, tonic::transport::Error> {
        Ok(EchoClient::new(self.endpoint().connect().await?))
    }

    /// The server's faults, switchable at run time.
    pub fn faults(&self) -> &Faults<Code> {
        &self.shared.faults
    }

    /// The server's counters and records of the last request.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Whether the server accepts connections (see
    /// [`EchoServer::refuse_connections`]).
    pub fn is_accepting(&self) -> bool {
        self.core.is_accepting()
    }

    /// Stops accepting: closes the listening socket, so new connects are
    /// refused (`ECONNREFUSED`). Connections already open keep working; add
    /// [`EchoServer::close_connections`] to drop them too.
    pub async fn refuse_connections(&self) {
        self.core.refuse_connections().await;
    }

    /// Listens again on the same address after
    /// [`EchoServer::refuse_connections`]; does nothing if already listening.
    pub fn resume_connections(&self) -> io::Result<()> {
        self.core.resume_connections()
    }

    /// Drops every open connection (and aborts the handlers running on them);
    /// returns once all are gone. Clients see their connection reset or
    /// closed; the server keeps accepting new connections.
    pub async fn close_connections(&self) {
        self.core.close_connections().await;
    }

    /// Stops the server and waits until the listener, every connection and
    /// every handler are gone. Dropping the handle does the same without
    /// waiting.
    pub async fn shutdown(self) {
        self.core.shutdown().await;
    }
}

impl Faults<Code> {
    /// Makes every server stream fail after `n` messages: a stream asked for
    /// more than `n` replies sends `n` and then ends with `code` (in the
    /// trailers, as gRPC does). A stream asked for at most `n` replies
    /// completes normally.
    pub fn fail_stream_after(&self, n: u32, code: Code) {
        self.set_stream_failure(n, Some(code));
    }
}

#[derive(Debug, Clone)]
struct Handler {
    shared: Arc<Shared>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

impl Handler {
    fn status(&self, code: Code, message: &str) -> Status {
        Status::with_metadata(code, message, self.metadata())
    }

    fn metadata(&self) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = MetadataValue::try_from(self.shared.name.as_str()) {
            metadata.insert(SERVER_HEADER, value);
        }
        metadata
    }

    fn response<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        *response.metadata_mut() = self.metadata();
        response
    }

    fn reply(&self, message: String, payload: Bytes, sequence: u32, count: u32) -> EchoReply {
        EchoReply {
            message,
            payload,
            server: self.shared.name.clone(),
            sequence,
            count,
        }
    }
}

/// The HTTP path of a gRPC request (`/package.Service/Method`).
#[derive(Debug, Clone)]
struct RequestPath(String);

/// The handler slots of one connection of a server with a capacity.
#[derive(Debug, Clone)]
struct ConnectionLimit(Arc<Semaphore>);

/// Waits for a handler slot of the request's connection, if its server has a
/// capacity; the slot is held until the returned permit is dropped.
async fn admit<T>(req: &Request<T>) -> Option<OwnedSemaphorePermit> {
    let limit = req.extensions().get::<ConnectionLimit>()?;
    // The semaphore is never closed, so acquiring fails only in theory.
    Arc::clone(&limit.0).acquire_owned().await.ok()
}

/// What a handler records about its request before anything else.
fn request_info<T>(req: &Request<T>) -> (Option<ConnCtx>, Option<String>, http::HeaderMap) {
    let conn = req.extensions().get::<ConnCtx>().cloned();
    let path = req.extensions().get::<RequestPath>().map(|p| p.0.clone());
    let headers = req.metadata().clone().into_headers();
    (conn, path, headers)
}

#[tonic::async_trait]
impl Echo for Handler {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let _slot = admit(&req).await;
        let (conn, path, headers) = request_info(&req);
        let msg = req.into_inner();
        let guard = self.shared.stats.begin(path, headers, Some(msg.payload.clone()));
        let result = self.shared.faults.apply(conn.as_ref()).await;
        guard.finish();
        match result {
            Err(code) => Err(self.status(code, "palisade-testkit fault")),
            Ok(_) => Ok(self.response(self.reply(msg.message, msg.payload, 0, 1))),
        }
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, req: Request<StreamRequest>) -> Result<Response<Self::ServerStreamStream>, Status> {
        let slot = admit(&req).await;
        let (conn, path, headers) = request_info(&req);
        let msg = req.into_inner();
        let guard = self.shared.stats.begin(path, headers, Some(msg.payload.clone()));
        let plan = match self.shared.faults.apply(conn.as_ref()).await {
            Ok(plan) => plan,
            Err(code) => {
                guard.finish();
                return Err(self.status(code, "palisade-testkit fault"));
            }
        };
        let state = StreamState {
            handler: self.clone(),
            guard,
            _slot: slot,
            next: 0,
            count: msg.count,
            interval: Duration::from_millis(u64::from(msg.interval_ms)),
            fail: plan
                .stream_fail
                .map(|(after, code)| (after, code.unwrap_or(Code::Unavailable))),
            message: msg.message,
            payload: msg.payload,
        };
        let stream = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            if let Some((after, code)) = state.fail
                && state.next >= after
                && state.next < state.count
            {
                state.guard.finish_stream(false);
                let status = state.handler.status(code, "palisade-testkit stream fault");
                return Some((Err(status), None));
            }
            if state.next >= state.count {
                state.guard.finish_stream(true);
                return None;
            }
            if state.next > 0 && !state.interval.is_zero() {
                tokio::time::sleep(state.interval).await;
            }
            let reply = state
                .handler
                .reply(state.message.clone(), state.payload.clone(), state.next, state.count);
            state.next += 1;
            Some((Ok(reply), Some(state)))
        });
        Ok(self.response(Box::pin(stream) as ReplyStream))
    }

    async fn client_stream(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        let _slot = admit(&req).await;
        let (conn, path, headers) = request_info(&req);
        let mut stream = req.into_inner();
        let guard = self.shared.stats.begin(path, headers, None);
        if let Err(code) = self.shared.faults.apply(conn.as_ref()).await {
            guard.finish();
            return Err(self.status(code, "palisade-testkit fault"));
        }
        let mut message = String::new();
        let mut payload = BytesMut::new();
        let mut count = 0u32;
        // An error here means the client went away: the guard then counts the
        // call as cancelled.
        while let Some(msg) = stream.message().await? {
            message.push_str(&msg.message);
            payload.extend_from_slice(&msg.payload);
            count += 1;
        }
        let payload = payload.freeze();
        self.shared.stats.record_payload(payload.clone());
        guard.finish();
        Ok(self.response(self.reply(message, payload, 0, count)))
    }
}

struct StreamState {
    handler: Handler,
    guard: crate::stats::RequestGuard,
    /// The connection's handler slot, held until the stream ends.
    _slot: Option<OwnedSemaphorePermit>,
    next: u32,
    count: u32,
    interval: Duration,
    fail: Option<(u32, Code)>,
    message: String,
    payload: Bytes,
}
