//! Runnable examples live in `examples/examples/`: `cargo run -p palisade-examples --example <name>`.
