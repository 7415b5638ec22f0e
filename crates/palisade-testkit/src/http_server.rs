//! The hyper HTTP/1.1 + HTTP/2 server.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::SERVER_HEADER;
use crate::faults::Faults;
use crate::net::{ConnCtx, ConnHandler, ServerCore, conn_builder};
use crate::stats::{RequestGuard, Stats};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = BoxBody<Bytes, BoxError>;

/// A real hyper server on `127.0.0.1` with an ephemeral port, speaking
/// HTTP/1.1 and HTTP/2 (prior knowledge, "h2c"); each connection's protocol is
/// detected from its first bytes.
///
/// It answers every method and path:
///
/// - `/stream?n=N&delay_ms=D`: status 200 and a body streamed in `N` chunks
///   (default 3), `"{name}:{i}\n"` for `i` in `0..N`, waiting `D` ms (default
///   0) before each chunk after the first.
/// - any other path: status 200 and the request body echoed back exactly; an
///   empty request body gets the server's name as the body.
///
/// Every response (also a fault status) has the header `x-testkit-server:
/// {name}`. Dropping the handle stops the server: the listener closes and
/// every connection and handler is aborted.
#[derive(Debug)]
pub struct HttpServer {
    shared: Arc<Shared>,
    core: ServerCore,
}

#[derive(Debug)]
struct Shared {
    name: String,
    stats: Arc<Stats>,
    faults: Faults<StatusCode>,
}

impl HttpServer {
    /// Starts a server named `name` on `127.0.0.1:0`.
    pub async fn start(name: impl Into<String>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            name: name.into(),
            stats: Arc::new(Stats::default()),
            faults: Faults::default(),
        });
        let for_handler = Arc::clone(&shared);
        let handler: ConnHandler = Arc::new(move |stream, ctx, spawner| {
            let shared = Arc::clone(&for_handler);
            Box::pin(async move {
                let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), ctx.clone(), req));
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

    /// The server's name, reported in the `x-testkit-server` header.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the server listens on (the same across
    /// [`HttpServer::refuse_connections`] and
    /// [`HttpServer::resume_connections`]).
    pub fn addr(&self) -> SocketAddr {
        self.core.addr()
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The URI of `path_and_query` (e.g. `"/stream?n=5"`) on this server.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::uri::InvalidUri> {
        format!("{}{path_and_query}", self.url()).parse()
    }

    /// The server's faults, switchable at run time.
    pub fn faults(&self) -> &Faults<StatusCode> {
        &self.shared.faults
    }

    /// The server's counters and records of the last request.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Whether the server accepts connections (see
    /// [`HttpServer::refuse_connections`]).
    pub fn is_accepting(&self) -> bool {
        self.core.is_accepting()
    }

    /// Stops accepting: closes the listening socket, so new connects are
    /// refused (`ECONNREFUSED`). Connections already open keep working; add
    /// [`HttpServer::close_connections`] to drop them too.
    pub async fn refuse_connections(&self) {
        self.core.refuse_connections().await;
    }

    /// Listens again on the same address after
    /// [`HttpServer::refuse_connections`]; does nothing if already listening.
    pub fn resume_connections(&self) -> io::Result<()> {
        self.core.resume_connections()
    }

    /// Drops every open connection (and aborts the handlers running on them);
    /// returns once all are gone. The server keeps accepting new connections.
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

impl Faults<StatusCode> {
    /// Makes every `/stream` response fail after `n` chunks: a stream of more
    /// than `n` chunks sends `n` and then aborts its body. The client sees a
    /// body error: over HTTP/1.1 the connection closes before the final chunk,
    /// over HTTP/2 the stream is reset. A stream of at most `n` chunks
    /// completes normally.
    pub fn fail_stream_after(&self, n: u32) {
        self.set_stream_failure(n, None);
    }
}

/// A hyper client for plain `http://` URIs.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client speaking HTTP/1.1.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client speaking HTTP/2 with prior knowledge (h2c), multiplexing requests
/// over one connection per server.
pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    shared: Arc<Shared>,
    conn: ConnCtx,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond(&shared, StatusCode::BAD_REQUEST, full("bad body")));
        }
    };
    let guard = shared
        .stats
        .begin(Some(parts.uri.path().to_owned()), parts.headers, Some(body.clone()));
    let plan = match shared.faults.apply(Some(&conn)).await {
        Ok(plan) => plan,
        Err(status) => {
            guard.finish();
            let text = format!("palisade-testkit fault: {status}");
            return Ok(respond(&shared, status, full(text)));
        }
    };
    if parts.uri.path() == "/stream" {
        let (n, delay) = stream_params(parts.uri.query());
        let body = chunks(&shared.name, guard, n, delay, plan.stream_fail.map(|(a, _)| a));
        return Ok(respond(&shared, StatusCode::OK, body));
    }
    guard.finish();
    let body = if body.is_empty() {
        Bytes::from(shared.name.clone())
    } else {
        body
    };
    Ok(respond(&shared, StatusCode::OK, full(body)))
}

fn respond(shared: &Shared, status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&shared.name) {
        headers.insert(SERVER_HEADER, value);
    }
    response
}

/// Parses `n` (default 3) and `delay_ms` (default 0) from a query string.
fn stream_params(query: Option<&str>) -> (u32, Duration) {
    let mut n = 3;
    let mut delay = Duration::ZERO;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("n", value)) => n = value.parse().unwrap_or(n),
            Some(("delay_ms", value)) => {
                delay = value.parse().map(Duration::from_millis).unwrap_or(delay);
            }
            _ => {}
        }
    }
    (n, delay)
}

struct ChunkState {
    name: String,
    guard: RequestGuard,
    next: u32,
    count: u32,
    delay: Duration,
    fail_after: Option<u32>,
}

fn chunks(name: &str, guard: RequestGuard, count: u32, delay: Duration, fail_after: Option<u32>) -> ResponseBody {
    let state = ChunkState {
        name: name.to_owned(),
        guard,
        next: 0,
        count,
        delay,
        fail_after,
    };
    let stream = futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        if let Some(after) = state.fail_after
            && state.next >= after
            && state.next < state.count
        {
            // Let hyper flush the chunks sent so far before the error
            // aborts the connection (HTTP/1) or the stream (HTTP/2).
            tokio::task::yield_now().await;
            state.guard.finish_stream(false);
            let error: BoxError = Box::new(io::Error::other("palisade-testkit stream fault"));
            return Some((Err(error), None));
        }
        if state.next >= state.count {
            state.guard.finish_stream(true);
            return None;
        }
        if state.next > 0 && !state.delay.is_zero() {
            tokio::time::sleep(state.delay).await;
        }
        let chunk = Bytes::from(format!("{}:{}\n", state.name, state.next));
        state.next += 1;
        Some((Ok(Frame::data(chunk)), Some(state)))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_params() {
        assert_eq!(stream_params(None), (3, Duration::ZERO));
        assert_eq!(stream_params(Some("n=5&delay_ms=20")), (5, Duration::from_millis(20)));
        assert_eq!(stream_params(Some("n=x&other=1")), (3, Duration::ZERO));
    }
}
