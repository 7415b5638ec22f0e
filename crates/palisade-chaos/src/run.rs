//! Runs one scenario: fresh servers and clients, warm-up, the traffic and
//! the fault script side by side, then the metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::BoxError;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Code;

use crate::breakers::{BreakerLog, BreakerState};
use crate::clients::{self, Client, ClientKind, Settings};
use crate::fleet::Fleet;
use crate::metrics::{self, Arrivals, Metrics};
use crate::scenario::{FAILING_SERVER, FLAP, Plan, SERVERS, Scenario, overload_capacity};
use crate::traffic::{self, Schedule};

/// How long a caller waits for any call: the same deadline for every client.
pub const CALLER_DEADLINE: Duration = Duration::from_secs(1);

/// Untagged calls each client makes before the run, to open its connections.
const WARM_UP_CALLS: usize = 12;

/// What a run does.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// How long each scenario's calls are scheduled for (a partition run is
    /// longer if it must be, see [`Scenario::plan`]).
    pub duration: Duration,
    /// Calls per second, per client.
    pub rate: u32,
    /// Seeds the brownout's failures and the retry jitter.
    pub seed: u64,
    /// Where the charts and `results.json` go.
    pub out: PathBuf,
}

impl RunConfig {
    /// The default run: every scenario, 5 s each at 200 calls/s per client.
    pub fn standard() -> Self {
        Self {
            scenarios: Scenario::ALL.to_vec(),
            duration: Duration::from_secs(5),
            rate: 200,
            seed: 17,
            out: PathBuf::from("target/chaos"),
        }
    }

    /// The short mode the tests use: 3 s each at 100 calls/s per client.
    pub fn quick() -> Self {
        Self {
            duration: Duration::from_secs(3),
            rate: 100,
            ..Self::standard()
        }
    }
}

/// A breaker's states over a run, as intervals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerTrack {
    /// The server's name.
    pub server: String,
    /// `(from_s, to_s, state)`: the state from `from_s` to `to_s` seconds
    /// into the run.
    pub intervals: Vec<(f64, f64, BreakerState)>,
}

/// One client's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientResult {
    /// Which client.
    pub client: ClientKind,
    /// Its metrics.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Attempts per server that reached it, by server name.
    pub attempts_per_server: Vec<(String, u64)>,
}

/// One scenario's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// Which scenario.
    pub scenario: Scenario,
    /// What happens in it.
    pub description: &'static str,
    /// Calls per second, per client.
    pub rate: u32,
    /// How long calls were scheduled for, in seconds.
    pub run_s: f64,
    /// The fault window, in seconds from the start.
    pub fault_s: Option<(f64, f64)>,
    /// The servers the fault strikes, by name.
    pub failing: Vec<String>,
    /// The caller's deadline, in ms.
    pub caller_deadline_ms: f64,
    /// The overload scenario's capacity: calls at once per connection, and
    /// the service time in ms.
    pub capacity: Option<(usize, f64)>,
    /// The Palisade client's settings.
    pub palisade_settings: Settings,
    /// Per client, in [`ClientKind::ALL`] order.
    pub clients: Vec<ClientResult>,
    /// The Palisade client's breakers of the failing servers.
    pub breakers: Vec<BreakerTrack>,
    /// How long the scenario took, in seconds of wall time.
    pub wall_s: f64,
}

impl ScenarioResult {
    /// The result of `client`.
    pub fn client(&self, client: ClientKind) -> Option<&ClientResult> {
        self.clients.iter().find(|c| c.client == client)
    }
}

/// Runs `scenario`; `on_progress` is told how far into its schedule it is.
pub async fn run_scenario(
    scenario: Scenario,
    config: &RunConfig,
    on_progress: impl FnMut(Duration),
) -> Result<ScenarioResult, BoxError> {
    let wall = Instant::now();
    let plan = scenario.plan(config.duration);
    let capacity = (scenario == Scenario::Overload).then(|| overload_capacity(config.rate));
    let fleet = Arc::new(Fleet::start(capacity).await?);
    let mut settings = Settings {
        seed: config.seed,
        ..Settings::default()
    };
    if let Some(capacity) = capacity {
        // An operator who knows the fleet's capacity sizes the bulkhead to
        // it: as many at once as the fleet serves this client, as many
        // waiting, and a wait of one service time at most.
        settings.bulkhead_concurrent = capacity.fleet_concurrency();
        settings.bulkhead_queue = capacity.fleet_concurrency();
        settings.bulkhead_wait = Some(capacity.service_time);
    }
    let breakers = BreakerLog::new();
    let addrs = fleet.addrs();
    let clients = vec![
        Client::Bare(clients::bare::bare(&addrs)?),
        Client::Tower(clients::tower_stack::tower_stack(&addrs, &settings)?),
        Client::Palisade(clients::palisade::palisade(
            fleet.registry(),
            &settings,
            breakers.clone(),
        )?),
    ];
    // All at once: in `overload` every call takes a service time.
    let warm_up = clients
        .iter()
        .flat_map(|client| std::iter::repeat_n(client, WARM_UP_CALLS))
        .map(|client| tokio::time::timeout(CALLER_DEADLINE, client.clone().call(None)));
    futures::future::join_all(warm_up).await;

    let schedule = Schedule {
        rate: config.rate,
        run: plan.run,
        deadline: CALLER_DEADLINE,
    };
    let start = Instant::now() + Duration::from_millis(20);
    let script = tokio::spawn(fault_script(scenario, plan, Arc::clone(&fleet), start, config.seed));
    let records = traffic::drive(&clients, schedule, start, on_progress).await;
    script.await??;
    drop(clients);

    let servers = fleet.servers();
    let names: Vec<String> = servers.iter().map(|s| s.name().to_owned()).collect();
    let mut results = Vec::new();
    for (kind, calls) in ClientKind::ALL.into_iter().zip(&records) {
        let arrivals = Arrivals {
            by_server: servers
                .iter()
                .map(|server| {
                    server
                        .stats()
                        .tagged(kind.name())
                        .into_iter()
                        .map(|t| t.saturating_duration_since(start))
                        .collect()
                })
                .collect(),
        };
        let attempts_per_server = names
            .iter()
            .cloned()
            .zip(arrivals.by_server.iter().map(|t| t.len() as u64))
            .collect();
        results.push(ClientResult {
            client: kind,
            metrics: metrics::compute(scenario, &plan, calls, &arrivals),
            attempts_per_server,
        });
    }
    let failing = scenario.failing_servers();
    let tracks = breaker_tracks(&breakers, &fleet, &failing, start, plan.run);
    Ok(ScenarioResult {
        scenario,
        description: scenario.description(),
        rate: config.rate,
        run_s: plan.run.as_secs_f64(),
        fault_s: plan.fault.map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64())),
        failing: failing
            .iter()
            .map(|i| names.get(*i).cloned().unwrap_or_else(|| format!("echo-{i}")))
            .collect(),
        caller_deadline_ms: CALLER_DEADLINE.as_secs_f64() * 1e3,
        capacity: capacity.map(|c| (c.per_connection, c.service_time.as_secs_f64() * 1e3)),
        palisade_settings: settings,
        clients: results,
        breakers: tracks,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// The Palisade breakers of the `failing` servers as intervals of the run.
fn breaker_tracks(
    log: &BreakerLog,
    fleet: &Fleet,
    failing: &[usize],
    start: Instant,
    run: Duration,
) -> Vec<BreakerTrack> {
    let transitions = log.transitions();
    let servers = fleet.servers();
    let end = run.as_secs_f64();
    failing
        .iter()
        .filter_map(|i| servers.get(*i))
        .map(|server| {
            let addr = server.addr().to_string();
            let mut intervals = Vec::new();
            let (mut from, mut state) = (0.0, BreakerState::Closed);
            for t in transitions.iter().filter(|t| t.peer == addr) {
                let at = t.at.saturating_duration_since(start).as_secs_f64().min(end);
                if at > from {
                    intervals.push((from, at, state));
                }
                (from, state) = (at, t.to);
            }
            if end > from {
                intervals.push((from, end, state));
            }
            BreakerTrack {
                server: server.name().to_owned(),
                intervals,
            }
        })
        .collect()
}

/// Applies the scenario's faults at their times.
async fn fault_script(
    scenario: Scenario,
    plan: Plan,
    fleet: Arc<Fleet>,
    start: Instant,
    seed: u64,
) -> Result<(), BoxError> {
    let Some((fault_start, fault_end)) = plan.fault else {
        return Ok(());
    };
    let at = |offset: Duration| tokio::time::sleep_until(start + offset);
    at(fault_start).await;
    tracing::info!(target: "palisade_chaos", event = "fault", scenario = scenario.name(), to = "on", "fault starts");
    match scenario {
        Scenario::Crash => fleet.stop(FAILING_SERVER).await,
        Scenario::Errors => fleet.set_status(FAILING_SERVER, Some(Code::Unavailable)),
        Scenario::Slow => fleet.set_slow(FAILING_SERVER, true),
        Scenario::Flapping => {
            let mut failing = true;
            let mut next = fault_start;
            while next < fault_end {
                at(next).await;
                fleet.set_status(FAILING_SERVER, failing.then_some(Code::Unavailable));
                failing = !failing;
                next += FLAP;
            }
        }
        Scenario::Brownout => fleet.start_brownout(seed),
        Scenario::Partition => {
            futures::future::join_all((0..SERVERS).map(|i| fleet.stop(i))).await;
        }
        Scenario::RegistryOutage => {
            fleet.registry().set_outage(true);
            fleet.replace(SERVERS - 1).await?;
        }
        Scenario::Overload => {}
    }
    at(fault_end).await;
    tracing::info!(target: "palisade_chaos", event = "fault", scenario = scenario.name(), to = "off", "fault ends");
    match scenario {
        Scenario::Crash => fleet.resume(FAILING_SERVER)?,
        Scenario::Errors | Scenario::Flapping => fleet.set_status(FAILING_SERVER, None),
        Scenario::Slow => fleet.set_slow(FAILING_SERVER, false),
        Scenario::Brownout => fleet.stop_brownout(),
        Scenario::Partition => {
            for i in 0..SERVERS {
                fleet.resume(i)?;
            }
        }
        Scenario::RegistryOutage => fleet.registry().set_outage(false),
        Scenario::Overload => {}
    }
    Ok(())
}
