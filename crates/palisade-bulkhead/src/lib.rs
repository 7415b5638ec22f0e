//! A bulkhead for tower services: bounded concurrency, a bounded FIFO queue,
//! and permits held until the response body ends.
//!
//! ```
//! use palisade_bulkhead::BulkheadLayer;
//! use palisade_bulkhead::error::{BulkheadFull, BulkheadRejection};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tokio::sync::oneshot;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // One slot, no queue: a second concurrent call is refused at once.
//! // `.plain()`: not an http service. Over http or gRPC, `.http()` or `.grpc()`
//! // keeps the permit until the response body ends; without a protocol choice
//! // the builder has no `build()`, so a permit cannot silently be released at
//! // the response head.
//! let layer = BulkheadLayer::builder().plain().max_concurrent(1).max_queue(0).build().unwrap();
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|rx: oneshot::Receiver<u32>| async move {
//!     Ok::<_, oneshot::error::RecvError>(rx.await?)
//! }));
//!
//! let (tx, rx) = oneshot::channel();
//! let first = tokio::spawn(svc.clone().oneshot(rx));
//! tokio::task::yield_now().await;
//! assert_eq!(handle.in_flight(), 1);
//!
//! let (_tx2, rx2) = oneshot::channel();
//! let err = svc.clone().oneshot(rx2).await.unwrap_err();
//! let full = err.downcast_ref::<BulkheadFull>().unwrap();
//! assert_eq!(full.reason(), BulkheadRejection::QueueFull);
//!
//! tx.send(7).unwrap();
//! assert_eq!(first.await.unwrap().unwrap(), 7);
//! assert_eq!(handle.in_flight(), 0); // the permit came back
//! # }
//! ```
//!
//! # Behaviour
//!
//! - At most `max_concurrent` calls (default 3) are in flight. Up to
//!   `max_queue` more (default 10) wait in arrival order; the next caller
//!   gets [`BulkheadFull`](error::BulkheadFull) with
//!   [`QueueFull`](error::BulkheadRejection::QueueFull) at once, naming the
//!   limit and the queue size. A queued caller that waits `max_wait` (unbounded
//!   unless set) gets [`WaitTimedOut`](error::BulkheadRejection::WaitTimedOut).
//!   `max_queue(0)` rejects as soon as every slot is busy.
//! - **A queued call never waits past its deadline.** With a protocol that
//!   carries per-call options ([`Http`](palisade_core::protocol::Http),
//!   [`Grpc`](palisade_core::protocol::Grpc)), a queued call whose
//!   [deadline](palisade_core::options::CallOptions::deadline) comes before
//!   `max_wait` runs out leaves the queue at the deadline with
//!   [`DeadlineExceeded`](palisade_core::error::DeadlineExceeded) (not
//!   `BulkheadFull`: it was the caller's time that ran out, and the built-in
//!   classifiers count that as nobody's failure), and its place goes to the
//!   next caller; it never reaches the inner service. A call admitted at once
//!   is not timed by the bulkhead (the timeout layers below bound it), and a
//!   queued call with neither a deadline nor `max_wait` creates no timer.
//! - **The permit lives until the response is really finished.** With
//!   [`Http`](palisade_core::protocol::Http) or
//!   [`Grpc`](palisade_core::protocol::Grpc) (see
//!   [`BulkheadLayer::protocol`]), the permit rides inside the response body
//!   (a [`palisade_body::TrackedBody`]) and comes back at end of stream, on a
//!   body error, or when the body is dropped half-read. tower's
//!   `ConcurrencyLimit` gives it back when the head arrives, which lets
//!   streamed responses exceed the limit. With the default
//!   [`Plain`](palisade_core::protocol::Plain) protocol it comes back when the
//!   response future completes.
//! - A caller that drops its future while queued leaves the queue at once and
//!   takes no slot. A permit is returned on every path: success, error,
//!   cancellation, a dropped body, and a panicking inner service (the permit
//!   is dropped while unwinding).
//! - **Shared state**: clones of a [`Bulkhead`], and every service one
//!   [`BulkheadLayer`] value wraps, share one bulkhead. (tower's
//!   `ConcurrencyLimitLayer` creates a semaphore per wrapped service.) For one
//!   bulkhead per route or method, use [`KeyedBulkheadLayer`].
//! - Live limit changes through a [`BulkheadHandle`]: lowering the limit
//!   revokes no permit, raising it admits queued callers at once.
//! - Adaptive limits ([`AimdConfig`], [`GradientConfig`]) move the limit
//!   between a floor and a ceiling from each call's outcome and its latency
//!   to the response head; see [`policy`]. A response future dropped while
//!   its call runs counts as the protocol's
//!   [`AbandonPolicy`](palisade_core::classify::AbandonPolicy) says
//!   (ignored by default).
//! - A response future polled after it completed fails with
//!   [`PolledAfterCompletion`](palisade_core::error::PolledAfterCompletion).
//! - Events: a rejection and a limit change reach `tracing` and the
//!   configured [`Listener`](palisade_core::event::Listener)s (layer
//!   `bulkhead`, events `rejected` and `limit_changed`). With the `metrics`
//!   feature: gauges `palisade_bulkhead_in_flight`, `palisade_bulkhead_queued`,
//!   `palisade_bulkhead_limit` and the counter
//!   `palisade_bulkhead_rejected_total`, labelled by `key`.
//!
//! # The readiness contract
//!
//! [`poll_ready`](tower_service::Service::poll_ready) only forwards the inner
//! service's readiness: it never waits for a slot and never fails because the
//! bulkhead is full. Admission happens in `call`:
//!
//! 1. a free slot (one atomic compare-and-swap, nobody queued): the inner
//!    service is called at once, exactly as a plain service would be;
//! 2. every slot busy, room in the queue: the response future waits its turn;
//! 3. queue full: the response future fails at once with `BulkheadFull`.
//!
//! So the layer works in a plain `ServiceBuilder` without `LoadShed` or
//! `Buffer`, a refused caller hears so promptly, and a balancer never drops the
//! service for being busy.
//!
//! In case 2 the call happens later, but tower requires `call` to follow a
//! ready `poll_ready`. The bulkhead therefore moves the *ready* inner service
//! into the response future and leaves a clone behind (tower's own pattern:
//! `mem::replace(&mut self.inner, self.inner.clone())`); the clone starts
//! unready and the caller polls it before the next call, as always. When the
//! queue reaches the future, it drives the moved service's `poll_ready` (at
//! once ready) and `call`. Hence **the inner service must be `Clone`** — tonic's
//! `Channel` and hyper's clients are, and cloning them is cheap. The clone is
//! made only on the queued path; with a free slot nothing is cloned and
//! nothing is allocated. While a caller is queued, the moved service keeps
//! whatever its readiness reserved (for a tonic `Channel`, one slot of its
//! request buffer); at most `max_queue` such reservations exist at once.
//!
//! A queued caller that is admitted holds its permit while it drives the
//! moved service's `poll_ready`, which for a service that was ready is
//! immediate.
//!
//! # Keyed partitions
//!
//! [`KeyedBulkheadLayer`] keeps one bulkhead per key — by default the route
//! ([`Inspect::route`](palisade_core::protocol::Inspect::route): http path or
//! gRPC method), or any key a closure picks from the request — with per-key
//! limits ([`BulkheadConfigBuilder::key_limit`]), at most `max_keys`
//! partitions, and idle eviction. See [`keyed`].
//!
//! # Implementation notes
//!
//! The permits come from a small FIFO pool of the crate's own rather than
//! `tokio::sync::Semaphore`: tokio's semaphore is fair but has no bound on
//! its queue, and lowering its capacity only takes back permits that are free
//! at that moment, so "lower the limit without revoking held permits" would
//! need side counters racing with the waiters tokio already chose. The pool
//! keeps the three numbers together: with nobody queued, admission is one
//! compare-and-swap on the in-flight counter (no lock, no allocation); the
//! queue is a short `parking_lot` critical section over a slab of reusable
//! waiter slots, served strictly in arrival order; a cancelled waiter leaves
//! at once and a permit granted to a waiter that vanished at the same moment
//! is passed on, never leaked. The queued path allocates one box per queued
//! call (its state is kept out of line so that the admitted-at-once future
//! stays small).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod error;
pub mod future;
pub mod keyed;
pub mod layer;
pub mod policy;
mod pool;
pub mod service;
mod shared;

pub use config::{Adaptive, BulkheadConfig, BulkheadConfigBuilder};
pub use future::ResponseFuture;
pub use keyed::{KeyedBulkhead, KeyedHandle};
pub use layer::{BulkheadLayer, BulkheadLayerBuilder, KeyedBulkheadLayer, KeyedBulkheadLayerBuilder};
pub use palisade_core::keyed::{ByRoute, KeyFn, KeyOf};
pub use policy::{AimdConfig, GradientConfig};
pub use service::Bulkhead;
pub use shared::{BulkheadHandle, BulkheadPermit};
