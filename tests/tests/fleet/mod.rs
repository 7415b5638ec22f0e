//! Support for the `fleet_*` tests: open-loop traffic against three real
//! tonic echo servers, through the stack a user builds (DESIGN.md section 3)
//! or through a bare `Channel::balance_list`, while a scripted fault runs.
//!
//! # Time
//!
//! The tests run with tokio's clock paused and *auto-advancing*: the clock
//! moves only when every task is idle, to the next timer. A ticker task
//! keeps a timer at most [`TICK`] away, so an idle moment moves the clock by
//! at most one tick and a loopback round trip costs a few ticks of simulated
//! time, whatever the machine's speed. Calls are scheduled every
//! [`CALL_EVERY`] of that clock (open loop: 200 calls per second, as in the
//! issue's measurements), so a run has a fixed number of calls, and a 10 s
//! cooldown costs no real time.
//!
//! # Determinism
//!
//! Each server fails its requests from its own seeded generator
//! (`Faults::set_failure_rate`); the balancer's random draws use the test
//! thread's `fastrand` generator, seeded at the start of a run; the retry
//! layer's jitter is seeded. What remains is the order in which loopback
//! I/O completes, which only moves the numbers within the margins the tests
//! assert.
#![allow(dead_code, unreachable_pub, clippy::disallowed_types)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::error::{BoxError, TimeoutKind};
use palisade_core::options::CallOptionsExt;
use palisade_core::protocol::Grpc;
use palisade_discovery::{
    HealthReport, InMemoryRegistry, Instance, PeerDiscoveryBuilder, PeerDiscoveryLayer, Registration, Registry,
    RegistryDiscover,
};
use palisade_retry::RetryLayer;
use palisade_testkit::EchoServer;
use palisade_testkit::echo::EchoRequest;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_timeout::TimeoutLayer;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The longest the clock moves while every task is idle.
pub const TICK: Duration = Duration::from_millis(1);
/// One call is scheduled every 5 ms: 200 calls per second.
pub const CALL_EVERY: Duration = Duration::from_millis(5);
/// The per-attempt timeout of the stack (the 250 ms).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// The total timeout of the stack (the 1 s).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Three echo servers registered in an in-memory registry (no TTL: no timer
/// of the registry's runs).
pub struct Fleet {
    pub servers: Vec<EchoServer>,
    _registrations: Vec<Registration>,
    pub registry: InMemoryRegistry,
    /// Attempts each server's client saw, by kind (see [`Tally`]).
    pub tallies: Vec<Arc<Tally>>,
}

impl Fleet {
    pub async fn start(n: usize) -> Fleet {
        let servers = EchoServer::start_many("peer", n).await.unwrap();
        let registry = InMemoryRegistry::without_ttl();
        let mut registrations = Vec::new();
        for server in &servers {
            registrations.push(registry.register(Instance::new("echo", server.addr())).await.unwrap());
        }
        let tallies = servers.iter().map(|_| Arc::new(Tally::default())).collect();
        Fleet {
            servers,
            _registrations: registrations,
            registry,
            tallies,
        }
    }

    /// Requests that reached any server's handler.
    pub fn requests(&self) -> u64 {
        self.servers.iter().map(|s| s.stats().requests()).sum()
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.addr().to_string() == addr)
    }
}

/// What one server's client saw, split by first attempts and retries: a
/// retry is an attempt whose call already used another peer (its attempt
/// record names more than this peer).
#[derive(Debug, Default)]
pub struct Tally {
    pub first_ok: AtomicU64,
    pub first_failed: AtomicU64,
    pub retry_ok: AtomicU64,
    pub retry_failed: AtomicU64,
}

impl Tally {
    fn count(&self, retry: bool, ok: bool) {
        let counter = match (retry, ok) {
            (false, true) => &self.first_ok,
            (false, false) => &self.first_failed,
            (true, true) => &self.retry_ok,
            (true, false) => &self.retry_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (first attempts, their failures, retries, their failures).
    pub fn get(&self) -> (u64, u64, u64, u64) {
        let first_ok = self.first_ok.load(Ordering::Relaxed);
        let first_failed = self.first_failed.load(Ordering::Relaxed);
        let retry_ok = self.retry_ok.load(Ordering::Relaxed);
        let retry_failed = self.retry_failed.load(Ordering::Relaxed);
        (
            first_ok + first_failed,
            first_failed,
            retry_ok + retry_failed,
            retry_failed,
        )
    }
}

/// Counts each attempt's outcome into a [`Tally`], just above the channel.
/// An attempt cut by the attempt timeout is counted by nobody here (its
/// future is dropped); the breaker counts it as a failure.
#[derive(Clone)]
struct Counted {
    inner: Channel,
    tally: Arc<Tally>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Counted {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let retry = request.extensions().attempt_record().is_some_and(|r| r.len() > 1);
        let tally = self.tally.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // The echo server's faults answer trailers-only: the status is
            // in the response head.
            let ok = result
                .as_ref()
                .is_ok_and(|r| r.headers().get("grpc-status").is_none_or(|s| s.as_bytes() == b"0"));
            tally.count(retry, ok);
            result
        })
    }
}

/// The user's client as the tests see it: a tonic client over a boxed stack.
pub type Client =
    EchoClient<BoxCloneService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, BoxError>>;

/// How the stack is configured: its per-peer breaker and its balancer.
#[derive(Clone)]
pub struct StackConfig {
    pub name: &'static str,
    pub breaker: CircuitBreakerConfig,
    pub balancer: fn(PeerDiscoveryBuilder<Grpc>) -> PeerDiscoveryBuilder<Grpc>,
}

impl fmt::Debug for StackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Total timeout -> Retry -> Bulkhead -> PeerDiscovery (in-memory registry)
/// -> per peer [CircuitBreaker -> attempt Timeout] -> Channel: the issue's
/// stack (1 s total, 1 retry, 250 ms per attempt), the retry layer's
/// default budget and backoff (jitter seeded).
pub fn ours(fleet: &Fleet, config: &StackConfig) -> (Client, Box<dyn Fn() -> HealthReport>) {
    let breaker = CircuitBreakerLayer::new(config.breaker.clone()).protocol(Grpc::default());
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(ATTEMPT_TIMEOUT))
        .build()
        .unwrap();
    let addrs: Vec<String> = fleet.servers.iter().map(|s| s.addr().to_string()).collect();
    let tallies = fleet.tallies.clone();
    let discover = RegistryDiscover::new(&fleet.registry, "echo", move |instance: &Instance| {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        let i = addrs.iter().position(|a| a == instance.addr()).unwrap_or(0);
        let counted = Counted {
            inner: channel,
            tally: tallies[i].clone(),
        };
        Ok::<_, BoxError>(breaker.for_peer(instance.id()).layer(attempt.layer(counted)))
    });
    let balancer = (config.balancer)(PeerDiscoveryLayer::builder().grpc().service_name("echo"))
        .build()
        .unwrap()
        .layer(discover);
    let health = balancer.clone();
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(TOTAL_TIMEOUT))
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .retries(1)
                .jitter_seed(19)
                .build()
                .unwrap(),
        )
        .layer(
            BulkheadLayer::new(
                BulkheadConfig::builder()
                    .max_concurrent(256)
                    .max_queue(256)
                    .build()
                    .unwrap(),
            )
            .protocol(Grpc::default()),
        )
        .service(balancer)
        .map_response(|response: http::Response<_>| response.map(tonic::body::Body::new));
    (
        EchoClient::new(BoxCloneService::new(stack)),
        Box::new(move || health.health()),
    )
}

/// A bare `Channel::balance_list` over the same servers (tower's p2c,
/// nothing else).
pub fn bare(fleet: &Fleet) -> Client {
    let channel = Channel::balance_list(fleet.servers.iter().map(EchoServer::endpoint));
    let stack = ServiceBuilder::new()
        .map_err(|error: tonic::transport::Error| -> BoxError { Box::new(error) })
        .service(channel);
    EchoClient::new(BoxCloneService::new(stack))
}

/// A fault, switched on at the start of the fault window and off at its end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Every server fails this share of its requests with UNAVAILABLE, each
    /// from its own generator seeded with the seed plus its index.
    Brownout(f64, u64),
    /// Server 0 answers UNAVAILABLE.
    OneUnavailable,
    /// Server 0 refuses connections (its open connections are closed too).
    OneRefusing,
    /// Server 0 answers after 2 s.
    OneSlow,
    /// Servers 0 and 1 answer UNAVAILABLE.
    TwoUnavailable,
    /// Every server answers UNAVAILABLE.
    AllUnavailable,
    /// Every server refuses connections.
    AllRefusing,
}

impl Fault {
    async fn start(self, fleet: &Fleet) {
        let servers = &fleet.servers;
        match self {
            Fault::Brownout(rate, seed) => {
                for (i, s) in servers.iter().enumerate() {
                    s.faults().set_failure_rate(rate, Code::Unavailable, seed + i as u64);
                }
            }
            Fault::OneUnavailable => servers[0].faults().set_status(Some(Code::Unavailable)),
            Fault::OneRefusing => refuse(&servers[0]).await,
            Fault::OneSlow => servers[0].faults().set_latency(Some(Duration::from_secs(2))),
            Fault::TwoUnavailable => {
                for s in &servers[..2] {
                    s.faults().set_status(Some(Code::Unavailable));
                }
            }
            Fault::AllUnavailable => {
                for s in servers {
                    s.faults().set_status(Some(Code::Unavailable));
                }
            }
            Fault::AllRefusing => {
                for s in servers {
                    refuse(s).await;
                }
            }
        }
    }

    fn end(self, fleet: &Fleet) {
        for s in &fleet.servers {
            s.faults().clear();
            s.resume_connections().unwrap();
        }
    }

    /// The servers the fault hits.
    pub fn faulted(self) -> std::ops::Range<usize> {
        match self {
            Fault::OneUnavailable | Fault::OneRefusing | Fault::OneSlow => 0..1,
            Fault::TwoUnavailable => 0..2,
            _ => 0..3,
        }
    }
}

async fn refuse(server: &EchoServer) {
    server.refuse_connections().await;
    server.close_connections().await;
}

/// When the fault runs, in the run's simulated time.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub warm_up: Duration,
    pub fault: Duration,
    pub after: Duration,
}

impl Schedule {
    pub const fn new(warm_up_ms: u64, fault_ms: u64, after_ms: u64) -> Self {
        Self {
            warm_up: Duration::from_millis(warm_up_ms),
            fault: Duration::from_millis(fault_ms),
            after: Duration::from_millis(after_ms),
        }
    }

    fn calls(&self, every: Duration) -> usize {
        ((self.warm_up + self.fault + self.after).as_millis() / every.as_millis()) as usize
    }
}

/// One call's result.
#[derive(Clone, Debug)]
pub struct CallResult {
    /// When it was scheduled, from the start of the run.
    pub at: Duration,
    /// The server that answered it, or the gRPC code it failed with.
    pub outcome: Result<String, Code>,
}

/// What a run saw.
#[derive(Debug)]
pub struct Run {
    pub schedule: Schedule,
    pub calls: Vec<CallResult>,
    /// Requests that reached the servers during the fault window (attempts).
    pub window_requests: u64,
    /// The most peers the balancer had out of rotation at once (sampled at every call).
    pub max_out: usize,
    /// The most peers the balancer had degraded (open but kept) at once.
    pub max_degraded: usize,
    /// The health report at the end (the stack only).
    pub health: Option<String>,
    /// First / retry attempts and failures per server, over the fault window
    /// (the stack only).
    pub tallies: Vec<(u64, u64, u64, u64)>,
    /// Peer-seconds out of rotation during the fault window (sampled at
    /// every call): the capacity the breakers took away.
    pub out_during_fault: Duration,
}

impl Run {
    /// Over the fault window, the failure rate of first attempts and of
    /// retried attempts, over the servers in `servers` (a retry's failure
    /// should count no more against a peer than the peer's own calls do).
    pub fn failure_rates(&self, servers: std::ops::Range<usize>) -> (f64, f64) {
        let (mut first, mut first_failed, mut retries, mut retries_failed) = (0, 0, 0, 0);
        for &(f, ff, r, rf) in &self.tallies[servers] {
            first += f;
            first_failed += ff;
            retries += r;
            retries_failed += rf;
        }
        (
            first_failed as f64 / first.max(1) as f64,
            retries_failed as f64 / retries.max(1) as f64,
        )
    }
}

impl Run {
    fn window(&self) -> (Duration, Duration) {
        let start = self.schedule.warm_up;
        (start, start + self.schedule.fault)
    }

    fn rate<'a>(calls: impl Iterator<Item = &'a CallResult>) -> f64 {
        let (mut n, mut ok) = (0usize, 0usize);
        for c in calls {
            n += 1;
            ok += usize::from(c.outcome.is_ok());
        }
        if n == 0 { 1.0 } else { ok as f64 / n as f64 }
    }

    /// The share of the calls scheduled during the fault that succeeded.
    pub fn fault_rate(&self) -> f64 {
        let (start, end) = self.window();
        Self::rate(self.calls.iter().filter(|c| c.at >= start && c.at < end))
    }

    /// The share of the calls scheduled after the fault that succeeded.
    pub fn after_rate(&self) -> f64 {
        let (_, end) = self.window();
        Self::rate(self.calls.iter().filter(|c| c.at >= end))
    }

    /// The share of every call that succeeded.
    pub fn overall_rate(&self) -> f64 {
        Self::rate(self.calls.iter())
    }

    /// Calls scheduled during the fault.
    pub fn fault_calls(&self) -> usize {
        let (start, end) = self.window();
        self.calls.iter().filter(|c| c.at >= start && c.at < end).count()
    }

    /// Attempts per call during the fault window.
    pub fn attempts_per_call(&self) -> f64 {
        self.window_requests as f64 / self.fault_calls().max(1) as f64
    }

    /// How long after the fault ended the first call scheduled from then on
    /// succeeded, and how long until every call did (`None`: some call at
    /// the very end still failed).
    pub fn recovery(&self) -> (Option<Duration>, Option<Duration>) {
        let (_, end) = self.window();
        let after: Vec<&CallResult> = self.calls.iter().filter(|c| c.at >= end).collect();
        let first = after.iter().find(|c| c.outcome.is_ok()).map(|c| c.at - end);
        let last_failure = after.iter().rev().find(|c| c.outcome.is_err());
        let all = match last_failure {
            None => Some(Duration::ZERO),
            Some(c) if Some(c.at) == after.last().map(|l| l.at) => None,
            Some(c) => Some(c.at + CALL_EVERY - end),
        };
        (first, all)
    }

    /// How long after the fault ended server `name` answered a call again.
    pub fn back_in_rotation(&self, name: &str) -> Option<Duration> {
        let (_, end) = self.window();
        self.calls
            .iter()
            .filter(|c| c.at >= end)
            .find(|c| c.outcome.as_deref() == Ok(name))
            .map(|c| c.at - end)
    }

    /// How long after the fault ended every server in `servers` had served a
    /// call again (`None`: one never did in the run).
    pub fn all_back_in_rotation(&self, servers: std::ops::Range<usize>) -> Option<Duration> {
        servers
            .map(|i| self.back_in_rotation(&format!("peer-{i}")))
            .try_fold(Duration::ZERO, |longest, back| back.map(|b| longest.max(b)))
    }

    /// The share of all calls after the fault that server `name` answered.
    pub fn share_after(&self, name: &str) -> f64 {
        let (_, end) = self.window();
        let after: Vec<_> = self.calls.iter().filter(|c| c.at >= end).collect();
        after.iter().filter(|c| c.outcome.as_deref() == Ok(name)).count() as f64 / after.len().max(1) as f64
    }

    /// Failed calls of the fault window by the gRPC code they failed with.
    pub fn failure_codes(&self) -> Vec<(Code, usize)> {
        let (start, end) = self.window();
        let mut codes: Vec<(Code, usize)> = Vec::new();
        for c in self.calls.iter().filter(|c| c.at >= start && c.at < end) {
            if let Err(code) = c.outcome {
                match codes.iter_mut().find(|(k, _)| *k == code) {
                    Some((_, n)) => *n += 1,
                    None => codes.push((code, 1)),
                }
            }
        }
        codes
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, all) = self.recovery();
        write!(
            f,
            "fault {:5.1}% ({} calls), after {:5.1}%, overall {:5.1}%, {:.2} attempts/call, max out {} ({:.1} peer-s), recovery first {:?} all {:?}, failures {:?}",
            100.0 * self.fault_rate(),
            self.fault_calls(),
            100.0 * self.after_rate(),
            100.0 * self.overall_rate(),
            self.attempts_per_call(),
            self.max_out,
            self.out_during_fault.as_secs_f64(),
            first,
            all,
            self.failure_codes(),
        )
    }
}

fn hello() -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
        payload: Default::default(),
    }
}

/// Runs `schedule` with `fault` through `client` (see [`run_local`]) on a
/// `LocalSet`: tonic's generated futures over a boxed service are not
/// provably `Send`, and the test's runtime has one thread anyway.
pub async fn run(
    fleet: &Fleet,
    client: Client,
    health: Option<&dyn Fn() -> HealthReport>,
    fault: Fault,
    schedule: Schedule,
) -> Run {
    tokio::task::LocalSet::new()
        .run_until(run_local(fleet, client, health, fault, schedule))
        .await
}

/// Runs `schedule` with `fault` through `client`: one call every
/// [`CALL_EVERY`], each in its own task (open loop), the fault switched on
/// and off at fixed call indices. `health` (the stack's) is sampled every
/// call. Call it at the start of a `start_paused` test (the clock must
/// auto-advance: no `ManualClock`).
async fn run_local(
    fleet: &Fleet,
    client: Client,
    health: Option<&dyn Fn() -> HealthReport>,
    fault: Fault,
    schedule: Schedule,
) -> Run {
    fastrand::seed(19);
    let ticker = tokio::spawn(async {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
        }
    });
    // Warm the connections up outside the measured run.
    let mut warm = client.clone();
    for _ in 0..6 {
        warm.unary(hello()).await.unwrap();
    }
    let total = schedule.calls(CALL_EVERY);
    let fault_start = (schedule.warm_up.as_millis() / CALL_EVERY.as_millis()) as usize;
    let fault_end = ((schedule.warm_up + schedule.fault).as_millis() / CALL_EVERY.as_millis()) as usize;
    let start = Instant::now();
    let mut next = tokio::time::interval(CALL_EVERY);
    let mut tasks = Vec::with_capacity(total);
    let mut requests_at_start = 0;
    let mut window_requests = 0;
    let mut max_out = 0;
    let mut max_degraded = 0;
    let mut out_during_fault = Duration::ZERO;
    let tallies = || fleet.tallies.iter().map(|t| t.get()).collect::<Vec<_>>();
    let mut tallies_at_start = Vec::new();
    let mut tallies_in_window = Vec::new();
    for i in 0..total {
        next.tick().await;
        if i == fault_start {
            requests_at_start = fleet.requests();
            tallies_at_start = tallies();
            fault.start(fleet).await;
        }
        if i == fault_end {
            window_requests = fleet.requests() - requests_at_start;
            tallies_in_window = tallies()
                .into_iter()
                .zip(&tallies_at_start)
                .map(|(end, start)| (end.0 - start.0, end.1 - start.1, end.2 - start.2, end.3 - start.3))
                .collect();
            fault.end(fleet);
        }
        if let Some(health) = health {
            let counts = health().counts();
            let out = counts.open + counts.probing + counts.unavailable;
            max_out = max_out.max(out);
            max_degraded = max_degraded.max(counts.degraded);
            if (fault_start..fault_end).contains(&i) {
                out_during_fault += CALL_EVERY * out as u32;
            }
        }
        let mut client = client.clone();
        let at = Instant::now() - start;
        tasks.push(tokio::task::spawn_local(async move {
            let outcome = match client.unary(hello()).await {
                Ok(reply) => Ok(reply.into_inner().server),
                Err(status) => Err(status.code()),
            };
            CallResult { at, outcome }
        }));
    }
    let mut calls = Vec::with_capacity(total);
    for task in tasks {
        calls.push(task.await.unwrap());
    }
    ticker.abort();
    Run {
        schedule,
        calls,
        window_requests,
        max_out,
        max_degraded,
        health: health.map(|h| h().to_string()),
        tallies: tallies_in_window,
        out_during_fault,
    }
}
