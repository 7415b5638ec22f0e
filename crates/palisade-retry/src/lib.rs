//! A tower retry layer that keeps a client's calls succeeding while single
//! peers fail: backoff with jitter, a retry budget, peer switching,
//! replayable http request bodies and server pushback.
//!
//! # Example
//!
//! A service that fails twice, then answers. With two retries and a fixed
//! backoff the caller sees the answer; the error of a call that runs out of
//! attempts would be the last attempt's, untouched.
//!
//! ```
//! use palisade_core::backoff::{Backoff, Jitter};
//! use palisade_core::error::BoxError;
//! use palisade_retry::RetryLayer;
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), BoxError> {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let flaky = service_fn(move |name: &'static str| {
//!     let n = counter.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         if n < 2 {
//!             // Connection errors are retried by default.
//!             Err::<String, BoxError>(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
//!         } else {
//!             Ok(format!("hello {name}"))
//!         }
//!     }
//! });
//!
//! let layer = RetryLayer::builder()
//!     .plain() // a non-http service; `.grpc().tonic_body()` over a tonic `Channel`, `.http()` over hyper
//!     .retries(2)
//!     .backoff(Backoff::constant(Duration::from_millis(50)).jitter(Jitter::None).build()?)
//!     .build()?;
//! let mut client = ServiceBuilder::new().layer(layer).service(flaky);
//!
//! let reply = client.ready().await?.call("palisade").await?;
//! assert_eq!(reply, "hello palisade");
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! # Ok(()) }
//! ```
//!
//! # Two request paths
//!
//! The layer's protocol (its `P` type parameter) chooses how a request is
//! sent again:
//!
//! - [`RetryLayer::new`] ([`Plain`](palisade_core::protocol::Plain)): any
//!   `Req: Clone`. Each attempt gets a clone, as with `tower::retry`; nothing
//!   is buffered. Errors are retried by the default rules; responses are
//!   never retried (use a [predicate](RetryLayerBuilder::or_retry_if) for that).
//! - [`RetryLayer::http`] ([`Http`](palisade_core::protocol::Http)) and
//!   [`RetryLayer::grpc`] ([`Grpc`](palisade_core::protocol::Grpc)): an
//!   `http::Request<B>` with any `B: http_body::Body + Unpin` (its error
//!   `Into<BoxError>`), no `Clone` needed. The inner service receives `http::Request<ReplayBody<B>>`: the
//!   body is buffered while the first attempt sends it (up to
//!   [`replay_cap`](RetryLayerBuilder::replay_cap), 64 KiB by default) and
//!   replayed for later attempts (see [`replay`]). A body that outgrows the
//!   cap is sent once and the call is not retried; a replay made before the
//!   body outgrew the cap (or before its read failed) yields a
//!   [`BodyNotReplayable`] error rather than a cut-short body. Once no replay
//!   can happen any more (the response headers arrived, the last attempt is
//!   sent, the budget is spent) the body stops buffering (see
//!   [`replay`]). Per-call options
//!   ([`CallOptions`](palisade_core::options::CallOptions) in the request's
//!   extensions), per-route overrides and status-based rules work on this path.
//!   The call's response is `http::Response<RetryBody<RB>>`: the inner
//!   response with its body passed through untouched in a [`RetryBody`],
//!   which is empty only when a retried response's kept head is returned
//!   (see [What a retry holds](#what-a-retry-holds)).
//!
//! A tonic `Channel` takes `http::Request<tonic::body::Body>`: with the
//! `tonic` feature, `RetryLayerBuilder::tonic_body` (or
//! `RetryLayer::tonic` for the defaults) makes the layer hand each attempt
//! over in that type, so nothing goes between the layer and the channel
//! (see [`AttemptBody`]; tonic's body boxes the replayable body once per
//! attempt, the only cost). A tonic generated client takes the
//! layer's `RetryBody` responses as they are (it accepts any body whose data
//! is `Bytes` and whose error converts into a boxed error): tonic users see
//! no difference.
//!
//! In both paths the inner service must be `Clone` (tower's pattern: the
//! response future drives the later attempts on the service that `call` was
//! made on, a clone stays behind). The protocol and the predicate must be
//! `Clone` too: each call takes a copy, as `tower::retry` copies its policy.
//! The built-in ones are zero-sized or `Copy`; a closure predicate is `Clone`
//! when what it captures is (keep large captured state behind an `Arc`).
//!
//! # Cost
//!
//! What the layer itself adds to a call whose first attempt needs no retry:
//! no allocation, and no timer in the response future (on the http paths the
//! response's body is moved into a [`RetryBody`], a pass-through). The backoff sleep, the
//! next attempt and the result that stands should it not be sent live in one
//! allocation made at the call's first retry and reused by its later ones.
//! With no budget, throttle or listener the layer touches no atomic; with the
//! default budget it makes one deposit and holds one reference count on the
//! shared budget. Keeping the request for later attempts costs what the
//! protocol needs: one `Req::clone` for [`Plain`](palisade_core::protocol::Plain);
//! for [`Http`](palisade_core::protocol::Http) and
//! [`Grpc`](palisade_core::protocol::Grpc), a copy of the request head, the
//! shared replay buffer and the [attempt record](palisade_core::peer::AttemptRecord)
//! (allocations, made only when the call may retry).
//!
//! # What a retry holds
//!
//! Nothing of the attempt it retries beyond what the call's answer needs.
//! Once a retry of a *response* is decided (a 503, a trailers-only
//! `UNAVAILABLE`), the layer drops that response's body before the backoff
//! sleep and keeps only its head (`http::response::Parts`): whatever the
//! layers below tied to the body is settled at once, not after the backoff.
//! A bulkhead's permit comes back (another call may use it meanwhile), a
//! balancer's in-flight count drops, a breaker counts the failure (so other
//! callers stop going to that peer). Should the next attempt then not be
//! sent (the deadline passes while the service is not ready, the request
//! body can no longer be replayed), the call returns the kept head with an
//! empty [`RetryBody`]. On the [`Plain`](palisade_core::protocol::Plain)
//! path a response has no body and is kept as it is.
//!
//! # What is retried
//!
//! See [`policy`] for the table. In short: connection errors,
//! [`CircuitOpen`](error::CircuitOpen), [`NoAvailablePeers`](error::NoAvailablePeers)
//! (after the backoff), an attempt's [`TimedOut`](error::TimedOut), errors
//! marked [`Retryable::yes`](error::Retryable::yes), HTTP 502/503/504 for
//! idempotent requests and gRPC `UNAVAILABLE`; never a
//! [`DeadlineExceeded`](error::DeadlineExceeded) or a
//! [`Retryable::no`](error::Retryable::no). Once response headers arrived the
//! call is committed: an error later in the body, or a gRPC status that comes
//! only in the trailers, is not retried. [`RetryLayerBuilder::predicate`]
//! replaces these rules; [`RetryLayerBuilder::or_retry_if`] extends them.
//!
//! # How many, and when
//!
//! - `retries` (default 1) after the first attempt; a call's
//!   [`CallOptions::set_retries`](palisade_core::options::CallOptions::set_retries)
//!   and a [route override](RouteRetry) win; 0 disables.
//! - Between attempts the [backoff](palisade_core::backoff) (default:
//!   exponential from 100 ms, factor 2, cap 2 s, full jitter). A server's
//!   `Retry-After` or `grpc-retry-pushback-ms` sets the next delay exactly
//!   (see [`pushback`]); a negative or unparseable pushback stops the retries,
//!   one beyond [`max_pushback`](RetryLayerBuilder::max_pushback) skips them.
//! - The [retry budget](budget::RetryBudget), on by default: retries add at
//!   most 20 % to the request rate of the last 10 s, plus a floor of 10 per
//!   second. A spent budget returns the error at once (event
//!   `BudgetExhausted`). Deposits cost one atomic increment and are credited
//!   to the time window in batches, so the request path reads no clock. A
//!   gRPC-style [throttle](budget::Throttle) is
//!   available too. Both are shared by every clone of the services one
//!   [`RetryLayer`] value builds.
//! - An open breaker: a [`CircuitOpen`](error::CircuitOpen) says when the
//!   breaker takes calls again (`retry_in`). When nothing below switched
//!   peers for the refused attempt (no balancer recorded a new peer in the
//!   [attempt record](palisade_core::peer::AttemptRecord): a single
//!   channel, or a balancer that had no other peer), it is honoured like a
//!   server's pushback: the retry waits exactly `retry_in`, and is not made
//!   when that is longer than `max_pushback` or than the time left before
//!   the deadline (the call then returns the `CircuitOpen` at once, without
//!   touching the budget). When a balancer recorded a new peer, the retry
//!   follows the ordinary backoff and goes to another peer.
//! - Deadline: when the call carries a deadline
//!   ([`CallOptions::set_deadline`](palisade_core::options::CallOptions::set_deadline);
//!   a total timeout layer above writes its own end there), a call whose
//!   deadline has already passed fails with
//!   [`DeadlineExceeded::before_send`](error::DeadlineExceeded::before_send)
//!   without calling the inner service and without touching the budget; no
//!   backoff sleep and no attempt starts that the deadline would cut (a
//!   sleep wakes on tokio's next millisecond, so a backoff that would end
//!   within a millisecond of the deadline is not started either: the call
//!   returns the last attempt's result at once instead of at its deadline);
//!   and a service that stays unready past the deadline does not hold the
//!   call: the call returns the last attempt's result instead.
//! - Jitter: each call draws its delays from its own generator, seeded from
//!   the thread's, so calls do not retry in step. A test that must replay a
//!   jittered run seeds the layer ([`RetryLayerBuilder::jitter_seed`]).
//!
//! # Time left on the wire
//!
//! On the [`Grpc`](palisade_core::protocol::Grpc) path, every attempt of a
//! call with a deadline, the first and each retry, carries `grpc-timeout`
//! with the time left at the moment that attempt is sent, rounded down (the
//! wire format of [`palisade_core::grpc_timeout`]); a shorter value already
//! on the request (tonic's `Request::set_timeout`) is kept. So a retry sent
//! after a backoff never tells the server it has the first attempt's time,
//! whatever layers are or are not below the retry. A call without a
//! deadline gets no header from this layer (and costs nothing for it).
//!
//! # Peer switching
//!
//! On the http path the layer puts an empty
//! [`AttemptRecord`](palisade_core::peer::AttemptRecord) in the request's
//! extensions before the first attempt and carries it to every later one; a
//! balancer below records the peer of each attempt in it and avoids those
//! peers on a retry. The record is a shared handle and each attempt's copy of
//! the request holds a clone of it, so a peer recorded by an attempt that then
//! failed with an error (a refused connection) is avoided too. The layer also
//! learns an attempt's peer from a [`PeerId`](palisade_core::peer::PeerId) in
//! the response's extensions or from a
//! [`CircuitOpen`](error::CircuitOpen) error naming its peer, and adds it to
//! the record it carries.
//!
//! # Observability
//!
//! Each retry emits [`EventKind::Retry`](palisade_core::event::EventKind::Retry)
//! (attempt, delay, reason) and a spent budget
//! [`EventKind::BudgetExhausted`](palisade_core::event::EventKind::BudgetExhausted),
//! to `tracing` (target `palisade`, `layer = "retry"`) and to listeners. A call
//! that took more than one attempt logs its attempt count; on the http path
//! the final response of such a call carries [`Attempts`] in its extensions
//! (a response without it took one attempt: the success path does not touch
//! the extensions). With the
//! `metrics` feature: counters `palisade_retry_retries_total` and
//! `palisade_retry_budget_exhausted_total`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod body;
pub mod budget;
mod config;
pub mod error;
mod future;
mod handoff;
mod layer;
pub mod policy;
pub mod pushback;
pub mod replay;
mod service;

pub use body::RetryBody;
pub use config::{MAX_REPLAY_CAP, MAX_RETRIES, RetryLayerBuilder, RouteRetry, default_backoff};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
#[cfg(feature = "tonic")]
pub use layer::TonicRetryLayer;
pub use policy::{Attempts, DefaultPredicate, Extend, Replace};
#[cfg(feature = "tonic")]
pub use replay::TonicBody;
pub use replay::{AttemptBody, BodyNotReplayable, KeepReplayBody, ReplayBody};
pub use service::Retry;
