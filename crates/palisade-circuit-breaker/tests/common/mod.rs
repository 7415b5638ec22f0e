//! Test support: a scripted inner service and a paused clock.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitOpen};
use palisade_core::error::BoxError;
use palisade_core::event::{Event, EventKind};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// What the inner service does with one request.
#[derive(Debug)]
pub enum Op {
    Ok,
    Fail,
    /// Business error (a closure classifier may ignore it).
    NotFound,
    /// Completes when the sender says: `true` success, `false` failure.
    Wait(oneshot::Receiver<bool>),
    Hang,
    Panic,
}

#[derive(Debug)]
pub struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not found")
    }
}

impl std::error::Error for NotFound {}

pub fn inner() -> impl Service<Op, Response = &'static str, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|op: Op| async move {
        match op {
            Op::Ok => Ok("ok"),
            Op::Fail => Err::<&'static str, BoxError>("boom".into()),
            Op::NotFound => Err(NotFound.into()),
            Op::Wait(rx) => match rx.await {
                Ok(true) => Ok("ok"),
                _ => Err("late boom".into()),
            },
            Op::Hang => std::future::pending().await,
            Op::Panic => panic!("inner service panicked"),
        }
    })
}

pub async fn call<S>(svc: &mut S, op: Op) -> Result<&'static str, BoxError>
where
    S: Service<Op, Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(op).await
}

pub fn open_err(result: Result<&'static str, BoxError>) -> CircuitOpen {
    match result {
        Err(e) => match e.downcast::<CircuitOpen>() {
            Ok(open) => *open,
            Err(other) => panic!("expected CircuitOpen, got {other}"),
        },
        Ok(r) => panic!("expected CircuitOpen, got Ok({r})"),
    }
}

pub fn is_open(result: &Result<&'static str, BoxError>) -> bool {
    matches!(result, Err(e) if e.is::<CircuitOpen>())
}

/// A paused clock counted from the test's start.
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Advances paused time to `ms` after the start.
    pub async fn at_ms(&self, ms: u64) {
        let target = self.0 + Duration::from_millis(ms);
        let now = Instant::now();
        assert!(target >= now, "time goes forward only");
        tokio::time::advance(target - now).await;
    }

    pub fn elapsed_ms(&self) -> u128 {
        Instant::now().duration_since(self.0).as_millis()
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records every state change as (from, to, reason, cooldown).
#[derive(Default, Clone)]
pub struct Transitions(pub Arc<Mutex<Vec<Change>>>);

/// (from, to, reason, cooldown)
pub type Change = (&'static str, &'static str, &'static str, Option<Duration>);

impl Transitions {
    pub fn config(&self, builder: palisade_circuit_breaker::CircuitBreakerConfigBuilder) -> CircuitBreakerConfig {
        let log = self.0.clone();
        builder
            .listener(Arc::new(move |e: &Event<'_>| {
                if let EventKind::StateChange {
                    from,
                    to,
                    reason,
                    cooldown,
                } = e.kind
                {
                    log.lock().push((from, to, reason, cooldown));
                }
            }))
            .build()
            .unwrap()
    }

    pub fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.0.lock())
    }
}
