//! Palisade keeps a service client working while the peers behind it fail,
//! slow down or vanish. This crate is the facade: it re-exports every
//! Palisade layer behind a feature of the same name (all on by default) and
//! documents how they stack. With the `tonic` feature, `preset` builds the
//! whole stack in one line: `GrpcClient::builder(registry, "echo").build()?`.
//! [`ServiceBuilderExt`] adds each layer to a `tower::ServiceBuilder` by name
//! (`.circuit_breaker(layer)`, `.bulkhead(layer)`, `.palisade_retry(layer)`, ...).
//!
//! # The preset: a client over a registry's instances
//!
//! With the `tonic` feature: three instances of a service in a registry
//! (here the in-memory one; etcd, DNS and static lists implement the same
//! trait), a breaker per instance inside the balancer, one retry to another
//! instance, attempt timeouts, a bulkhead. One instance fails and one is
//! deregistered; every call still succeeds, and the health view says why.
#![cfg_attr(
    feature = "tonic",
    doc = r#"
```
use palisade::discovery::{InMemoryRegistry, Instance, Registry};
use palisade::preset::GrpcClient;
use palisade_testkit::{EchoServer, echo::{EchoRequest, echo_client::EchoClient}};

# #[tokio::main] async fn main() -> Result<(), palisade::BoxError> {
let registry = InMemoryRegistry::new();
let servers = EchoServer::start_many("echo", 3).await?;
let mut registrations = Vec::new();
for server in &servers {
    registrations.push(registry.register(Instance::new("echo", server.addr())).await?);
}
let client = GrpcClient::builder(registry, "echo").build()?;
let mut echo = EchoClient::new(client.clone()); // a tonic generated client, as it is

servers[0].faults().set_status(Some(tonic::Code::Unavailable)); // echo-0 fails
drop(registrations.pop()); // echo-2 is deregistered
for _ in 0..20 {
    let request = EchoRequest { message: "hi".into(), payload: Default::default() };
    echo.unary(request).await?; // retried on another instance when echo-0 fails
}
println!("{}", client.health().peers.expect("a registry client")); // echo-0 open, and why
# Ok(()) }
```
"#
)]
//!
//! # One layer, or a stack by hand
//!
//! Every layer works alone, and the stack below is the preset's, built by
//! hand; the next section says why the layers go in this order.
//!
//! ```
//! use std::time::Duration;
//! use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//! use palisade::bulkhead::BulkheadLayer;
//! use palisade::timeout::TimeoutLayer;
//! use palisade::BoxError;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::builder().plain().failure_threshold(2).build()?;
//! let state = breaker.handle();
//! let mut client = ServiceBuilder::new()
//!     .layer(BulkheadLayer::builder().plain().max_concurrent(8).build()?)
//!     .layer(breaker)
//!     .layer(TimeoutLayer::new(Duration::from_millis(200)))
//!     .service_fn(|slow: bool| async move {
//!         if slow {
//!             tokio::time::sleep(Duration::from_secs(5)).await;
//!         }
//!         Ok::<_, BoxError>("pong")
//!     });
//!
//! assert_eq!(client.ready().await?.call(false).await?, "pong");
//! // Two slow calls time out; timeouts count as failures and trip the breaker.
//! for _ in 0..2 {
//!     let err = client.ready().await?.call(true).await.unwrap_err();
//!     assert!(err.is::<palisade::core::error::TimedOut>());
//! }
//! assert_eq!(state.state(), CircuitState::Open);
//! let err = client.ready().await?.call(false).await.unwrap_err();
//! assert!(err.is::<palisade::core::error::CircuitOpen>());
//! # Ok(()) }
//! ```
//!
//! # The client stack
//!
//! Outermost first:
//!
//! ```text
//! FallbackLayer          turn a final failure into a response (optional)
//! TimeoutLayer (total)   overall call deadline, covers all attempts and backoff
//! RetryLayer             attempts, backoff, budget, peer switching
//! BulkheadLayer          bounded concurrency + bounded queue for this client
//! PeerDiscoveryLayer     pick an available peer from the registry's set
//!   per peer:  CircuitBreakerLayer -> TimeoutLayer (per attempt) -> tonic/hyper connection
//! ```
//!
//! Why this order:
//!
//! - The **breaker sits per peer**, so one bad instance is excluded while the
//!   others serve; the balancer asks each peer's breaker whether it may be
//!   picked ([`core::peer::CheckAvailability`]) instead of calling it.
//! - The breaker sits **outside the per-attempt timeout**, so a timeout counts
//!   as a failure of that peer.
//! - **Retry sits above the balancer**, so a retry can go to another peer: the
//!   balancer records each attempt's peer in the call's
//!   [`AttemptRecord`](core::peer::AttemptRecord) and avoids it next time.
//! - The **bulkhead sits above the balancer and below retry**: it bounds the
//!   calls this client has in flight across all peers, and each retry takes
//!   its own permit, so retries cannot exceed the bound.
//! - The **total timeout sits above retry**, so it covers every attempt and
//!   every backoff sleep; its deadline travels in the call's options and
//!   bounds every timeout below it.
//! - **Fallback sits outside everything**, including "no available peers".
//!
//! Over a single tonic `Channel` or hyper client (no discovery), drop the
//! balancer line: the per-peer layers then wrap the one connection. The
//! [`stack`] module names these stacks (`GrpcStack` over a `Channel`), for a
//! struct field or a function signature without boxing.
//!
//! # Protocols
//!
//! Every layer is generic over a protocol from [`core::protocol`]:
//! [`Plain`](core::protocol::Plain) works with any service;
//! choose [`Http`](core::protocol::Http) for a hyper client and
//! [`Grpc`](core::protocol::Grpc) for a tonic `Channel`, so that per-call
//! options, per-route settings and end-of-stream verdicts (a gRPC status in
//! the trailers) work. Every layer builder (`XLayer::builder()`) starts on
//! [`Unchosen`](core::protocol::Unchosen) and has no `build()` until
//! `.grpc()`, `.http()`, `.plain()` or `.protocol(p)` is called: a layer left
//! on `Plain` over an http service would silently ignore gRPC trailers and
//! per-call options (and a bulkhead would release its permit at the response
//! head), so forgetting the choice does not compile. The tower-style
//! shortcuts (`TimeoutLayer::new`, `RetryLayer::new`, `FallbackLayer::value`,
//! `XLayer::new(config)`) are `Plain`, for non-http services.
//!
//! # Features
//!
//! | feature | re-exports |
//! |---|---|
//! | `circuit-breaker` (default) | [`circuit_breaker`] |
//! | `timeout` (default) | [`timeout`] |
//! | `bulkhead` (default) | [`bulkhead`] |
//! | `retry` (default) | [`retry`] |
//! | `fallback` (default) | [`fallback`] |
//! | `discovery` (default) | [`discovery`] |
//! | `etcd` | the etcd registry of [`discovery`] |
//! | `tonic` | the preset client `preset::GrpcClient` (the whole stack in one builder, over a registry or one channel); per-call options on `tonic::Request`; every Palisade error reaches a tonic caller with its gRPC code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`), the typed error behind it ([`core::error::find_error`]) |
//! | `hyper` | the preset client over http, `preset::HttpClient` (the whole stack in one builder over a registry's instances or one hyper client, http semantics, request bodies replayed on retry) |
//! | `serde` | the preset's settings from a configuration file (`preset::PresetConfig`, `preset::ClientsConfig`): TOML, YAML, JSON or any serde format, durations as `"250ms"`, errors that name the field's path |
//! | `metrics` | counters and gauges of every enabled layer through the `metrics` facade |

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub use palisade_body as body;
pub use palisade_core as core;
pub use palisade_core::BoxError;

#[cfg(feature = "bulkhead")]
pub use palisade_bulkhead as bulkhead;
#[cfg(feature = "circuit-breaker")]
pub use palisade_circuit_breaker as circuit_breaker;
#[cfg(feature = "discovery")]
pub use palisade_discovery as discovery;
#[cfg(feature = "fallback")]
pub use palisade_fallback as fallback;
#[cfg(feature = "retry")]
pub use palisade_retry as retry;
#[cfg(feature = "timeout")]
pub use palisade_timeout as timeout;

mod builder_ext;
pub use builder_ext::ServiceBuilderExt;

#[cfg(any(feature = "tonic", feature = "hyper"))]
pub mod preset;
#[cfg(all(
    feature = "circuit-breaker",
    feature = "timeout",
    feature = "bulkhead",
    feature = "retry"
))]
pub mod stack;
