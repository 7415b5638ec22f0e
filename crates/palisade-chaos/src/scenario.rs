//! The scenarios: what goes wrong, when, and to which servers.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// How many servers every scenario starts (`echo-0`, `echo-1`, `echo-2`).
pub const SERVERS: usize = 3;

/// The server that the single-server faults strike.
pub const FAILING_SERVER: usize = 0;

/// How long a fleet-wide partition lasts, whatever the run's duration.
pub const PARTITION: Duration = Duration::from_secs(2);

/// How long the run goes on after a partition ends, at least, so that
/// recovery can be seen.
pub const PARTITION_TAIL: Duration = Duration::from_secs(2);

/// The half-period of the `flapping` scenario: failing this long, then
/// healthy this long, and so on.
pub const FLAP: Duration = Duration::from_millis(500);

/// The latency of the slow server in the `slow` scenario.
pub const SLOW_LATENCY: Duration = Duration::from_secs(2);

/// The failure rate of every server in the `brownout` scenario.
pub const BROWNOUT_RATE: f64 = 0.3;

/// How many times its capacity the fleet is offered in the `overload` scenario.
pub const OVERLOAD_FACTOR: u32 = 3;

/// One chaos scenario, selectable by name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One server's process stops: its listener closes (connections are
    /// refused) and its open connections drop; it comes back at the end.
    Crash,
    /// One server answers every call with `UNAVAILABLE`.
    Errors,
    /// One server's latency jumps to [`SLOW_LATENCY`].
    Slow,
    /// One server alternates failing (`UNAVAILABLE`) and healthy every
    /// [`FLAP`].
    Flapping,
    /// Every server fails [`BROWNOUT_RATE`] of its calls at random (seeded).
    Brownout,
    /// The offered load is [`OVERLOAD_FACTOR`] times the servers' capacity
    /// for the whole run (see [`overload_capacity`]); there is no fault window.
    Overload,
    /// Every server refuses and drops connections for [`PARTITION`], then
    /// comes back.
    Partition,
    /// The registry stops answering while one server is replaced by a new one
    /// on another address; the registry comes back at the end of the window.
    RegistryOutage,
}

impl Scenario {
    /// Every scenario, in the order the default run goes through them.
    pub const ALL: [Scenario; 8] = [
        Scenario::Crash,
        Scenario::Errors,
        Scenario::Slow,
        Scenario::Flapping,
        Scenario::Brownout,
        Scenario::Overload,
        Scenario::Partition,
        Scenario::RegistryOutage,
    ];

    /// The scenario's name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Errors => "errors",
            Scenario::Slow => "slow",
            Scenario::Flapping => "flapping",
            Scenario::Brownout => "brownout",
            Scenario::Overload => "overload",
            Scenario::Partition => "partition",
            Scenario::RegistryOutage => "registry-outage",
        }
    }

    /// One line on what happens.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::Crash => "echo-0 stops (connections refused and dropped), then comes back",
            Scenario::Errors => "echo-0 answers UNAVAILABLE",
            Scenario::Slow => "echo-0 answers after 2 s",
            Scenario::Flapping => "echo-0 alternates UNAVAILABLE and healthy every 0.5 s",
            Scenario::Brownout => "every server fails 30% of calls at random",
            Scenario::Overload => "offered load is 3x the servers' capacity, all run long",
            Scenario::Partition => "every server refuses and drops connections for 2 s",
            Scenario::RegistryOutage => "the registry stops answering while echo-2 is replaced by echo-3",
        }
    }

    /// The servers the fault strikes (by index; the `registry-outage`
    /// replacement is index 3).
    pub fn failing_servers(self) -> Vec<usize> {
        match self {
            Scenario::Crash | Scenario::Errors | Scenario::Slow | Scenario::Flapping => vec![FAILING_SERVER],
            Scenario::Brownout | Scenario::Partition => (0..SERVERS).collect(),
            Scenario::Overload => Vec::new(),
            Scenario::RegistryOutage => vec![SERVERS - 1],
        }
    }

    /// Whether requests sent to a failing server still reach its handler
    /// (so the server's counts show who kept sending to it). Not when it
    /// refuses connections: then nothing reaches it, and "reached after
    /// detection" and "time to detect" cannot be observed.
    pub fn failing_server_answers(self) -> bool {
        matches!(
            self,
            Scenario::Errors | Scenario::Slow | Scenario::Flapping | Scenario::Brownout
        )
    }

    /// The timeline of this scenario for a run of `duration`.
    pub fn plan(self, duration: Duration) -> Plan {
        let fault_start = duration.mul_f64(0.2);
        match self {
            Scenario::Overload => Plan {
                run: duration,
                fault: None,
            },
            Scenario::Partition => {
                let fault_end = fault_start + PARTITION;
                Plan {
                    run: duration.max(fault_end + PARTITION_TAIL),
                    fault: Some((fault_start, fault_end)),
                }
            }
            _ => Plan {
                run: duration,
                fault: Some((fault_start, duration.mul_f64(0.6))),
            },
        }
    }

    /// Whether a failing server is failing at offset `at` of the run: inside
    /// the fault window and, for `flapping`, in a failing half-period.
    pub fn failing_at(self, plan: &Plan, at: Duration) -> bool {
        let Some((start, end)) = plan.fault else {
            return false;
        };
        if at < start || at >= end {
            return false;
        }
        match self {
            Scenario::Flapping => ((at - start).as_nanos() / FLAP.as_nanos()).is_multiple_of(2),
            _ => true,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario name that is not one of [`Scenario::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScenario(pub String);

impl fmt::Display for UnknownScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        write!(
            f,
            "unknown scenario {:?}; expected one of: {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownScenario {}

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == s)
            .ok_or_else(|| UnknownScenario(s.to_owned()))
    }
}

/// When things happen in one scenario run, as offsets from the first
/// scheduled call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// How long calls are scheduled for.
    pub run: Duration,
    /// The fault window `[start, end)`, if the scenario has one.
    pub fault: Option<(Duration, Duration)>,
}

/// The servers' capacity in the `overload` scenario, for a per-client rate.
///
/// Each server runs at most [`per_connection`](Self::per_connection) calls at
/// once per connection, each taking [`service_time`](Self::service_time), and
/// every client holds one connection per server, so each client has its own
/// share of the fleet: `3 x per_connection / service_time` calls per second,
/// a third of the offered rate. Sharing by connection (as tonic's
/// `concurrency_limit_per_connection` does) keeps the three clients from
/// slowing one another down: a client that floods its share queues behind
/// its own calls only, and the comparison is about what each client does
/// with the same capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Calls a server runs at once per connection.
    pub per_connection: usize,
    /// How long each call takes at the server.
    pub service_time: Duration,
}

impl Capacity {
    /// Calls at once one client can have served across the fleet.
    pub fn fleet_concurrency(&self) -> usize {
        self.per_connection * SERVERS
    }
}

/// The capacity that makes `rate` calls per second [`OVERLOAD_FACTOR`] times
/// what the fleet can serve one client: about 60 ms per call, as many calls
/// at once per connection as that takes (at least one).
pub fn overload_capacity(rate: u32) -> Capacity {
    let rate = f64::from(rate.max(1));
    // capacity per client = SERVERS * c / S = rate / FACTOR
    let per_server_rate = rate / f64::from(OVERLOAD_FACTOR) / SERVERS as f64;
    let per_connection = (per_server_rate * 0.06).round().max(1.0);
    Capacity {
        per_connection: per_connection as usize,
        service_time: Duration::from_secs_f64(per_connection / per_server_rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse::<Scenario>(), Ok(scenario));
        }
        assert!("nope".parse::<Scenario>().unwrap_err().to_string().contains("crash"));
    }

    #[test]
    fn overload_capacity_is_a_third_of_the_rate() {
        for rate in [50, 100, 200, 400, 1_000] {
            let capacity = overload_capacity(rate);
            let served = capacity.fleet_concurrency() as f64 / capacity.service_time.as_secs_f64();
            assert!((served * 3.0 - f64::from(rate)).abs() < 1e-6, "{rate}: {capacity:?}");
            assert!(
                capacity.service_time < Duration::from_millis(200),
                "{rate}: {capacity:?}"
            );
        }
    }

    #[test]
    fn flapping_fails_every_other_half_second() {
        let plan = Scenario::Flapping.plan(Duration::from_secs(5));
        let (start, _) = plan.fault.unwrap();
        let at = |ms| Scenario::Flapping.failing_at(&plan, start + Duration::from_millis(ms));
        assert_eq!(
            (at(0), at(499), at(500), at(999), at(1_000)),
            (true, true, false, false, true)
        );
        assert!(!Scenario::Flapping.failing_at(&plan, start - Duration::from_millis(1)));
    }

    #[test]
    fn a_partition_lasts_two_seconds_and_leaves_time_to_recover() {
        let plan = Scenario::Partition.plan(Duration::from_secs(3));
        let (start, end) = plan.fault.unwrap();
        assert_eq!(end - start, PARTITION);
        assert!(plan.run >= end + PARTITION_TAIL);
    }
}
