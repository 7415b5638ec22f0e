//! The chaos run: what Palisade is for, in numbers and pictures.
//!
//! ```sh
//! cargo run --release -p palisade-chaos            # every scenario, under a minute
//! cargo run --release -p palisade-chaos -- crash partition --rate 300
//! cargo run --release -p palisade-chaos -- --json > results.json
//! ```
//!
//! Three tonic echo servers from `palisade-testkit` run on loopback, and
//! three clients call them side by side with the same traffic while a fault
//! strikes the servers:
//!
//! - **bare**: a tonic `Channel::balance_list` over the three addresses;
//! - **tower**: tower's own middleware as a careful user stacks it: `Retry`
//!   (one retry under a `TpsBudget`) over a 250 ms `Timeout` per attempt over
//!   a p2c `Balance` of one `Channel` per server;
//! - **palisade**: Palisade's multi-instance client ([`clients::palisade`]):
//!   an in-memory registry, a per-peer circuit breaker (3 consecutive
//!   failures, 10 s cooldown) over a 250 ms attempt timeout per peer, the
//!   balancer, a bulkhead, one retry, a 1 s total timeout.
//!
//! # Traffic
//!
//! Open loop: each client is offered `--rate` calls per second (200 by
//! default), every call spawned at its scheduled time whatever the earlier
//! calls did, so a client that slows down cannot send less and hide its
//! failures. The three clients' calls are spawned at the same instants, in
//! rotating order. Every caller gives up after 1 s ([`run::CALLER_DEADLINE`]):
//! a call counts as a success only if its reply arrived by then. Each client
//! first makes a few untagged warm-up calls so its connections are open.
//!
//! # Scenarios
//!
//! The fault window runs from 20% to 60% of `--duration` (5 s by default,
//! so 1 s to 3 s); see [`scenario::Scenario`]. `crash`, `errors`, `slow` and
//! `flapping` strike `echo-0`; `brownout` and `partition` every server;
//! `registry-outage` replaces `echo-2` by `echo-3` while the registry does
//! not answer (the bare and tower clients have the three addresses they
//! started with, as a user without a registry has; Palisade keeps its last
//! known set and learns the new server when the registry is back). In
//! `overload` the servers have a capacity ([`scenario::overload_capacity`]):
//! each serves one client's connection at most `c` calls at once, each
//! taking a service time, so that the fleet serves each client a third of
//! the offered rate. Capacity is per connection (each client has one per
//! server), so the clients do not slow one another down, and Palisade's
//! bulkhead is sized to its share (`3c` at once, `3c` waiting for at most
//! one service time), as an operator who knows the capacity configures it;
//! elsewhere it is 64/64, which caps nothing at these rates.
//!
//! # Metrics
//!
//! Time is cut into 250 ms buckets ([`metrics::BUCKET`]); a call belongs to
//! the bucket of its scheduled time. An *attempt* (a first try or a retry)
//! *reaches* a server when the server's handler sees it: every client tags
//! its requests with its name (`x-testkit-tag`), and the servers record per
//! tag when each arrived.
//!
//! - **ok (fault)**: the share of the calls scheduled in the fault window
//!   that succeeded. **ok (run)**: the same over all calls.
//! - **p50 / p99 / max**: latency of the served (successful) calls, from
//!   their scheduled time to the reply (nearest rank). The JSON also has the
//!   p99 of every call and of the calls refused by the bulkhead.
//! - **detect**: the first bucket wholly inside a failing period (the fault
//!   window; for `flapping`, its failing half-seconds) in which fewer than
//!   5% of the client's attempts reach a failing server (a bucket with calls
//!   but no attempt at all counts too), reported as the end of that bucket
//!   minus the fault's start; `never` if no bucket qualifies. It is `n/a`
//!   where the failing servers refuse connections (`crash`, `partition`,
//!   `registry-outage`): nothing reaches them, so detection cannot be seen
//!   from the servers' side, and in `overload`, which has no failing server.
//! - **reached after detect**: attempts of the client that reached a
//!   failing server while it was failing, from the start of the client's
//!   detection bucket to the end of the window; for a client that never
//!   detected the fault, from the end of the window's first bucket (the
//!   earliest any client could have), so not detecting is not rewarded.
//! - **recover**: the first bucket after the fault ends from which every
//!   bucket's success rate is at least 99%, minus the fault's end; `not in
//!   run` if the last bucket is still below.
//! - **attempts/call** (retry amplification): attempts that reached any
//!   server / calls, over the run (the JSON also has it over the fault
//!   window). Attempts refused before reaching a handler (a refused
//!   connection) do not count.
//! - **shed**: calls refused by Palisade's bulkhead (`BulkheadFull`).
//!
//! # Output
//!
//! A progress bar on stderr while it runs; then a table per scenario; an SVG
//! and a PNG chart per scenario under `--out` (`target/chaos/` by default:
//! the success rate and p99 latency per bucket for the three clients, the
//! fault window shaded, and the Palisade breaker of each failing server as a
//! band of closed / half-open / open, from the breakers' events);
//! `results.json` there too; `--json` prints it on stdout.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod breakers;
pub mod brownout;
pub mod chart;
pub mod cli;
pub mod clients;
pub mod fleet;
pub mod metrics;
pub mod outage;
pub mod report;
pub mod run;
pub mod scenario;
pub mod traffic;

use std::time::Duration;

use indicatif::ProgressBar;
use palisade_core::BoxError;

pub use chart::ChartFiles;
pub use run::{RunConfig, ScenarioResult, run_scenario};
pub use scenario::Scenario;

/// What a whole run produced.
#[derive(Debug)]
pub struct Report {
    /// Per scenario, in order.
    pub results: Vec<ScenarioResult>,
    /// The chart files, in the same order.
    pub charts: Vec<ChartFiles>,
    /// `results.json` under the out directory.
    pub json: std::path::PathBuf,
}

/// Runs every scenario of `config` in turn, writes the charts and
/// `results.json`, and reports progress (in milliseconds of scheduled
/// traffic over every scenario) on `progress`.
pub async fn run(config: &RunConfig, progress: &ProgressBar) -> Result<Report, BoxError> {
    let total: Duration = config.scenarios.iter().map(|s| s.plan(config.duration).run).sum();
    progress.set_length(total.as_millis() as u64);
    let mut done = Duration::ZERO;
    let mut results = Vec::new();
    let mut charts = Vec::new();
    for scenario in &config.scenarios {
        progress.set_message(scenario.name());
        let result = run_scenario(*scenario, config, |at| {
            progress.set_position((done + at).as_millis() as u64);
        })
        .await?;
        done += scenario.plan(config.duration).run;
        charts.push(chart::write(&result, &config.out)?);
        results.push(result);
    }
    progress.finish_and_clear();
    std::fs::create_dir_all(&config.out)?;
    let json = config.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    Ok(Report { results, charts, json })
}
