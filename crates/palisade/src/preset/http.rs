//! The hyper preset: [`HttpClient`] and its builder (feature `hyper`).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Either, MapErr, Ready, TryFutureExt, ready};
use http::uri::{Authority, Scheme};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_body::Joined;
use palisade_bulkhead::{BulkheadConfigBuilder, BulkheadLayer};
use palisade_circuit_breaker::{CircuitBreakerConfigBuilder, CircuitBreakerHandle, CircuitBreakerLayer};
use palisade_core::BoxError;
use palisade_core::error::{ConfigError, TimeoutKind};
use palisade_core::event::Listener;
use palisade_core::protocol::Http;
use palisade_core::route::RouteTableBuilder;
use palisade_discovery::{Instance, MakePeer, PeerDiscoveryBuilder, PeerDiscoveryLayer, Registry, RegistryDiscover};
use palisade_retry::{ReplayBody, RetryLayer, RetryLayerBuilder};
use palisade_timeout::{TimeoutBuilder, TimeoutLayer};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::defaults;
use super::fallback::Answer;
use super::health::{ClientHealth, HealthSource};
use crate::stack::PeerStack;

/// The hyper client the preset sends attempts with: plain `http://`, its
/// request bodies replayable by the retry layer.
pub type HyperClient<B = Full<Bytes>> = Client<HttpConnector, ReplayBody<B>>;

/// The response body of an [`HttpClient`]: the instance's body, followed to
/// its end by every layer, boxed so that the client's type can be named.
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// The response future of an [`HttpClient`].
pub type HttpResponseFuture = BoxFuture<'static, Result<http::Response<HttpBody>, BoxError>>;

type Inner<B> = BoxCloneSyncService<http::Request<B>, http::Response<HttpBody>, BoxError>;

/// The whole Palisade client stack for an http service, as one cloneable,
/// `Send` service of `http::Request<B>` (by default `B` is
/// `Full<Bytes>`). Built by [`HttpClient::builder`] (over a registry's
/// instances) or [`HttpClient::over_hyper`] (one hyper client); the layers
/// and defaults are the gRPC preset's (see the [module docs](super)), with
/// http semantics: a `5xx` (and `429`) answer is a failure, only
/// idempotent methods are retried once a server answered, and a request body
/// is kept for a replay while a retry may need it.
///
/// Over a registry, a request's path and query are kept and its scheme and
/// authority become the chosen instance's (`http://{address}`): write
/// `http::Request::get("/orders/1")`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade::discovery::{InMemoryRegistry, Instance, Registry};
/// use palisade::preset::HttpClient;
/// use palisade_testkit::HttpServer;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main] async fn main() -> Result<(), palisade::BoxError> {
/// let registry = InMemoryRegistry::new();
/// let servers = HttpServer::start_many("orders", 3).await?;
/// let mut registrations = Vec::new();
/// for server in &servers {
///     registrations.push(registry.register(Instance::new("orders", server.addr())).await?);
/// }
///
/// let mut client = HttpClient::builder(registry, "orders").build()?;
/// servers[0].faults().set_status(Some(http::StatusCode::SERVICE_UNAVAILABLE));
/// for _ in 0..10 {
///     let request = http::Request::put("/orders/1").body(Full::new(Bytes::from("order")))?;
///     let response = client.ready().await?.call(request).await?;
///     assert_eq!(response.status(), 200);
///     assert_eq!(response.into_body().collect().await?.to_bytes(), "order");
/// }
/// # Ok(()) }
/// ```
pub struct HttpClient<B = Full<Bytes>> {
    inner: Inner<B>,
    health: HealthSource,
}

impl<B> Clone for HttpClient<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            health: self.health.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl<B: RequestBody> HttpClient<B> {
    /// The builder, for the instances of `service` in `registry`: the full
    /// stack with a balancer over the registry's instances and a breaker and
    /// an attempt timeout per instance.
    pub fn builder<R: Registry>(registry: R, service: impl Into<String>) -> HttpClientBuilder<B> {
        HttpClientBuilder::new(
            Target::Registry {
                registry: Arc::new(registry),
                service: service.into(),
            },
            None,
        )
    }

    /// The builder for one hyper client (no registry, no balancer): requests
    /// carry their whole URI, and the stack's one breaker and attempt timeout
    /// cover every call through it.
    pub fn over_hyper(client: HyperClient<B>) -> HttpClientBuilder<B> {
        HttpClientBuilder::new(Target::Hyper, Some(client))
    }
}

impl<B> HttpClient<B> {
    /// A snapshot of the client's health: every instance with its breaker
    /// state, in-flight calls and latest error (over a registry), the
    /// registry's state, the bulkhead's occupancy and the retry budget.
    pub fn health(&self) -> ClientHealth {
        self.health.snapshot()
    }
}

impl<B> Service<http::Request<B>> for HttpClient<B> {
    type Response = http::Response<HttpBody>;
    type Error = BoxError;
    type Future = HttpResponseFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: http::Request<B>) -> HttpResponseFuture {
        self.inner.call(request)
    }
}

/// What an [`HttpClient`]'s request body must be: an http body of [`Bytes`]
/// that the hyper client can send (`Full<Bytes>`, `Empty<Bytes>`, a boxed
/// body, ...).
pub trait RequestBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static {}

impl<B> RequestBody for B where B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static {}

enum Target {
    Registry {
        registry: Arc<dyn Registry>,
        service: String,
    },
    /// One hyper client: the builder's own.
    Hyper,
}

/// Builds an [`HttpClient`]. Every setting starts at the preset's default
/// (the seed system's numbers, see the [module docs](super)); each layer's
/// own builder is reachable through a closure, and [`build`](Self::build)
/// validates them all and returns the first [`ConfigError`], naming the
/// layer and the field.
pub struct HttpClientBuilder<B = Full<Bytes>> {
    target: Target,
    hyper: HyperClient<B>,
    breaker: CircuitBreakerConfigBuilder,
    attempt_timeout: TimeoutBuilder<Http>,
    total_timeout: TimeoutBuilder<Http>,
    retry: RetryLayerBuilder<Http>,
    bulkhead: BulkheadConfigBuilder,
    balancer: PeerDiscoveryBuilder<Joined<Http>>,
    listeners: Vec<Arc<dyn Listener>>,
    fallbacks: RouteTableBuilder<Answer<HttpBody>>,
}

impl<B> fmt::Debug for HttpClientBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Registry { service, .. } => format!("registry service {service:?}"),
            Target::Hyper => "one hyper client".to_owned(),
        };
        f.debug_struct("HttpClientBuilder")
            .field("target", &target)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .finish_non_exhaustive()
    }
}

impl<B: RequestBody> HttpClientBuilder<B> {
    fn new(target: Target, hyper: Option<HyperClient<B>>) -> Self {
        let hyper = hyper.unwrap_or_else(|| Client::builder(TokioExecutor::new()).build_http());
        Self {
            target,
            hyper,
            breaker: defaults::breaker(),
            attempt_timeout: TimeoutLayer::builder()
                .http()
                .kind(TimeoutKind::Attempt)
                .timeout(Some(defaults::ATTEMPT_TIMEOUT)),
            total_timeout: TimeoutLayer::builder().http().kind(TimeoutKind::Total).timeout(None),
            retry: RetryLayer::builder().http().retries(defaults::RETRIES),
            bulkhead: defaults::bulkhead(),
            // Above the per-instance breaker: joins its body (see `build`).
            balancer: PeerDiscoveryLayer::builder().protocol(Joined(Http::default())),
            listeners: Vec::new(),
            fallbacks: RouteTableBuilder::new(),
        }
    }

    /// The hyper client that reaches every instance (default: hyper-util's
    /// pooled client with its defaults, HTTP/1.1). Set HTTP/2 prior
    /// knowledge, pool limits or timeouts on a `hyper_util` client builder and
    /// pass the client here. Ignored by [`HttpClient::over_hyper`], which has
    /// its own.
    pub fn hyper_client(mut self, client: HyperClient<B>) -> Self {
        if matches!(self.target, Target::Registry { .. }) {
            self.hyper = client;
        }
        self
    }

    super::knobs::layer_knobs!(Http);

    /// Answers the failed calls to one `path` (exactly, as
    /// `http::Request::uri().path()` gives it) with `answer(error)`, when the
    /// whole stack gives up: an error (every instance open, no instance
    /// registered, the bulkhead full, the deadline passed, the last attempt's
    /// error) or a failed response (`5xx`, `429`). Calls to other paths pass
    /// through untouched; naming a path twice is a [`ConfigError`] at
    /// [`build`](Self::build). The answer carries a
    /// [`FromFallback`](palisade_fallback::FromFallback) extension.
    pub fn fallback<F>(mut self, path: impl Into<String>, answer: F) -> Self
    where
        F: Fn(&BoxError) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        self.fallbacks.push(
            path,
            Arc::new(move |error: &BoxError| {
                answer(error).map(|body| Full::new(body).map_err(|never| match never {}).boxed_unsync())
            }),
        );
        self
    }

    /// Validates every layer's settings and builds the stack (no connection
    /// is made until the first call). Over a registry, call it inside a
    /// tokio runtime: the registry's watch starts here.
    pub fn build(self) -> Result<HttpClient<B>, ConfigError> {
        let Self {
            target,
            hyper,
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
        let breaker = CircuitBreakerLayer::builder().config(breaker).http().build()?;
        let attempt_timeout = attempt_timeout.build()?;
        // One tracked body per call, as in the gRPC preset: the breaker wraps
        // the instance's body, the balancer and the bulkhead join it.
        let bulkhead = BulkheadLayer::builder()
            .config(bulkhead)
            .protocol(Joined(Http::default()))
            .build()?;
        let bulkhead_handle = bulkhead.handle();
        let retry = retry.build()?;
        let budget = {
            let retry = retry.clone();
            move || retry.budget().map(|b| b.available())
        };
        let upper = ServiceBuilder::new()
            .layer(total_timeout.build()?)
            .layer(retry)
            .layer(bulkhead);
        let fallback = super::fallback::by_route(fallbacks, Http::default(), &listeners)?;
        let mut client = match target {
            Target::Registry { registry, service } => {
                let make = MakeHttpPeer {
                    breaker,
                    attempt_timeout,
                    hyper,
                };
                let discover = RegistryDiscover::new(&*registry, &service, make);
                let balancer = balancer
                    .service_name(&service)
                    .registry_status(discover.status())
                    .build()?
                    .layer(discover);
                let report = balancer.clone();
                HttpClient {
                    health: HealthSource::balancer_with(move || report.health(), bulkhead_handle, budget),
                    inner: box_stack(upper.service(balancer)),
                }
            }
            Target::Hyper => {
                let handle: CircuitBreakerHandle = breaker.handle();
                HttpClient {
                    health: HealthSource::single_with(handle, bulkhead_handle, budget),
                    inner: box_stack(upper.service(breaker.layer(attempt_timeout.layer(hyper)))),
                }
            }
        };
        if let Some(add) = fallback {
            client.inner = add(client.inner);
        }
        Ok(client)
    }
}

fn box_stack<S, B, Res>(stack: S) -> Inner<B>
where
    S: Service<http::Request<B>, Response = http::Response<Res>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    Res: http_body::Body<Data = Bytes> + Send + 'static,
    Res::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        stack
            .map_response(|response: http::Response<Res>| response.map(|body| body.map_err(Into::into).boxed_unsync())),
    )
}

/// Makes one instance's service: the shared hyper client aimed at the
/// instance, behind its attempt timeout and its own breaker.
struct MakeHttpPeer<B> {
    breaker: CircuitBreakerLayer<Http>,
    attempt_timeout: TimeoutLayer<Http>,
    hyper: HyperClient<B>,
}

impl<B: RequestBody> MakePeer for MakeHttpPeer<B> {
    type Service = PeerStack<ToInstance<HyperClient<B>>, Http>;

    fn make_peer(&mut self, instance: &Instance) -> Result<Self::Service, BoxError> {
        let authority: Authority = instance.addr().parse()?;
        let client = ToInstance {
            client: self.hyper.clone(),
            authority,
        };
        Ok(self
            .breaker
            .for_peer(instance.id())
            .layer(self.attempt_timeout.layer(client)))
    }
}

/// Sends each request to one instance: its scheme and authority become
/// `http://{address}`, its path and query are kept.
#[derive(Clone, Debug)]
pub struct ToInstance<C> {
    client: C,
    authority: Authority,
}

type ToInstanceFuture<F, E, R> = Either<MapErr<F, fn(E) -> BoxError>, Ready<Result<R, BoxError>>>;

impl<C, X> Service<http::Request<X>> for ToInstance<C>
where
    C: Service<http::Request<X>>,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ToInstanceFuture<C::Future, C::Error, C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<X>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => {
                *request.uri_mut() = uri;
                Either::Left(
                    self.client
                        .call(request)
                        .map_err(Into::into as fn(C::Error) -> BoxError),
                )
            }
            Err(error) => Either::Right(ready(Err(error.into()))),
        }
    }
}
