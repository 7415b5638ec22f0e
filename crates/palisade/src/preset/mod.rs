//! The preset client: the whole stack of the [crate docs](crate#the-client-stack)
//! in one builder, the way the seed system's `call(service, data, {timeout,
//! retries})` is one line.
//!
//! ```text
//! FallbackLayer               optional, per method: a typed reply when the stack gives up
//! TimeoutLayer (total)        off by default; the caller's deadline still bounds the call
//! RetryLayer                  1 retry, to another instance, under the default budget
//! BulkheadLayer               1,024 calls in flight, no queue
//! PeerDiscoveryLayer          the registry's instances (all-open policy: reset)
//!   per instance: CircuitBreakerLayer (seed numbers) -> TimeoutLayer (30 s per attempt) -> tonic Channel
//! ```
//!
//! | setting | default | builder |
//! |---|---|---|
//! | breaker per instance | 3 consecutive failures within 60 s; cooldown 10 s doubling to 120 s; 1 probe; 2 successes to close | [`breaker`](GrpcClientBuilder::breaker) |
//! | retries | 1, to another instance, default backoff and budget | [`retries`](GrpcClientBuilder::retries), [`retry`](GrpcClientBuilder::retry) |
//! | per-attempt timeout | 30 s | [`attempt_timeout`](GrpcClientBuilder::attempt_timeout), [`attempt_timeout_layer`](GrpcClientBuilder::attempt_timeout_layer) |
//! | total timeout | none (the caller's deadline bounds the call) | [`total_timeout`](GrpcClientBuilder::total_timeout), [`total_timeout_layer`](GrpcClientBuilder::total_timeout_layer) |
//! | bulkhead | 1,024 in flight, no queue | [`bulkhead`](GrpcClientBuilder::bulkhead) |
//! | balancer | p2c over available instances, ejection cap 10 %, reset when all are open | [`balancer`](GrpcClientBuilder::balancer) |
//! | fallback | none; per gRPC method a typed reply or a `Status` (per path over http) when the stack gives up | [`fallback`](GrpcClientBuilder::fallback) |
//! | connecting an instance | a lazy `Channel` to `http://{address}` | [`connect`](GrpcClientBuilder::connect) |
//!
//! Why the bulkhead does not use the per-action bulkhead's 3 / 10: the
//! preset's bulkhead bounds one whole client, all methods and all
//! instances, so a small fixed cap would throttle a healthy client; 1,024
//! without a queue only bites when calls pile up behind a fleet that has
//! stopped answering. Set a smaller one (or an adaptive limit) with
//! [`bulkhead`](GrpcClientBuilder::bulkhead) where shedding matters more.
//!
//! The protocol (gRPC) is chosen once, for every layer of the stack. A
//! call's response carries one tracked body: the breaker's, which the
//! balancer and the bulkhead join ([`Joined`](palisade_body::Joined)) and
//! the timeouts (no body limits) pass through, so its end is detected once
//! and settles every layer's guard.
//!
//! ```
//! use palisade::discovery::{InMemoryRegistry, Instance, Registry};
//! use palisade::preset::GrpcClient;
//! use palisade_testkit::{EchoServer, echo::{EchoRequest, echo_client::EchoClient}};
//!
//! # #[tokio::main] async fn main() -> Result<(), palisade::BoxError> {
//! let registry = InMemoryRegistry::new();
//! let servers = EchoServer::start_many("echo", 3).await?;
//! let mut registrations = Vec::new();
//! for server in &servers {
//!     registrations.push(registry.register(Instance::new("echo", server.addr())).await?);
//! }
//!
//! let mut echo = EchoClient::new(GrpcClient::builder(registry, "echo").build()?);
//! servers[0].faults().set_status(Some(tonic::Code::Unavailable));
//! for _ in 0..10 {
//!     let request = EchoRequest { message: "hi".into(), payload: Default::default() };
//!     assert_ne!(echo.unary(request).await?.into_inner().server, "echo-0");
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "serde")]
pub mod config;
mod defaults;
mod fallback;
#[cfg(feature = "tonic")]
mod grpc;
mod health;
#[cfg(feature = "hyper")]
mod http;
mod knobs;
#[cfg(feature = "tonic")]
mod set;

#[cfg(feature = "serde")]
pub use config::{ClientsConfig, ConfigFileError, PresetConfig};
pub use defaults::{ATTEMPT_TIMEOUT, BULKHEAD_MAX_CONCURRENT, RETRIES};
#[cfg(feature = "tonic")]
pub use grpc::{Connect, GrpcClient, GrpcClientBuilder, ResponseFuture, connect_lazy};
pub use health::ClientHealth;
#[cfg(feature = "hyper")]
pub use http::{HttpBody, HttpClient, HttpClientBuilder, HttpResponseFuture, HyperClient, RequestBody, ToInstance};
#[cfg(feature = "tonic")]
pub use set::{GrpcClients, GrpcClientsBuilder};
