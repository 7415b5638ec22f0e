//! The gRPC preset: [`GrpcClient`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use palisade_body::Joined;
use palisade_bulkhead::{BulkheadConfigBuilder, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfigBuilder, CircuitBreakerHandle, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::{ConfigError, TimeoutKind};
use palisade_core::event::Listener;
use palisade_core::protocol::Grpc;
use palisade_core::route::RouteTableBuilder;
use palisade_discovery::{Instance, MakePeer, PeerDiscoveryBuilder, PeerDiscoveryLayer, Registry, RegistryDiscover};
use palisade_fallback::grpc::grpc_answer;
use palisade_retry::{RetryLayer, RetryLayerBuilder};
use palisade_timeout::{TimeoutBuilder, TimeoutLayer};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::defaults;
use super::fallback::Answer;
use super::health::{ClientHealth, HealthSource};
use crate::stack::PeerStack;

/// How the preset connects to one registered instance: a tonic [`Channel`]
/// for it. The default ([`connect_lazy`]) connects lazily to
/// `http://{address}`.
pub type Connect = Arc<dyn Fn(&Instance) -> Result<Channel, BoxError> + Send + Sync>;

/// The default [`Connect`]: a lazily connected [`Channel`] to
/// `http://{address}` with tonic's defaults (TCP_NODELAY on, no connect
/// timeout: the per-attempt timeout bounds a connect that hangs, and the
/// breaker counts it).
pub fn connect_lazy(instance: &Instance) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{}", instance.addr()))?.connect_lazy())
}

/// The response future of a [`GrpcClient`].
pub type ResponseFuture = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// The whole Palisade client stack for a gRPC service, as one cloneable,
/// `Send` service that a tonic generated client takes as it is
/// (`EchoClient::new(client)`). Built by [`GrpcClient::builder`]; see the
/// [module docs](super) for the layers and their defaults.
///
/// Clones share everything (peer set, breakers, bulkhead, retry budget), so
/// clone it into every task.
#[derive(Clone)]
pub struct GrpcClient {
    inner: Inner,
    health: HealthSource,
}

impl fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClient")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl GrpcClient {
    /// The builder, for the instances of `service` in `registry`: the full
    /// stack with a balancer over the registry's instances and a breaker and
    /// an attempt timeout per instance.
    pub fn builder<R: Registry>(registry: R, service: impl Into<String>) -> GrpcClientBuilder {
        GrpcClientBuilder::new(Target::Registry {
            registry: Arc::new(registry),
            service: service.into(),
        })
    }

    /// The builder for one tonic [`Channel`] (no registry, no balancer): the
    /// stack wraps the one connection, its breaker and attempt timeout
    /// included.
    pub fn over_channel(channel: Channel) -> GrpcClientBuilder {
        GrpcClientBuilder::new(Target::Channel(channel))
    }

    /// A snapshot of the client's health: every instance with its breaker
    /// state, in-flight calls and latest error (over a registry), the
    /// registry's state, the bulkhead's occupancy and the retry budget.
    pub fn health(&self) -> ClientHealth {
        self.health.snapshot()
    }
}

impl Service<http::Request<Body>> for GrpcClient {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        self.inner.call(request)
    }
}

pub(crate) enum Target {
    Registry {
        registry: Arc<dyn Registry>,
        service: String,
    },
    Channel(Channel),
}

/// Builds a [`GrpcClient`]. Every setting starts at the preset's default
/// (the seed system's numbers, see the [module docs](super)); each layer's
/// own builder is reachable through a closure, so every knob of every layer
/// can be set, and [`build`](Self::build) validates them all and returns the
/// first [`ConfigError`], naming the layer and the field.
///
/// ```
/// # use palisade::preset::GrpcClient;
/// # use palisade::discovery::InMemoryRegistry;
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade::BoxError> {
/// let registry = InMemoryRegistry::new();
/// let client = GrpcClient::builder(registry, "echo")
///     .retries(2)
///     .attempt_timeout(Duration::from_millis(300))
///     .breaker(|b| b.failure_threshold(5))
///     .build()?;
/// # drop(client); Ok(()) }
/// ```
pub struct GrpcClientBuilder {
    target: Target,
    connect: Connect,
    breaker: CircuitBreakerConfigBuilder,
    attempt_timeout: TimeoutBuilder<Grpc>,
    total_timeout: TimeoutBuilder<Grpc>,
    retry: RetryLayerBuilder<Grpc>,
    bulkhead: BulkheadConfigBuilder,
    balancer: PeerDiscoveryBuilder<Joined<Grpc>>,
    listeners: Vec<Arc<dyn Listener>>,
    fallbacks: RouteTableBuilder<Answer<Body>>,
}

impl fmt::Debug for GrpcClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Registry { service, .. } => format!("registry service {service:?}"),
            Target::Channel(_) => "one channel".to_owned(),
        };
        f.debug_struct("GrpcClientBuilder")
            .field("target", &target)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

impl GrpcClientBuilder {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            connect: Arc::new(connect_lazy),
            breaker: defaults::breaker(),
            attempt_timeout: TimeoutLayer::builder()
                .grpc()
                .kind(TimeoutKind::Attempt)
                .timeout(Some(defaults::ATTEMPT_TIMEOUT)),
            total_timeout: TimeoutLayer::builder().grpc().kind(TimeoutKind::Total).timeout(None),
            retry: RetryLayer::builder().grpc().retries(defaults::RETRIES),
            bulkhead: defaults::bulkhead(),
            // Above the per-instance breaker: joins its body (see `build`).
            balancer: PeerDiscoveryLayer::builder().protocol(Joined(Grpc::default())),
            listeners: Vec::new(),
            fallbacks: RouteTableBuilder::new(),
        }
    }

    /// How to connect to an instance (default [`connect_lazy`]): set TLS,
    /// keep-alive or a connect timeout on the [`Endpoint`] here. Called once
    /// per instance address while it stays registered.
    pub fn connect<F>(mut self, connect: F) -> Self
    where
        F: Fn(&Instance) -> Result<Channel, BoxError> + Send + Sync + 'static,
    {
        self.connect = Arc::new(connect);
        self
    }

    super::knobs::layer_knobs!(Grpc);

    /// Answers the failed calls of one gRPC `method`
    /// (`"/package.Service/Method"`) with `answer(error)`: a message of the
    /// method's response type (`Ok`), which the caller receives as the
    /// method's reply, or a [`Status`](tonic::Status) (`Err`). A call fails
    /// when the whole stack gives up: an error (every instance open, no
    /// instance registered, the bulkhead full, the deadline passed, the last
    /// attempt's error) or a failed status in a response's head. Calls to
    /// other methods pass through untouched; naming a method twice is a
    /// [`ConfigError`] at [`build`](Self::build). The fallback sits outside
    /// every layer (see the [module docs](super)); the answer carries a
    /// [`FromFallback`](palisade_fallback::FromFallback) extension.
    pub fn fallback<M, F>(mut self, method: impl Into<String>, answer: F) -> Self
    where
        M: prost::Message,
        F: Fn(&BoxError) -> Result<M, tonic::Status> + Send + Sync + 'static,
    {
        self.fallbacks
            .push(method, Arc::new(move |error: &BoxError| grpc_answer(answer(error))));
        self
    }

    /// Validates every layer's settings and builds the stack (no connection
    /// is made until the first call). Over a registry, call it inside a
    /// tokio runtime: the registry's watch starts here.
    pub fn build(self) -> Result<GrpcClient, ConfigError> {
        let Self {
            target,
            connect,
            mut breaker,
            mut attempt_timeout,
            mut total_timeout,
            mut retry,
            mut bulkhead,
            mut balancer,
            listeners,
            fallbacks,
        } = self;
        super::knobs::hear_all!(&listeners; breaker, attempt_timeout, total_timeout, retry, bulkhead, balancer);
        let fallback = super::fallback::by_route(fallbacks, Grpc::default(), &listeners)?;
        let breaker = CircuitBreakerLayer::builder().config(breaker).grpc().build()?;
        let attempt_timeout = attempt_timeout.build()?;
        // One tracked body per call: the breaker below wraps the channel's
        // body (the timeouts have no body limits, so they pass it through)
        // and the balancer and the bulkhead join it, so the whole stack
        // settles its guards at one end of stream, detected once.
        let bulkhead = BulkheadLayer::builder()
            .config(bulkhead)
            .protocol(Joined(Grpc::default()))
            .build()?;
        let bulkhead_handle = bulkhead.handle();
        // Attempts reach the bulkhead and the channel as tonic's body type.
        let retry = retry.tonic_body().build()?;
        let retry_handle = retry.clone();
        let upper = ServiceBuilder::new()
            .layer(total_timeout.build()?)
            .layer(retry)
            .layer(bulkhead);
        let (inner, health) = match target {
            Target::Registry { registry, service } => {
                let make = MakeGrpcPeer {
                    breaker,
                    attempt_timeout,
                    connect,
                };
                let discover = RegistryDiscover::new(&*registry, &service, make);
                let balancer = balancer
                    .service_name(&service)
                    .registry_status(discover.status())
                    .build()?
                    .layer(discover);
                let health = {
                    let balancer = balancer.clone();
                    HealthSource::balancer(move || balancer.health(), bulkhead_handle, retry_handle)
                };
                (box_stack(upper.service(balancer)), health)
            }
            Target::Channel(channel) => {
                let handle: CircuitBreakerHandle = breaker.handle();
                let health = HealthSource::single(handle, bulkhead_handle, retry_handle);
                let stack = upper.service(breaker.layer(attempt_timeout.layer(channel)));
                (box_stack(stack), health)
            }
        };
        let inner = match fallback {
            Some(add) => add(inner),
            None => inner,
        };
        Ok(GrpcClient { inner, health })
    }
}

fn box_stack<S, B>(stack: S) -> Inner
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(stack.map_response(|response: http::Response<B>| response.map(Body::new)))
}

/// Makes one instance's service: its channel behind its attempt timeout and
/// its own breaker.
#[derive(Clone)]
struct MakeGrpcPeer {
    breaker: CircuitBreakerLayer<Grpc>,
    attempt_timeout: TimeoutLayer<Grpc>,
    connect: Connect,
}

impl MakePeer for MakeGrpcPeer {
    type Service = PeerStack<Channel, Grpc>;

    fn make_peer(&mut self, instance: &Instance) -> Result<Self::Service, BoxError> {
        let channel = (self.connect)(instance)?;
        Ok(self
            .breaker
            .for_peer(instance.id())
            .layer(self.attempt_timeout.layer(channel)))
    }
}
