//! The one construction idiom: `CircuitBreakerLayer::builder()`, a protocol, `build()?`.

use palisade_circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use palisade_core::protocol::{Grpc, Http, Plain};

#[test]
fn the_layer_builder_carries_the_config_knobs_and_the_protocol() {
    let grpc: CircuitBreakerLayer<Grpc> = CircuitBreakerLayer::builder()
        .grpc()
        .failure_threshold(7)
        .half_open_max_probes(2)
        .build()
        .unwrap();
    assert_eq!(grpc.config().consecutive().map(|c| c.failure_threshold), Some(7));
    assert_eq!(grpc.config().half_open_max_probes(), 2);
    let _http: CircuitBreakerLayer<Http> = CircuitBreakerLayer::builder().http().build().unwrap();
    let _plain: CircuitBreakerLayer<Plain> = CircuitBreakerLayer::builder().plain().build().unwrap();
    // The protocol may be chosen before or after the knobs.
    let late = CircuitBreakerLayer::builder()
        .failure_threshold(4)
        .grpc()
        .build()
        .unwrap();
    assert_eq!(late.config().consecutive().map(|c| c.failure_threshold), Some(4));
    // Starting from a preset configuration.
    let balancer = CircuitBreakerLayer::builder()
        .config(CircuitBreakerConfig::for_balancer())
        .grpc()
        .build()
        .unwrap();
    assert_eq!(
        balancer.config().half_open_max_probes(),
        CircuitBreakerConfig::for_balancer()
            .build()
            .unwrap()
            .half_open_max_probes()
    );
}

#[test]
fn the_layer_builder_validates_with_a_typed_error() {
    let err = CircuitBreakerLayer::builder()
        .grpc()
        .failure_threshold(0)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("failure_threshold"), "{err}");
}

#[test]
fn the_keyed_layer_builder_carries_the_knobs_the_bounds_and_the_protocol() {
    use palisade_circuit_breaker::{ByRoute, KeyedCircuitBreakerLayer};
    let strict = CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap();
    let _grpc: KeyedCircuitBreakerLayer<Grpc, ByRoute> = KeyedCircuitBreakerLayer::builder()
        .grpc()
        .failure_threshold(7)
        .key_config("/a.A/M", strict)
        .max_keys(8)
        .build()
        .unwrap();
    let _http: KeyedCircuitBreakerLayer<Http> = KeyedCircuitBreakerLayer::builder().http().build().unwrap();
    let _plain: KeyedCircuitBreakerLayer<Plain> = KeyedCircuitBreakerLayer::builder().plain().build().unwrap();
    // The base configuration is validated with the typed error of the config builder.
    let e = KeyedCircuitBreakerLayer::builder()
        .grpc()
        .failure_threshold(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "failure_threshold");
}
