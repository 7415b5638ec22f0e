//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::run::RunConfig;
use crate::scenario::Scenario;

/// What `--help` prints after the options: the scenarios and what every
/// metric means.
pub const AFTER_HELP: &str = "\
Scenarios (default: all, in this order):
  crash            echo-0 stops (connections refused and dropped), then comes back
  errors           echo-0 answers UNAVAILABLE
  slow             echo-0 answers after 2 s
  flapping         echo-0 alternates UNAVAILABLE and healthy every 0.5 s
  brownout         every server fails 30% of calls at random (seeded)
  overload         offered load is 3x the servers' capacity, all run long
  partition        every server refuses and drops connections for 2 s
  registry-outage  the registry stops answering while echo-2 is replaced by echo-3
The fault window runs from 20% to 60% of the duration (partition: 2 s from 20%).

Clients, over the same three servers, with the same open-loop schedule:
  bare      tonic Channel::balance_list
  tower     tower Retry (1 retry, TpsBudget) + Timeout (250 ms) + p2c Balance
  palisade  registry -> per-peer breaker (3 failures, 10 s cooldown) + attempt timeout (250 ms),
            balancer, bulkhead, retry (1), total timeout (1 s)
Every call's caller gives up after 1 s.

Metrics (time is cut into 250 ms buckets; a call belongs to the bucket of its scheduled time):
  ok (fault)    share of the calls scheduled in the fault window that succeeded
  ok (run)      share of all calls that succeeded
  p50/p99/max   latency of the served (successful) calls, from scheduled time to reply
  reached after detect
                attempts of the client that reached a failing server while it was failing,
                from the client's detection bucket on (never detected: from the end of the
                fault's first bucket); n/a where the failing server refuses connections
  detect        the first bucket wholly in a failing period in which under 5% of the client's
                attempts reach a failing server; shown as the end of that bucket minus the
                fault start; n/a where nothing can reach the failing server
  recover       the first bucket after the fault ends from which every bucket's success rate
                is at least 99%, minus the fault end
  attempts/call attempts that reached any server (retries included) / calls, over the run
  shed          calls refused by Palisade's bulkhead (BulkheadFull)
An attempt reaches a server when the server's handler sees it (each client tags its requests).";

/// Parses `5s`, `2500ms` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 5s or 2500ms)"))?;
    let seconds = value * unit;
    if !(2.0..=120.0).contains(&seconds) {
        return Err(format!("{s}: must be between 2 s and 120 s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A bare tonic client, tower's middleware and Palisade, side by side over
/// three test servers on loopback while faults strike them.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "palisade-chaos", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Scenarios to run, by name (default: all).
    #[arg(value_name = "SCENARIO")]
    pub scenarios: Vec<Scenario>,

    /// How long each scenario's calls are scheduled for [default: 5s; --quick: 3s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Calls per second, per client, from 50 to 2000 [default: 200; --quick: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(50..=2000))]
    pub rate: Option<u32>,

    /// Print the results as JSON on stdout (the tables go to stderr).
    #[arg(long)]
    pub json: bool,

    /// Where the charts (SVG and PNG per scenario) and results.json go.
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,

    /// The short mode the tests use (3 s per scenario at 100 calls/s).
    #[arg(long)]
    pub quick: bool,

    /// Seeds the brownout's random failures and the retry jitter.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
}

impl Args {
    /// The run these arguments ask for.
    pub fn config(&self) -> RunConfig {
        let base = if self.quick {
            RunConfig::quick()
        } else {
            RunConfig::standard()
        };
        RunConfig {
            scenarios: if self.scenarios.is_empty() {
                base.scenarios
            } else {
                self.scenarios.clone()
            },
            duration: self.duration.unwrap_or(base.duration),
            rate: self.rate.unwrap_or(base.rate),
            seed: self.seed,
            out: self.out.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_make_the_run() {
        let args = Args::try_parse_from([
            "palisade-chaos",
            "crash",
            "partition",
            "--duration",
            "4s",
            "--rate",
            "150",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.scenarios, vec![Scenario::Crash, Scenario::Partition]);
        assert_eq!((config.duration, config.rate), (Duration::from_secs(4), 150));
        let quick = Args::try_parse_from(["palisade-chaos", "--quick"]).unwrap().config();
        assert_eq!(quick, RunConfig::quick());
        assert!(Args::try_parse_from(["palisade-chaos", "nope"]).is_err());
        assert!(Args::try_parse_from(["palisade-chaos", "--duration", "1s"]).is_err());
        assert_eq!(parse_duration("2500ms"), Ok(Duration::from_millis(2_500)));
    }
}
