//! Heap allocations per unary gRPC call through the whole client stack over
//! real tonic servers on loopback (issue 18), layer by layer, next to a bare
//! `Channel` and to tower's nearest stack.
//!
//! Everything (the client, tonic's connection task, the servers) runs on one
//! current-thread runtime on this thread, so `allocation-counter` sees every
//! allocation of a call from end to end: tonic's and hyper's own (encoding,
//! HTTP/2 streams, the server's handler) are the bare channel's count, and
//! each layer's budget is what it adds on top of the layer below it. The
//! count of a call is the median of many calls after a warm-up (HTTP/2 flow
//! control sends a window update now and then, which allocates).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use palisade_body::Joined;
use palisade_bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::TimeoutKind;
use palisade_core::protocol::Grpc;
use palisade_discovery::{InMemoryRegistry, Instance, MakePeer, PeerDiscoveryLayer, Registry, RegistryDiscover};
use palisade_retry::{RetryLayer, TonicRetryLayer};
use palisade_testkit::EchoServer;
use palisade_testkit::echo::echo_client::EchoClient;
use palisade_testkit::echo::{EchoReply, EchoRequest};
use palisade_timeout::{Timeout, TimeoutLayer};
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const WARM_UP: usize = 50;
const MEASURED: usize = 101;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request() -> EchoRequest {
    EchoRequest {
        message: String::new(),
        payload: Bytes::from_static(&[7; 64]),
    }
}

/// The median number of allocations of one call made by `call`.
fn per_call<F, Fut>(rt: &Runtime, mut call: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for _ in 0..WARM_UP {
        rt.block_on(call()).unwrap();
    }
    let mut counts: Vec<u64> = (0..MEASURED)
        .map(|_| {
            let mut result = Ok(());
            let n = allocation_counter::measure(|| result = rt.block_on(call())).count_total;
            result.unwrap();
            n
        })
        .collect();
    counts.sort_unstable();
    counts[MEASURED / 2]
}

fn attempt_timeout() -> TimeoutLayer<Grpc> {
    TimeoutLayer::builder()
        .grpc()
        .timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap()
}

fn total_timeout() -> TimeoutLayer<Grpc> {
    TimeoutLayer::builder()
        .grpc()
        .kind(TimeoutKind::Total)
        .timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap()
}

fn breaker() -> CircuitBreakerLayer<Grpc> {
    CircuitBreakerLayer::new(CircuitBreakerConfig::builder().build().unwrap()).protocol(Grpc::default())
}

/// Above the breaker (or the balancer), so it joins their tracked body.
fn bulkhead() -> BulkheadLayer<Joined<Grpc>> {
    BulkheadLayer::new(
        BulkheadConfig::builder()
            .max_concurrent(16)
            .max_queue(64)
            .build()
            .unwrap(),
    )
    .protocol(Joined(Grpc::default()))
}

fn retry() -> TonicRetryLayer {
    RetryLayer::builder().grpc().tonic_body().retries(1).build().unwrap()
}

macro_rules! unary {
    ($client:expr) => {{
        let mut client = $client.clone();
        async move { client.unary(request()).await.map(drop).map_err(|s| s.to_string()) }
    }};
}

#[derive(Clone)]
struct MakePeerChannel;

impl MakePeer for MakePeerChannel {
    type Service = CircuitBreaker<Timeout<Channel, Grpc>, Grpc>;

    fn make_peer(&mut self, instance: &Instance) -> Result<Self::Service, BoxError> {
        let channel = Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy();
        Ok(breaker()
            .for_peer(instance.id())
            .layer(attempt_timeout().layer(channel)))
    }
}

// tower's nearest stack, at the level of the message (tower's `Retry` needs a
// `Clone` request): Retry (TpsBudget) > Timeout > ConcurrencyLimit > Buffer >
// p2c Balance of one channel per server.
#[derive(Clone)]
struct EchoUnary(Channel);

impl Service<EchoRequest> for EchoUnary {
    type Response = EchoReply;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<EchoReply, tonic::Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
            .map_err(|e| tonic::Status::from_error(e.into()))
    }

    fn call(&mut self, message: EchoRequest) -> Self::Future {
        let fresh = self.0.clone();
        let ready = std::mem::replace(&mut self.0, fresh);
        Box::pin(async move { Ok(EchoClient::new(ready).unary(message).await?.into_inner()) })
    }
}

#[derive(Clone)]
struct Budgeted(Arc<tower::retry::budget::TpsBudget>);

impl<Res> tower::retry::Policy<EchoRequest, Res, BoxError> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut EchoRequest, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
        use tower::retry::budget::Budget;
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, call: &EchoRequest) -> Option<EchoRequest> {
        Some(call.clone())
    }
}

struct Counts {
    bare: u64,
    attempt_timeout: u64,
    breaker: u64,
    bulkhead: u64,
    retry: u64,
    quickstart: u64,
    balance_list: u64,
    multi: u64,
    preset: u64,
    tower: u64,
}

fn measure() -> Counts {
    let rt = runtime();
    // Channels spawn their connection task on the runtime they are made in.
    let _entered = rt.enter();
    let servers = rt.block_on(EchoServer::start_many("echo", 3)).unwrap();
    let registry = InMemoryRegistry::without_ttl();
    let _registrations: Vec<_> = servers
        .iter()
        .map(|s| rt.block_on(registry.register(Instance::new("echo", s.addr()))).unwrap())
        .collect();

    let bare = EchoClient::new(servers[0].channel());
    let bare = per_call(&rt, || unary!(bare));

    let c = EchoClient::new(attempt_timeout().layer(servers[0].channel()));
    let attempt = per_call(&rt, || unary!(c));

    let c = EchoClient::new(breaker().layer(attempt_timeout().layer(servers[0].channel())));
    let breaker_n = per_call(&rt, || unary!(c));

    let c = EchoClient::new(bulkhead().layer(breaker().layer(attempt_timeout().layer(servers[0].channel()))));
    let bulkhead_n = per_call(&rt, || unary!(c));

    let stack = ServiceBuilder::new()
        .layer(retry())
        .layer(bulkhead())
        .layer(breaker())
        .layer(attempt_timeout())
        .service(servers[0].channel());
    let c = EchoClient::new(stack);
    let retry_n = per_call(&rt, || unary!(c));

    let stack = ServiceBuilder::new()
        .layer(total_timeout())
        .layer(retry())
        .layer(bulkhead())
        .layer(breaker())
        .layer(attempt_timeout())
        .service(servers[0].channel());
    let c = EchoClient::new(stack);
    let quickstart = per_call(&rt, || unary!(c));

    let endpoints: Vec<Endpoint> = servers.iter().map(EchoServer::endpoint).collect();
    let c = EchoClient::new(Channel::balance_list(endpoints.into_iter()));
    let balance_list = per_call(&rt, || unary!(c));

    let multi = rt.block_on(async {
        let discover = RegistryDiscover::new(&registry, "echo", MakePeerChannel);
        let balancer = PeerDiscoveryLayer::builder()
            .protocol(Joined(Grpc::default()))
            .service_name("echo")
            .registry_status(discover.status())
            .build()
            .unwrap()
            .layer(discover);
        let stack = ServiceBuilder::new()
            .layer(total_timeout())
            .layer(retry())
            .layer(bulkhead())
            .service(balancer);
        EchoClient::new(stack)
    });
    let multi = per_call(&rt, || unary!(multi));

    // The preset over the same registry: the multi-instance stack, boxed.
    let preset = rt.block_on(async {
        EchoClient::new(
            palisade::preset::GrpcClient::builder(registry.clone(), "echo")
                .build()
                .unwrap(),
        )
    });
    let preset = per_call(&rt, || unary!(preset));

    let tower = rt.block_on(async {
        let channels: Vec<EchoUnary> = servers.iter().map(|s| EchoUnary(s.channel())).collect();
        let balance = tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
            tower::discover::ServiceList::new(channels),
            tower::load::CompleteOnResponse::default(),
        ));
        let buffer = tower::buffer::Buffer::new(balance, 1024);
        tower::retry::Retry::new(
            Budgeted(Arc::new(tower::retry::budget::TpsBudget::new(
                Duration::from_secs(10),
                10,
                0.2,
            ))),
            tower::timeout::Timeout::new(
                tower::limit::ConcurrencyLimit::new(buffer, 64),
                Duration::from_millis(250),
            ),
        )
    });
    let tower = per_call(&rt, || {
        let stack = tower.clone();
        async move { stack.oneshot(request()).await.map(drop).map_err(|e| e.to_string()) }
    });

    Counts {
        bare,
        attempt_timeout: attempt,
        breaker: breaker_n,
        bulkhead: bulkhead_n,
        retry: retry_n,
        quickstart,
        balance_list,
        multi,
        preset,
        tower,
    }
}

#[test]
fn the_whole_stack_allocates_only_what_each_layer_needs() {
    let c = measure();
    let rows = [
        ("bare Channel", c.bare, c.bare),
        ("+ attempt timeout", c.attempt_timeout, c.bare),
        ("+ breaker", c.breaker, c.attempt_timeout),
        ("+ bulkhead", c.bulkhead, c.breaker),
        ("+ retry", c.retry, c.bulkhead),
        ("+ total timeout (quickstart)", c.quickstart, c.retry),
        ("balance_list", c.balance_list, c.balance_list),
        ("multi-instance stack", c.multi, c.balance_list),
        ("preset (GrpcClient)", c.preset, c.multi),
        ("tower stack", c.tower, c.balance_list),
    ];
    for (name, n, base) in rows {
        println!("{name:<30} {n:>4} allocations per call ({:+})", n as i64 - base as i64);
    }
    // The itemized budget of each layer over the one below (see BENCHMARKS.md).
    let within = |name: &str, n: u64, base: u64, budget: u64| {
        assert!(
            n <= base + budget,
            "{name}: {n} allocations per call, over {base} + {budget}"
        );
    };
    // None: the grpc-timeout value comes from the thread's cache of
    // millisecond values (`palisade_core::grpc_timeout::wire_value`).
    within("attempt timeout", c.attempt_timeout, c.bare, 0);
    within("breaker", c.breaker, c.attempt_timeout, 0);
    within("bulkhead", c.bulkhead, c.breaker, 0);
    // Attempt record (2: its `Arc` and extension box; the copy of the head
    // leaves it out, the first peer is held inline), replay state (1), head
    // copy (6), service clone (1), body box (1).
    within("retry", c.retry, c.bulkhead, 11);
    // Call options (1) and its copy in the kept head (1); the grpc-timeout
    // values are cached.
    within("total timeout", c.quickstart, c.retry, 2);
    within("multi-instance stack", c.multi, c.balance_list, 11);
    // The multi-instance stack without its total timeout (off by default in
    // the preset: -4), plus the boxed future and the boxed response body (+2).
    within("preset", c.preset, c.multi, 2);
}
