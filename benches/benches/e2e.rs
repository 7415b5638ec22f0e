//! End to end over tonic on loopback: what the client stack costs a real
//! gRPC call (issue 18; the end-to-end row of issue 16).
//!
//! Three test-kit echo servers run in this process. Closed-loop callers
//! (1, 16 and 64 at once) each make unary calls with a 64-byte payload, one
//! after the other, for a fixed time after a warm-up, through five clients:
//!
//! - `bare`: one tonic `Channel` to the first server;
//! - `balance-list`: tonic's `Channel::balance_list` over the three;
//! - `tower`: tower's nearest stack over the three: `Retry` (one retry, a
//!   `TpsBudget`) + `Timeout` (per attempt) + `ConcurrencyLimit` + p2c
//!   `Balance` behind a `Buffer`;
//! - `quickstart`: the README's quickstart stack over one `Channel` to the
//!   first server (total timeout, retry, bulkhead, breaker, attempt timeout);
//! - `multi`: the multi-instance stack over an in-memory registry of the
//!   three (total timeout, retry, bulkhead, balancer, and per peer a breaker
//!   over an attempt timeout);
//! - `preset`: `palisade::preset::GrpcClient` with its defaults over the same
//!   registry (what a user of the preset gets: seed breaker per instance,
//!   30 s attempt timeout, one retry to another instance, a bulkhead of
//!   1,024, no total timeout).
//!
//! The clients are interleaved (every client at one concurrency, then the
//! next concurrency) and the whole sweep runs `--rounds` times, so that a
//! change in the machine's load shows as a spread between rounds rather than
//! as a difference between clients. Each row gives calls/s, p50 and p99
//! latency, and the process's CPU time (user + system, servers included:
//! they do the same work for every client) per call; `quickstart` is compared
//! with `bare`, `tower` and `multi` with `balance-list`.
//!
//! ```text
//! cargo bench -p palisade-benches --bench e2e                  # 2 rounds, 1 s warm-up, 5 s per client
//! cargo bench -p palisade-benches --bench e2e -- --quick       # 1 round, 0.3 s warm-up, 1 s per client
//! E2E_QUICK=1 cargo bench -p palisade-benches --bench e2e      # the same
//! cargo bench -p palisade-benches --bench e2e -- --secs 3 --warmup 1 --rounds 3 --callers 1,64 --clients bare,quickstart
//! cargo bench -p palisade-benches --bench e2e -- --clients timeout,breaker,bulkhead,retry   # one layer at a time
//! cargo bench -p palisade-benches --bench e2e -- --help       # these options
//! cargo bench -p palisade-benches --bench e2e -- --threads 1   # one worker: the steadiest CPU per call
//! cargo bench -p palisade-benches --bench e2e -- --list       # the clients' ids (`e2e/bare: benchmark`), as criterion lists
//! cargo bench -p palisade-benches --bench e2e -- quickstart   # a criterion-style filter on the ids
//! cargo bench -p palisade-benches -- --warm-up-time 1 --measurement-time 2   # every bench: here --warmup 1 --secs 2
//! valgrind --tool=callgrind target/release/deps/e2e-* --calls 2000 --warmup 0 --callers 1 --threads 1 --clients quickstart
//! ```
//!
//! `--calls N` makes each caller send exactly N calls instead of running for
//! a time: under callgrind, the difference of two runs (N = 500 and 2000)
//! divided by the calls between them is the instructions per call, free of
//! the start-up and of the machine's load (`--threads 1` makes it repeat
//! to within a few hundred instructions).
//!
//! ```text
//! ```

// A load benchmark measures wall time: the std clock is the right one here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods, missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use palisade_body::Joined;
use palisade_bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::error::TimeoutKind;
use palisade_core::protocol::Grpc;
use palisade_discovery::{
    InMemoryRegistry, Instance, MakePeer, PeerDiscovery, PeerDiscoveryLayer, Registration, Registry, RegistryDiscover,
};
use palisade_retry::{DefaultPredicate, Retry, RetryLayer, TonicBody};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoReply, EchoRequest};
use palisade_timeout::{Timeout, TimeoutLayer};
use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const SERVICE: &str = "echo";
const PAYLOAD: usize = 64;

// ---------------------------------------------------------------- options

#[derive(Clone, Debug)]
struct Opts {
    warmup: Duration,
    run: Duration,
    rounds: usize,
    callers: Vec<usize>,
    clients: Vec<Kind>,
    /// Each caller makes exactly this many calls instead of running for a
    /// time (for instruction counts under `valgrind --tool=callgrind`).
    calls: Option<u64>,
    /// The runtime's worker threads (`None`: one per core).
    threads: Option<usize>,
    /// `--list`: print the clients' ids as criterion does (`e2e/bare: benchmark`), run nothing.
    list: bool,
    /// A criterion-style filter: only the clients whose id contains it run.
    filter: Option<String>,
}

fn opts() -> Opts {
    let mut opts = Opts {
        warmup: Duration::from_secs(1),
        run: Duration::from_secs(5),
        rounds: 2,
        callers: vec![1, 16, 64],
        clients: Kind::ALL.to_vec(),
        calls: None,
        threads: None,
        list: false,
        filter: None,
    };
    let quick = |o: &mut Opts| {
        o.warmup = Duration::from_millis(300);
        o.run = Duration::from_secs(1);
        o.rounds = 1;
    };
    if std::env::var_os("E2E_QUICK").is_some_and(|v| v != "0") {
        quick(&mut opts);
    }
    let secs =
        |v: Option<String>| Duration::from_secs_f64(v.and_then(|v| v.parse().ok()).expect("a number of seconds"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick(&mut opts),
            "--secs" => opts.run = secs(args.next()),
            "--warmup" => opts.warmup = secs(args.next()),
            "--threads" => opts.threads = args.next().and_then(|v| v.parse().ok()),
            "--calls" => opts.calls = args.next().and_then(|v| v.parse().ok()),
            "--rounds" => opts.rounds = args.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--callers" => {
                opts.callers = args
                    .next()
                    .expect("--callers 1,16,64")
                    .split(',')
                    .map(|c| c.parse().expect("a number of callers"))
                    .collect();
            }
            "--clients" => {
                opts.clients = args
                    .next()
                    .expect("--clients bare,quickstart")
                    .split(',')
                    .map(|c| {
                        Kind::ALL
                            .into_iter()
                            .chain(Kind::LAYERS)
                            .find(|k| k.name() == c)
                            .expect("a client name")
                    })
                    .collect();
            }
            // A whole-crate `cargo bench -p palisade-benches -- <criterion options>`
            // hands this binary the criterion benches' options too: the times
            // mean what they mean there, `--list` lists, a bare word filters.
            "--warm-up-time" => opts.warmup = secs(args.next()),
            "--measurement-time" => opts.run = secs(args.next()),
            "--list" => opts.list = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            option if CRITERION_VALUED.contains(&option) => {
                args.next();
            }
            filter if !filter.starts_with('-') => opts.filter = Some(filter.to_owned()),
            // `--bench` (from `cargo bench`) and criterion's other flags.
            _ => {}
        }
    }
    if let Some(filter) = &opts.filter {
        opts.clients.retain(|kind| kind.id().contains(filter.as_str()));
    }
    opts
}

/// What `--help` prints.
const USAGE: &str = "\
e2e: closed-loop unary calls over tonic on loopback through each client; a table per concurrency.
  --secs S          seconds per client per round (default 5; criterion's --measurement-time too)
  --warmup S        warm-up seconds per client (default 1; criterion's --warm-up-time too)
  --rounds N        sweeps over every client and concurrency (default 2)
  --callers 1,16,64 concurrent callers
  --clients a,b     bare, balance-list, tower, quickstart, multi, preset (default: all six);
                    one layer over one channel: timeout, timeout-silent (no grpc-timeout sent),
                    breaker, bulkhead, retry; preset-silent (the preset sending no grpc-timeout)
  --threads N       the runtime's worker threads (default: one per core; 1 is the steadiest
                    reading of CPU per call)
  --calls N         exactly N calls per caller instead of a time (for callgrind)
  --quick           1 round, 0.3 s warm-up, 1 s per client (also E2E_QUICK=1)
  --list            the clients' ids, as criterion lists them
  WORD              only the clients whose id (e2e/<name>) contains WORD";

/// Criterion's options that take a value this harness has no use for:
/// skipped with their value, so the value is not read as a filter.
const CRITERION_VALUED: [&str; 16] = [
    "--sample-size",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--nresamples",
    "--output-format",
    "--plotting-backend",
    "--profile-time",
    "--color",
    "-c",
];

// ---------------------------------------------------------------- clients

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bare,
    BalanceList,
    Tower,
    Quickstart,
    Multi,
    Preset,
    // One layer of the quickstart alone over one channel (not in the default
    // run: name them with `--clients`), to see what each costs.
    OnlyTimeout,
    /// The same attempt timeout, writing no `grpc-timeout`: what the header
    /// costs (the in-process servers arm a timer of their own for it).
    OnlyTimeoutSilent,
    /// The preset, its attempt timeout writing no `grpc-timeout`.
    PresetSilent,
    OnlyBreaker,
    OnlyBulkhead,
    OnlyRetry,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Bare,
        Kind::BalanceList,
        Kind::Tower,
        Kind::Quickstart,
        Kind::Multi,
        Kind::Preset,
    ];
    const LAYERS: [Kind; 6] = [
        Kind::OnlyTimeout,
        Kind::OnlyTimeoutSilent,
        Kind::PresetSilent,
        Kind::OnlyBreaker,
        Kind::OnlyBulkhead,
        Kind::OnlyRetry,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare",
            Kind::BalanceList => "balance-list",
            Kind::Tower => "tower",
            Kind::Quickstart => "quickstart",
            Kind::Multi => "multi",
            Kind::Preset => "preset",
            Kind::OnlyTimeout => "timeout",
            Kind::OnlyTimeoutSilent => "timeout-silent",
            Kind::PresetSilent => "preset-silent",
            Kind::OnlyBreaker => "breaker",
            Kind::OnlyBulkhead => "bulkhead",
            Kind::OnlyRetry => "retry",
        }
    }

    /// The id `--list` prints and a filter matches: `e2e/<name>`.
    fn id(self) -> String {
        format!("e2e/{}", self.name())
    }

    /// The client this one is compared with.
    fn baseline(self) -> Kind {
        match self {
            Kind::Bare | Kind::Quickstart => Kind::Bare,
            Kind::OnlyTimeout | Kind::OnlyTimeoutSilent | Kind::OnlyBreaker | Kind::OnlyBulkhead | Kind::OnlyRetry => {
                Kind::Bare
            }
            Kind::BalanceList | Kind::Tower | Kind::Multi | Kind::Preset | Kind::PresetSilent => Kind::BalanceList,
        }
    }
}

/// The README's quickstart stack over one channel. The bulkhead joins the
/// breaker's tracked body ([`Joined`]): one body adapter per call.
type QuickStack = Timeout<
    Retry<Bulkhead<CircuitBreaker<Timeout<Channel, Grpc>, Grpc>, Joined<Grpc>>, Grpc, DefaultPredicate, TonicBody>,
    Grpc,
>;

type PerPeer = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;
type Balancer = PeerDiscovery<RegistryDiscover<MakePeerChannel>, Joined<Grpc>>;
/// The multi-instance stack over the registry; the balancer and the bulkhead
/// join the per-peer breaker's body.
type MultiStack = Timeout<Retry<Bulkhead<Balancer, Joined<Grpc>>, Grpc, DefaultPredicate, TonicBody>, Grpc>;

#[derive(Clone)]
struct MakePeerChannel {
    breaker: CircuitBreakerLayer<Grpc>,
    attempt: TimeoutLayer<Grpc>,
}

impl MakePeer for MakePeerChannel {
    type Service = PerPeer;

    fn make_peer(&mut self, instance: &Instance) -> Result<PerPeer, BoxError> {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        Ok(self.breaker.for_peer(instance.id()).layer(self.attempt.layer(channel)))
    }
}

fn quickstart(channel: Channel) -> Result<EchoClient<QuickStack>, BoxError> {
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(2)))
                .build()?,
        )
        .layer(
            RetryLayer::builder()
                .grpc()
                .tonic_body()
                .retries(2)
                .backoff(
                    Backoff::exponential(Duration::from_millis(20))
                        .jitter(Jitter::Full)
                        .build()?,
                )
                .build()?,
        )
        .layer(
            BulkheadLayer::new(BulkheadConfig::builder().max_concurrent(16).max_queue(64).build()?)
                .protocol(Joined(Grpc::default())),
        )
        .layer(
            CircuitBreakerLayer::new(CircuitBreakerConfig::builder().failure_threshold(3).build()?)
                .protocol(Grpc::default()),
        )
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .timeout(Some(Duration::from_millis(300)))
                .build()?,
        )
        .service(channel);
    Ok(EchoClient::new(stack))
}

fn multi(registry: &InMemoryRegistry) -> Result<EchoClient<MultiStack>, BoxError> {
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::for_balancer().build()?).protocol(Grpc::default());
    let attempt = TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(250)))
        .build()?;
    let discover = RegistryDiscover::new(registry, SERVICE, MakePeerChannel { breaker, attempt });
    let balancer = PeerDiscoveryLayer::builder()
        .protocol(Joined(Grpc::default()))
        .service_name(SERVICE)
        .registry_status(discover.status())
        .build()?
        .layer(discover);
    let stack = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Total)
                .timeout(Some(Duration::from_secs(1)))
                .build()?,
        )
        .layer(RetryLayer::builder().grpc().tonic_body().retries(1).build()?)
        .layer(
            BulkheadLayer::new(BulkheadConfig::builder().max_concurrent(64).max_queue(64).build()?)
                .protocol(Joined(Grpc::default())),
        )
        .service(balancer);
    Ok(EchoClient::new(stack))
}

// tower's nearest stack, at the level of the generated client's message
// (tower's `Retry` needs a `Clone` request, which a streaming http body is
// not): Retry(TpsBudget) > Timeout > ConcurrencyLimit > Buffer > p2c Balance.

type TowerBalanced = tower::balance::p2c::Balance<
    tower::load::PendingRequestsDiscover<tower::discover::ServiceList<Vec<EchoUnary>>, tower::load::CompleteOnResponse>,
    EchoRequest,
>;
type TowerStack = tower::retry::Retry<
    BudgetedRetry,
    tower::timeout::Timeout<
        tower::limit::ConcurrencyLimit<
            tower::buffer::Buffer<EchoRequest, <TowerBalanced as Service<EchoRequest>>::Future>,
        >,
    >,
>;

/// The preset with its defaults over `registry`; `grpc_timeout` off makes
/// its attempt timeout send no `grpc-timeout`.
fn preset(registry: &InMemoryRegistry, grpc_timeout: bool) -> palisade::preset::GrpcClient {
    palisade::preset::GrpcClient::builder(registry.clone(), SERVICE)
        .attempt_timeout_layer(|t| t.propagate_grpc_timeout(grpc_timeout))
        .build()
        .expect("preset")
}

/// The quickstart's attempt timeout alone over `channel`.
fn attempt_timeout(channel: Channel, grpc_timeout: bool) -> Timeout<Channel, Grpc> {
    TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(300)))
        .propagate_grpc_timeout(grpc_timeout)
        .build()
        .expect("timeout")
        .layer(channel)
}

fn tower_stack(addrs: &[String]) -> Result<TowerStack, BoxError> {
    let services = addrs
        .iter()
        .map(|addr| {
            Ok(EchoUnary {
                channel: Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy(),
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let balance = tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
        tower::discover::ServiceList::new(services),
        tower::load::CompleteOnResponse::default(),
    ));
    let policy = BudgetedRetry {
        budget: Arc::new(tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        retries_left: 1,
    };
    let buffer = tower::buffer::Buffer::new(balance, 1024);
    Ok(tower::retry::Retry::new(
        policy,
        tower::timeout::Timeout::new(
            tower::limit::ConcurrencyLimit::new(buffer, 64),
            Duration::from_millis(250),
        ),
    ))
}

#[derive(Clone)]
struct EchoUnary {
    channel: Channel,
}

type UnaryFuture = Pin<Box<dyn Future<Output = Result<EchoReply, tonic::Status>> + Send>>;

impl Service<EchoRequest> for EchoUnary {
    type Response = EchoReply;
    type Error = tonic::Status;
    type Future = UnaryFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.channel, cx)
            .map_err(|e| tonic::Status::from_error(e.into()))
    }

    fn call(&mut self, message: EchoRequest) -> UnaryFuture {
        let fresh = self.channel.clone();
        let ready = std::mem::replace(&mut self.channel, fresh);
        Box::pin(async move { Ok(EchoClient::new(ready).unary(message).await?.into_inner()) })
    }
}

#[derive(Clone)]
struct BudgetedRetry {
    budget: Arc<tower::retry::budget::TpsBudget>,
    retries_left: u32,
}

impl<Res> tower::retry::Policy<EchoRequest, Res, BoxError> for BudgetedRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut EchoRequest, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
        use tower::retry::budget::Budget;
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(error) if self.retries_left > 0 && retryable(error) => {
                if !self.budget.withdraw() {
                    return None;
                }
                self.retries_left -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, call: &EchoRequest) -> Option<EchoRequest> {
        Some(call.clone())
    }
}

fn retryable(error: &BoxError) -> bool {
    error.is::<tower::timeout::error::Elapsed>()
        || error
            .downcast_ref::<tonic::Status>()
            .is_some_and(|status| status.code() == tonic::Code::Unavailable)
}

#[derive(Clone)]
enum Client {
    Channel(EchoClient<Channel>),
    Tower(TowerStack),
    Quickstart(EchoClient<QuickStack>),
    Multi(EchoClient<MultiStack>),
    Preset(EchoClient<palisade::preset::GrpcClient>),
    Timeout(EchoClient<Timeout<Channel, Grpc>>),
    Breaker(EchoClient<CircuitBreaker<Channel, Grpc>>),
    Bulkhead(EchoClient<Bulkhead<Channel, Grpc>>),
    Retry(EchoClient<Retry<Channel, Grpc, DefaultPredicate, TonicBody>>),
}

impl Client {
    async fn call(&mut self, request: EchoRequest) -> bool {
        match self {
            Client::Channel(client) => client.unary(request).await.is_ok(),
            Client::Quickstart(client) => client.unary(request).await.is_ok(),
            Client::Multi(client) => client.unary(request).await.is_ok(),
            Client::Preset(client) => client.unary(request).await.is_ok(),
            Client::Timeout(client) => client.unary(request).await.is_ok(),
            Client::Breaker(client) => client.unary(request).await.is_ok(),
            Client::Bulkhead(client) => client.unary(request).await.is_ok(),
            Client::Retry(client) => client.unary(request).await.is_ok(),
            Client::Tower(stack) => {
                // Boxed, as a user does to name it: rustc cannot prove the
                // `Send` of tower's retry future over a `Buffer` otherwise.
                let call: Pin<Box<dyn Future<Output = Result<EchoReply, BoxError>> + Send>> =
                    Box::pin(stack.clone().oneshot(request));
                call.await.is_ok()
            }
        }
    }
}

// ---------------------------------------------------------------- measuring

/// The process's CPU time (user + system, every thread) so far, from
/// `/proc/self/stat` (what `getrusage(RUSAGE_SELF)` reports, in clock ticks
/// of 10 ms: over a run of seconds that is well under 1% of the total).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may
    // hold spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, that is 11 and 12 after `)`.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    calls_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_call: f64,
    errors: u64,
}

/// Runs `callers` closed-loop callers through `client` for `time`; returns
/// every successful call's latency in nanoseconds and the number of errors.
async fn load(client: &Client, callers: usize, time: Duration, calls: Option<u64>) -> (Vec<u64>, u64) {
    let end = Instant::now() + time;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let payload = Bytes::from_static(&[7; PAYLOAD]);
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut made = 0u64;
                loop {
                    let start = Instant::now();
                    let done = match calls {
                        Some(calls) => made >= calls,
                        None => start >= end,
                    };
                    if done {
                        break;
                    }
                    made += 1;
                    let request = EchoRequest {
                        message: String::new(),
                        payload: payload.clone(),
                    };
                    if client.call(request).await {
                        latencies.push(start.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("caller task");
        all.extend(latencies);
        errors += e;
    }
    (all, errors)
}

async fn measure(client: &Client, callers: usize, opts: &Opts) -> Sample {
    load(client, callers, opts.warmup, None).await;
    let cpu = cpu_time();
    let start = Instant::now();
    let (mut latencies, errors) = load(client, callers, opts.run, opts.calls).await;
    let wall = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    latencies.sort_unstable();
    let calls = latencies.len().max(1);
    let pct = |p: f64| {
        latencies
            .get(((calls as f64 * p) as usize).min(calls - 1))
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    Sample {
        calls_per_s: latencies.len() as f64 / wall.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls as f64,
        errors,
    }
}

fn print_table(title: &str, callers: usize, rows: &[(Kind, Sample, Option<f64>)]) {
    println!("\n{title}, {callers} caller(s)");
    println!(
        "| {:<12} | {:>9} | {:>8} | {:>8} | {:>9} | {:>10} | {:>8} | {:>8} | {:>6} |",
        "client", "calls/s", "p50 µs", "p99 µs", "CPU µs", "vs", "calls/s", "p99", "+CPU µs"
    );
    println!("|{}|", ["---"; 9].join("|"));
    let find = |kind: Kind| rows.iter().find(|(k, _, _)| *k == kind).map(|(_, s, _)| *s);
    for (kind, s, spread) in rows {
        let base = kind.baseline();
        let (vs, ratio, p99, cpu) = match find(base) {
            Some(b) if base != *kind => (
                base.name(),
                format!("{:.3}", s.calls_per_s / b.calls_per_s),
                format!("{:.3}", s.p99_us / b.p99_us),
                format!("{:+.1}", s.cpu_us_per_call - b.cpu_us_per_call),
            ),
            _ => ("", String::new(), String::new(), String::new()),
        };
        let spread = spread.map_or(String::new(), |s| format!(" ±{:.1}%", s * 50.0));
        println!(
            "| {:<12} | {:>9.0} | {:>8.1} | {:>8.1} | {:>9.1} | {:>10} | {:>8} | {:>8} | {:>6} |{}{}",
            kind.name(),
            s.calls_per_s,
            s.p50_us,
            s.p99_us,
            s.cpu_us_per_call,
            vs,
            ratio,
            p99,
            cpu,
            spread,
            if s.errors > 0 {
                format!(" ({} errors)", s.errors)
            } else {
                String::new()
            },
        );
    }
}

fn main() {
    let opts = opts();
    if opts.list {
        for kind in &opts.clients {
            println!("{}: benchmark", kind.id());
        }
        return;
    }
    if opts.clients.is_empty() {
        println!("e2e: no client matches {:?}", opts.filter.as_deref().unwrap_or(""));
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let servers = futures::future::try_join_all((0..3).map(|i| EchoServer::start(format!("echo-{i}"))))
            .await
            .expect("servers");
        let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
        let registry = InMemoryRegistry::without_ttl();
        let mut registrations: Vec<Registration> = Vec::new();
        for server in &servers {
            registrations.push(registry.register(Instance::new(SERVICE, server.addr())).await.expect("register"));
        }
        let endpoints: Vec<Endpoint> = servers.iter().map(EchoServer::endpoint).collect();
        let clients: Vec<(Kind, Client)> = opts
            .clients
            .iter()
            .map(|&kind| {
                let client = match kind {
                    Kind::Bare => Client::Channel(EchoClient::new(servers[0].channel())),
                    Kind::BalanceList => Client::Channel(EchoClient::new(Channel::balance_list(endpoints.clone().into_iter()))),
                    Kind::Tower => Client::Tower(tower_stack(&addrs).expect("tower stack")),
                    Kind::Quickstart => Client::Quickstart(quickstart(servers[0].channel()).expect("quickstart")),
                    Kind::Multi => Client::Multi(multi(&registry).expect("multi")),
                    Kind::Preset => Client::Preset(EchoClient::new(preset(&registry, true))),
                    Kind::PresetSilent => Client::Preset(EchoClient::new(preset(&registry, false))),
                    Kind::OnlyTimeout => Client::Timeout(EchoClient::new(attempt_timeout(servers[0].channel(), true))),
                    Kind::OnlyTimeoutSilent => {
                        Client::Timeout(EchoClient::new(attempt_timeout(servers[0].channel(), false)))
                    }
                    Kind::OnlyBreaker => Client::Breaker(EchoClient::new(
                        CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().expect("breaker"))
                            .protocol(Grpc::default())
                            .layer(servers[0].channel()),
                    )),
                    Kind::OnlyBulkhead => Client::Bulkhead(EchoClient::new(
                        BulkheadLayer::new(
                            BulkheadConfig::builder().max_concurrent(16).max_queue(64).build().expect("bulkhead"),
                        )
                        .protocol(Grpc::default())
                        .layer(servers[0].channel()),
                    )),
                    Kind::OnlyRetry => Client::Retry(EchoClient::new(
                        ServiceBuilder::new()
                            .layer(RetryLayer::builder().grpc().tonic_body().retries(2).build().expect("retry"))
                            .service(servers[0].channel()),
                    )),
                };
                (kind, client)
            })
            .collect();
        println!(
            "e2e: {} round(s), {:?} warm-up then {:?} per client, callers {:?}, {} worker threads, unary {PAYLOAD}-byte payload",
            opts.rounds,
            opts.warmup,
            opts.run,
            opts.callers,
            opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get())),
        );
        let mut all: Vec<(usize, Kind, Vec<Sample>)> = Vec::new();
        for round in 1..=opts.rounds {
            for &callers in &opts.callers {
                let mut rows = Vec::new();
                for (kind, client) in &clients {
                    let sample = measure(client, callers, &opts).await;
                    rows.push((*kind, sample, None));
                    match all.iter_mut().find(|(c, k, _)| *c == callers && k == kind) {
                        Some((_, _, samples)) => samples.push(sample),
                        None => all.push((callers, *kind, vec![sample])),
                    }
                }
                print_table(&format!("round {round}"), callers, &rows);
            }
        }
        if opts.rounds > 1 {
            for &callers in &opts.callers {
                let rows: Vec<_> = all
                    .iter()
                    .filter(|(c, _, _)| *c == callers)
                    .map(|(_, kind, samples)| {
                        let n = samples.len() as f64;
                        let mean = |f: fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / n;
                        let rate = mean(|s| s.calls_per_s);
                        let (lo, hi) = samples
                            .iter()
                            .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s.calls_per_s), hi.max(s.calls_per_s)));
                        let sample = Sample {
                            calls_per_s: rate,
                            p50_us: mean(|s| s.p50_us),
                            p99_us: mean(|s| s.p99_us),
                            cpu_us_per_call: mean(|s| s.cpu_us_per_call),
                            errors: samples.iter().map(|s| s.errors).sum(),
                        };
                        (*kind, sample, Some((hi - lo) / rate))
                    })
                    .collect();
                print_table("mean of the rounds (± half the spread of calls/s)", callers, &rows);
            }
        }
        drop(registrations);
    });
}
