//! The metrics of one client in one scenario, from its calls and from what
//! the servers saw of its attempts. Definitions are in the crate docs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::clients::Outcome;
use crate::scenario::{Plan, Scenario};
use crate::traffic::CallRecord;

/// The width of a time bucket.
pub const BUCKET: Duration = Duration::from_millis(250);

/// A bucket is "detected" when fewer than this share of the client's
/// attempts in it reach a failing server.
pub const DETECTED_BELOW: f64 = 0.05;

/// A client has recovered from the first bucket after the fault from which
/// every bucket's success rate is at least this.
pub const RECOVERED_AT: f64 = 0.99;

/// When a client detected the fault.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "ms")]
pub enum Detection {
    /// By this long after the fault started (the end of the first detected
    /// bucket).
    After(f64),
    /// Not during the fault window.
    Never,
    /// The scenario cannot show it: its failing servers refuse connections
    /// (nothing reaches them), or it has no failing server.
    NotObservable,
}

/// When a client recovered after the fault.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "ms")]
pub enum Recovery {
    /// From this long after the fault ended.
    After(f64),
    /// Not before the run ended.
    Never,
    /// The scenario has no fault window.
    NoFault,
}

/// What the servers saw of one client: when each of its attempts reached
/// each server, as offsets from the start of the run.
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    /// By server index.
    pub by_server: Vec<Vec<Duration>>,
}

impl Arrivals {
    fn count_in(&self, servers: impl Iterator<Item = usize>, from: Duration, to: Duration) -> u64 {
        servers
            .filter_map(|s| self.by_server.get(s))
            .map(|times| times.iter().filter(|t| **t >= from && **t < to).count() as u64)
            .sum()
    }

    fn total(&self) -> u64 {
        self.by_server.iter().map(|t| t.len() as u64).sum()
    }
}

/// One bucket of the time series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The bucket's start, in seconds from the start of the run.
    pub t: f64,
    /// Calls scheduled in the bucket.
    pub calls: u64,
    /// The share of them that succeeded (none scheduled: `None`).
    pub success: Option<f64>,
    /// The p99 latency of its served calls, in ms (none served: `None`).
    pub p99_ms: Option<f64>,
}

/// The metrics of one client in one scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Calls scheduled in the run.
    pub calls: u64,
    /// Calls scheduled in the fault window.
    pub fault_calls: u64,
    /// Success rate of the calls scheduled in the fault window.
    pub success_fault: Option<f64>,
    /// Success rate of every call of the run.
    pub success_run: f64,
    /// Latency percentiles of the served (successful) calls, in ms.
    pub p50_ms: Option<f64>,
    /// See [`Metrics::p50_ms`].
    pub p99_ms: Option<f64>,
    /// See [`Metrics::p50_ms`].
    pub max_ms: Option<f64>,
    /// The p99 latency of every call, failed ones included, in ms.
    pub p99_all_ms: Option<f64>,
    /// The p99 latency of the calls refused with `BulkheadFull`, in ms.
    pub p99_shed_ms: Option<f64>,
    /// Attempts that reached a failing server, while it was failing, after
    /// the client detected it (`None`: not observable).
    pub reached_after_detection: Option<u64>,
    /// When the client detected the fault.
    pub detection: Detection,
    /// When the client recovered.
    pub recovery: Recovery,
    /// Attempts that reached a server / calls, over the run.
    pub amplification: f64,
    /// Attempts that reached a server during the fault window / calls
    /// scheduled in it.
    pub amplification_fault: Option<f64>,
    /// How the calls ended.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Success rate and p99 per [`BUCKET`].
    pub series: Vec<Point>,
}

/// Nearest-rank percentile `q` (0 to 1) of sorted durations, in ms.
fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(ms(sorted[rank - 1]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn success_rate(calls: &[&CallRecord]) -> Option<f64> {
    if calls.is_empty() {
        return None;
    }
    let ok = calls.iter().filter(|c| c.outcome == Outcome::Ok).count();
    Some(ok as f64 / calls.len() as f64)
}

fn served_latencies<'a>(calls: impl Iterator<Item = &'a CallRecord>) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = calls.filter(|c| c.outcome == Outcome::Ok).map(|c| c.latency).collect();
    latencies.sort();
    latencies
}

fn in_range(calls: &[CallRecord], from: Duration, to: Duration) -> Vec<&CallRecord> {
    calls
        .iter()
        .filter(|c| c.scheduled >= from && c.scheduled < to)
        .collect()
}

/// Computes the metrics of one client.
pub fn compute(scenario: Scenario, plan: &Plan, calls: &[CallRecord], arrivals: &Arrivals) -> Metrics {
    let all: Vec<&CallRecord> = calls.iter().collect();
    let served = served_latencies(calls.iter());
    let mut every: Vec<Duration> = calls.iter().map(|c| c.latency).collect();
    every.sort();
    let mut shed: Vec<Duration> = calls
        .iter()
        .filter(|c| c.outcome == Outcome::BulkheadFull)
        .map(|c| c.latency)
        .collect();
    shed.sort();
    let mut outcomes = BTreeMap::new();
    for outcome in Outcome::ALL {
        let n = calls.iter().filter(|c| c.outcome == outcome).count() as u64;
        if n > 0 {
            outcomes.insert(outcome.name(), n);
        }
    }
    let series = series(plan, calls);
    let n = calls.len().max(1) as f64;

    let (fault_calls, success_fault, amplification_fault) = match plan.fault {
        Some((start, end)) => {
            let window = in_range(calls, start, end);
            let attempts = arrivals.count_in(0..arrivals.by_server.len(), start, end);
            let amplification = (!window.is_empty()).then(|| attempts as f64 / window.len() as f64);
            (window.len() as u64, success_rate(&window), amplification)
        }
        None => (0, None, None),
    };
    let (detection, reached_after_detection) = detect(scenario, plan, calls, arrivals);
    Metrics {
        calls: calls.len() as u64,
        fault_calls,
        success_fault,
        success_run: success_rate(&all).unwrap_or(0.0),
        p50_ms: percentile(&served, 0.5),
        p99_ms: percentile(&served, 0.99),
        max_ms: served.last().copied().map(ms),
        p99_all_ms: percentile(&every, 0.99),
        p99_shed_ms: percentile(&shed, 0.99),
        reached_after_detection,
        detection,
        recovery: recover(plan, calls),
        amplification: arrivals.total() as f64 / n,
        amplification_fault,
        outcomes,
        series,
    }
}

/// The buckets of `[from, to)`, as `(start, end)` pairs, whole buckets only.
fn buckets(from: Duration, to: Duration) -> impl Iterator<Item = (Duration, Duration)> {
    (0u32..)
        .map(move |k| (from + BUCKET * k, from + BUCKET * (k + 1)))
        .take_while(move |(_, end)| *end <= to)
}

fn series(plan: &Plan, calls: &[CallRecord]) -> Vec<Point> {
    buckets(Duration::ZERO, plan.run)
        .map(|(start, end)| {
            let bucket = in_range(calls, start, end);
            let served = served_latencies(bucket.iter().copied());
            Point {
                t: start.as_secs_f64(),
                calls: bucket.len() as u64,
                success: success_rate(&bucket),
                p99_ms: percentile(&served, 0.99),
            }
        })
        .collect()
}

fn detect(scenario: Scenario, plan: &Plan, calls: &[CallRecord], arrivals: &Arrivals) -> (Detection, Option<u64>) {
    let failing = scenario.failing_servers();
    let Some((start, end)) = plan.fault else {
        return (Detection::NotObservable, None);
    };
    if failing.is_empty() || !scenario.failing_server_answers() {
        return (Detection::NotObservable, None);
    }
    let all_servers = 0..arrivals.by_server.len();
    // Only buckets wholly inside a failing period can tell.
    let detected = buckets(start, end)
        .filter(|(from, to)| {
            scenario.failing_at(plan, *from) && scenario.failing_at(plan, to.saturating_sub(Duration::from_nanos(1)))
        })
        .find(|(from, to)| {
            if in_range(calls, *from, *to).is_empty() {
                return false;
            }
            let attempts = arrivals.count_in(all_servers.clone(), *from, *to);
            let to_failing = arrivals.count_in(failing.iter().copied(), *from, *to);
            (to_failing as f64) < DETECTED_BELOW * attempts as f64 || attempts == 0
        });
    let (detection, counted_from) = match detected {
        Some((from, to)) => (Detection::After(ms(to - start)), from),
        // A client that never detects is counted from the end of the first
        // bucket: the earliest any client could have detected the fault.
        None => (Detection::Never, start + BUCKET),
    };
    let reached = failing
        .iter()
        .filter_map(|s| arrivals.by_server.get(*s))
        .flatten()
        .filter(|t| **t >= counted_from && **t < end && scenario.failing_at(plan, **t))
        .count() as u64;
    (detection, Some(reached))
}

fn recover(plan: &Plan, calls: &[CallRecord]) -> Recovery {
    let Some((_, end)) = plan.fault else {
        return Recovery::NoFault;
    };
    let rates: Vec<(Duration, Option<f64>)> = buckets(end, plan.run)
        .map(|(from, to)| (from, success_rate(&in_range(calls, from, to))))
        .collect();
    // The first bucket from which every later one (with calls) is good.
    let mut recovered_from = None;
    for (from, rate) in rates.iter().rev() {
        match rate {
            Some(rate) if *rate < RECOVERED_AT => break,
            _ => recovered_from = Some(*from),
        }
    }
    match recovered_from {
        Some(from) => Recovery::After(ms(from - end)),
        None => Recovery::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ms: u64, outcome: Outcome) -> CallRecord {
        CallRecord {
            scheduled: Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            outcome,
        }
    }

    fn plan() -> Plan {
        Plan {
            run: Duration::from_secs(3),
            fault: Some((Duration::from_secs(1), Duration::from_secs(2))),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(50.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&sorted[..1], 0.99), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn recovery_is_the_first_bucket_from_which_every_bucket_is_good() {
        // Failures until 2.5 s, then only successes.
        let calls: Vec<_> = (0..300)
            .map(|i| {
                call(
                    i * 10,
                    if (100..250).contains(&i) {
                        Outcome::Failed
                    } else {
                        Outcome::Ok
                    },
                )
            })
            .collect();
        assert_eq!(recover(&plan(), &calls), Recovery::After(500.0));
        let never: Vec<_> = (0..300).map(|i| call(i * 10, Outcome::Failed)).collect();
        assert_eq!(recover(&plan(), &never), Recovery::Never);
    }

    #[test]
    fn detection_is_the_first_bucket_with_under_five_percent_to_the_failing_server() {
        let calls: Vec<_> = (0..300).map(|i| call(i * 10, Outcome::Ok)).collect();
        // Server 0 fails from 1 s; the client sends it a third of its
        // attempts until 1.5 s, then one attempt in all.
        let mut arrivals = Arrivals {
            by_server: vec![Vec::new(); 3],
        };
        for i in 0..300u64 {
            let t = Duration::from_millis(i * 10);
            let server = if t < Duration::from_millis(1_500) || i == 171 {
                (i % 3) as usize
            } else {
                1 + (i % 2) as usize
            };
            arrivals.by_server[server].push(t);
        }
        let (detection, reached) = detect(Scenario::Errors, &plan(), &calls, &arrivals);
        assert_eq!(detection, Detection::After(750.0));
        // Counted from the detected bucket (1.5 s): the one stray attempt.
        assert_eq!(reached, Some(1));
        let (detection, reached) = detect(Scenario::Crash, &plan(), &calls, &arrivals);
        assert_eq!((detection, reached), (Detection::NotObservable, None));
    }
}
