//! The accept loop and connection tasks shared by both servers.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::stats::Stats;

/// Serves one accepted connection until it ends.
pub(crate) type ConnHandler =
    Arc<dyn Fn(TcpStream, ConnCtx, Spawner) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Per-connection context, put into every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    kill: Arc<Notify>,
}

impl ConnCtx {
    /// Drops the connection: its task stops serving it and closes the socket.
    pub(crate) fn close(&self) {
        self.kill.notify_one();
    }
}

/// Spawns the server's tasks (connections and hyper's HTTP/2 stream tasks)
/// into one [`JoinSet`], so they can all be aborted together.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spawner {
    inner: Arc<SpawnerInner>,
}

#[derive(Debug, Default)]
struct SpawnerInner {
    tasks: Mutex<JoinSet<()>>,
    closed: AtomicBool,
}

impl Spawner {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if self.inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut tasks = self.inner.tasks.lock();
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Aborts every task and waits until all of them are gone.
    async fn abort_all(&self) {
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock());
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.tasks.lock().abort_all();
    }
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}

/// A listening address with its accept loop and connection tasks.
pub(crate) struct ServerCore {
    addr: SocketAddr,
    handler: ConnHandler,
    stats: Arc<Stats>,
    spawner: Spawner,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCore")
            .field("addr", &self.addr)
            .field("accepting", &self.is_accepting())
            .finish_non_exhaustive()
    }
}

impl ServerCore {
    /// Binds `127.0.0.1:0` and starts accepting.
    pub(crate) fn start(handler: ConnHandler, stats: Arc<Stats>) -> io::Result<Self> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let core = Self {
            addr,
            handler,
            stats,
            spawner: Spawner::default(),
            accept: Mutex::new(None),
        };
        core.spawn_accept(listener);
        Ok(core)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accept.lock().is_some()
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.handler),
            self.spawner.clone(),
            Arc::clone(&self.stats),
        ));
        if let Some(old) = self.accept.lock().replace(task) {
            old.abort();
        }
    }

    pub(crate) async fn refuse_connections(&self) {
        let task = self.accept.lock().take();
        if let Some(task) = task {
            task.abort();
            // Once the task is gone, so is the listener.
            let _cancelled = task.await;
        }
    }

    pub(crate) fn resume_connections(&self) -> io::Result<()> {
        if self.is_accepting() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        self.spawn_accept(listener);
        Ok(())
    }

    pub(crate) async fn close_connections(&self) {
        self.spawner.abort_all().await;
    }

    pub(crate) async fn shutdown(&self) {
        self.refuse_connections().await;
        self.spawner.inner.closed.store(true, Ordering::SeqCst);
        self.spawner.abort_all().await;
    }
}

impl Drop for ServerCore {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().take() {
            task.abort();
        }
        self.spawner.close();
    }
}

/// Binds a listener with `SO_REUSEADDR`, so the same port can be bound again
/// after [`ServerCore::refuse_connections`] even while old connections linger.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, handler: ConnHandler, spawner: Spawner, stats: Arc<Stats>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Best effort: only latency suffers without it.
                let _ = stream.set_nodelay(true);
                stats.connection_accepted();
                let ctx = ConnCtx {
                    kill: Arc::new(Notify::new()),
                };
                let kill = Arc::clone(&ctx.kill);
                let serve = handler(stream, ctx, spawner.clone());
                spawner.spawn(async move {
                    tokio::select! {
                        () = serve => {}
                        () = kill.notified() => {}
                    }
                });
            }
            // Per-connection errors (e.g. reset before accept) or running out
            // of descriptors: back off briefly, keep accepting.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// A hyper-util "auto" connection builder (HTTP/1.1, or HTTP/2 with prior
/// knowledge) whose HTTP/2 stream tasks go into the server's task set.
pub(crate) fn conn_builder(spawner: Spawner) -> hyper_util::server::conn::auto::Builder<Spawner> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(spawner);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        // No header read timeout: a paused-time test must not see idle
        // keep-alive connections time out on their own.
        .header_read_timeout(None);
    builder
}
