//! Keyed breakers over a non-http service, keyed by a closure.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::*;
use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitState, KeyedCircuitBreakerLayer};
use palisade_core::event::{Event, EventKind};
use parking_lot::Mutex;
use tower::{Layer, Service};

type Seen = Arc<Mutex<Vec<(Option<String>, &'static str)>>>;

#[tokio::test(start_paused = true)]
async fn a_closure_keys_breakers_and_events_name_the_key() {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(2)
        .listener(Arc::new(move |e: &Event<'_>| {
            if let EventKind::StateChange { to, .. } = e.kind {
                log.lock().push((e.key.map(str::to_owned), to));
            }
        }));
    let layer = KeyedCircuitBreakerLayer::builder()
        .plain()
        .config(config)
        .build()
        .unwrap()
        .key_fn(|op: &Op| match op {
            Op::Fail => Some("failing".to_owned().into()),
            Op::Ok => Some("healthy".to_owned().into()),
            _ => None,
        });
    let handle = layer.handle();
    let mut svc = layer.layer(inner());
    for _ in 0..2 {
        let _ = call(&mut svc, Op::Fail).await;
    }
    assert!(is_open(&call(&mut svc, Op::Fail).await));
    assert_eq!(call(&mut svc, Op::Ok).await.unwrap(), "ok");
    assert_eq!(handle.get("failing").unwrap().state(), CircuitState::Open);
    assert_eq!(handle.get("healthy").unwrap().state(), CircuitState::Closed);
    // Unkeyed requests share the unkeyed breaker.
    assert!(call(&mut svc, Op::NotFound).await.is_err());
    assert!(call(&mut svc, Op::NotFound).await.is_err());
    assert_eq!(handle.unkeyed().state(), CircuitState::Open);
    let mut keys = handle.keys();
    keys.sort();
    assert_eq!(keys, ["failing", "healthy"]);
    assert_eq!(*seen.lock(), vec![(Some("failing".to_owned()), "open"), (None, "open")]);
}

#[test]
fn keyed_config_is_validated() {
    let base = CircuitBreakerConfig::builder;
    let e = KeyedCircuitBreakerLayer::builder()
        .plain()
        .config(base())
        .max_keys(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "max_keys");
    let e = KeyedCircuitBreakerLayer::builder()
        .plain()
        .config(base())
        .idle_timeout(std::time::Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "idle_timeout");
    let config = || base().build().unwrap();
    let e = KeyedCircuitBreakerLayer::builder()
        .plain()
        .key_config("/a", config())
        .key_config("/b", config())
        .key_config("/a", config())
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "key_config");
    assert!(e.to_string().contains("`/a` is configured twice"), "{e}");
    let e = KeyedCircuitBreakerLayer::builder()
        .plain()
        .key_config("", config())
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "key_config");
}

async fn kcall<S>(svc: &mut S, req: (&'static str, Op)) -> Result<&'static str, palisade_core::error::BoxError>
where
    S: Service<(&'static str, Op), Response = &'static str, Error = palisade_core::error::BoxError>,
{
    tower::ServiceExt::ready(svc).await?.call(req).await
}

/// A keyed breaker over `(key, op)` requests, keyed by the first element.
fn keyed(
    max_keys: usize,
    threshold: u32,
) -> (
    impl tower::Service<(&'static str, Op), Response = &'static str, Error = palisade_core::error::BoxError>,
    palisade_circuit_breaker::KeyedCircuitBreakerHandle,
) {
    let config = CircuitBreakerConfig::builder()
        .failure_threshold(threshold)
        .cooldown(ms(10_000))
        .max_cooldown(ms(10_000));
    let layer = KeyedCircuitBreakerLayer::builder()
        .plain()
        .config(config)
        .max_keys(max_keys)
        .idle_timeout(ms(5_000))
        .build()
        .unwrap()
        .key_fn(|(key, _): &(&'static str, Op)| Some((*key).to_owned().into()));
    let handle = layer.handle();
    let svc = layer.layer(tower::ServiceExt::map_request(
        inner(),
        |(_, op): (&'static str, Op)| op,
    ));
    (svc, handle)
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

#[tokio::test(start_paused = true)]
async fn idle_keys_stay_while_the_map_has_room() {
    let (mut svc, handle) = keyed(3, 3);
    let _ = kcall(&mut svc, ("a", Op::Fail)).await;
    Clock::start().at_ms(60_000).await;
    assert_eq!(kcall(&mut svc, ("b", Op::Ok)).await.unwrap(), "ok");
    // No scan (and no eviction) until the map is full.
    assert_eq!(sorted(handle.keys()), ["a", "b"]);
    assert_eq!(handle.get("a").unwrap().snapshot().consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn open_breakers_are_kept_and_new_keys_share_the_unkeyed_breaker_when_nothing_can_go() {
    let clock = Clock::start();
    let (mut svc, handle) = keyed(1, 1);
    let _ = kcall(&mut svc, ("a", Op::Fail)).await;
    assert_eq!(handle.get("a").unwrap().state(), CircuitState::Open);
    clock.at_ms(6_000).await;
    // "a" is idle, but open within its cooldown: it stays, and "b" shares
    // the unkeyed breaker.
    assert!(!is_open(&kcall(&mut svc, ("b", Op::Fail)).await));
    assert_eq!(handle.keys(), ["a"]);
    assert_eq!(handle.unkeyed().state(), CircuitState::Open);
    assert!(is_open(&kcall(&mut svc, ("a", Op::Ok)).await), "a is still protected");
    // Once its cooldown has passed (and it is idle again), it can go.
    clock.at_ms(16_000).await;
    let _ = kcall(&mut svc, ("c", Op::Ok)).await;
    assert_eq!(handle.keys(), ["c"]);
}

#[tokio::test(start_paused = true)]
async fn breakers_in_use_are_kept_and_a_busy_map_is_not_rescanned_for_a_second() {
    let clock = Clock::start();
    let (mut svc, handle) = keyed(1, 3);
    // "a" is closed but has a call in flight.
    let in_flight = svc.call(("a", Op::Hang));
    let _ = kcall(&mut svc, ("b", Op::Fail)).await;
    assert_eq!(handle.keys(), ["a"]);
    assert_eq!(handle.unkeyed().snapshot().consecutive_failures, 1);
    drop(in_flight);
    // "a" could go now, but the last scan found nothing: no rescan for a second.
    clock.at_ms(999).await;
    let _ = kcall(&mut svc, ("c", Op::Fail)).await;
    assert_eq!(handle.keys(), ["a"]);
    assert_eq!(handle.unkeyed().snapshot().consecutive_failures, 2);
    clock.at_ms(1_000).await;
    let _ = kcall(&mut svc, ("c", Op::Fail)).await;
    assert_eq!(handle.keys(), ["c"]);
    assert_eq!(handle.get("c").unwrap().snapshot().consecutive_failures, 1);
    // A handle holds its breaker too.
    let held = handle.get("c").unwrap();
    clock.at_ms(10_000).await;
    let _ = kcall(&mut svc, ("d", Op::Ok)).await;
    assert_eq!(handle.keys(), ["c"]);
    drop(held);
}
