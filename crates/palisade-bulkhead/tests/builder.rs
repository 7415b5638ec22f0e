//! The one construction idiom: `BulkheadLayer::builder()`, a protocol, `build()?`.

use palisade_bulkhead::{BulkheadLayer, KeyedBulkheadLayer};
use palisade_core::protocol::{Grpc, Http, Plain};

#[test]
fn the_layer_builders_carry_the_config_knobs_and_the_protocol() {
    let grpc: BulkheadLayer<Grpc> = BulkheadLayer::builder().grpc().max_concurrent(5).build().unwrap();
    assert_eq!(grpc.handle().max_concurrent(), 5);
    let _http: BulkheadLayer<Http> = BulkheadLayer::builder().http().build().unwrap();
    let _plain: BulkheadLayer<Plain> = BulkheadLayer::builder().max_queue(0).plain().build().unwrap();
    let _keyed: KeyedBulkheadLayer<Grpc> = KeyedBulkheadLayer::builder()
        .grpc()
        .max_concurrent(2)
        .key_limit("/a.A/B", 1)
        .build()
        .unwrap();
}

#[test]
fn the_layer_builders_validate_with_a_typed_error() {
    let err = BulkheadLayer::builder().http().max_concurrent(0).build().unwrap_err();
    assert!(err.to_string().contains("max_concurrent"), "{err}");
    assert!(KeyedBulkheadLayer::builder().grpc().max_concurrent(0).build().is_err());
}
