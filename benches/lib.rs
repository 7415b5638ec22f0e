//! Criterion benchmarks of Palisade live in `benches/benches/`; run them with
//! `cargo bench -p palisade-benches`. This library holds shared helpers.

#![allow(missing_docs)]
