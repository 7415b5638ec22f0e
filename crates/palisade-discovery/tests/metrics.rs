//! The balancer's metrics under the `metrics` feature, read through a small
//! counting recorder installed for the test's thread: every metric carries
//! the service label, so two balancers never overwrite each other.
#![cfg(feature = "metrics")]
#![allow(missing_docs, clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use palisade_discovery::{AllOpenPolicy, PeerDiscoveryLayer};
use parking_lot::Mutex;
use tower::discover::Change;
use tower_layer::Layer;

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some((f64::from_bits(b) + value).to_bits())
        });
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// Every registered metric under `name{label=value,...}`.
#[derive(Default)]
struct Counting {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
}

impl Counting {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells.lock().entry(name).or_default().clone()
    }

    fn value(&self, name: &str) -> Option<u64> {
        self.cells.lock().get(name).map(|c| c.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.value(name).map(f64::from_bits)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.cells.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn every_metric_carries_the_service_and_two_balancers_keep_their_own() {
    let recorder = Counting::default();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let make = |service: &str, n: usize| {
        let peers: Vec<_> = (0..n).map(|i| Ctl::new(&format!("{service}-{i}"))).collect();
        let (tx, discover) = channel_discover();
        for p in &peers {
            tx.send(Change::Insert(p.name.clone(), Peer(p.clone()))).unwrap();
        }
        let lb = PeerDiscoveryLayer::builder()
            .plain()
            .service_name(service)
            .all_open(AllOpenPolicy::FailFast)
            .build()
            .unwrap()
            .layer(discover);
        (peers, tx, lb)
    };
    let (echo_peers, _echo_tx, mut echo) = make("echo", 3);
    let (_, _other_tx, mut other) = make("other", 5);
    call_now(&mut echo, ()).unwrap();
    call_now(&mut other, ()).unwrap();
    assert_eq!(recorder.gauge("palisade_discovery_peers{service=echo}"), Some(3.0));
    assert_eq!(recorder.gauge("palisade_discovery_peers{service=other}"), Some(5.0));
    for p in &echo_peers {
        p.open(Duration::from_secs(10));
    }
    assert!(call_now(&mut echo, ()).is_err());
    assert_eq!(recorder.gauge("palisade_discovery_open_peers{service=echo}"), Some(3.0));
    assert_eq!(
        recorder.gauge("palisade_discovery_available_peers{service=echo}"),
        Some(0.0)
    );
    assert_eq!(
        recorder.gauge("palisade_discovery_available_peers{service=other}"),
        Some(5.0)
    );
    assert_eq!(
        recorder.value("palisade_discovery_no_available_peers_total{service=echo}"),
        Some(1)
    );
    assert_eq!(
        recorder.value("palisade_discovery_no_available_peers_total{service=other}"),
        Some(0)
    );
    for name in recorder.names() {
        assert!(name.contains("service="), "{name} has no service label");
    }
}
