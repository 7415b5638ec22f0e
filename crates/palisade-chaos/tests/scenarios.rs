//! Every scenario in its short mode (`--quick`: 3 s at 100 calls/s per
//! client; the partition runs 4.6 s), asserting the point it exists to show,
//! with margins that hold on a noisy 2-core machine, and checking that its
//! chart files exist and hold the series they claim.
//!
//! These tests run real servers and real time. They run one at a time: a
//! lock within one test process (`cargo test`), and the `chaos` test group
//! of `.config/nextest.toml` across processes (`cargo nextest`), so that
//! they do not compete with one another for the two cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_chaos::breakers::BreakerState;
use palisade_chaos::chart::{self, ChartFiles};
use palisade_chaos::clients::ClientKind;
use palisade_chaos::metrics::Recovery;
use palisade_chaos::run::ClientResult;
use palisade_chaos::{RunConfig, Scenario, ScenarioResult, run_scenario};
use parking_lot::Mutex;

/// One scenario at a time in this process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Palisade's success rate in the fault window of a single-server fault
/// (issues 17 and 19).
const PALISADE_SINGLE_FAULT: f64 = 0.995;

/// "Visibly lower": the bare client's success rate in the fault window is at
/// least this much below Palisade's (it is 25 to 30 points below today).
const VISIBLY_LOWER: f64 = 0.05;

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos")
}

/// Runs `scenario` in the short mode and writes its charts.
fn run(scenario: Scenario) -> (ScenarioResult, ChartFiles) {
    let _one = ONE_AT_A_TIME.lock();
    let config = RunConfig {
        scenarios: vec![scenario],
        out: out_dir(),
        ..RunConfig::quick()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime
        .block_on(run_scenario(scenario, &config, |_| {}))
        .unwrap_or_else(|e| panic!("{scenario}: {e}"));
    let charts = chart::write(&result, &config.out).unwrap();
    eprintln!("{}", palisade_chaos::report::table(&result));
    check_charts(&result, &charts);
    (result, charts)
}

fn client(result: &ScenarioResult, kind: ClientKind) -> &ClientResult {
    result.client(kind).unwrap()
}

fn fault_success(result: &ScenarioResult, kind: ClientKind) -> f64 {
    client(result, kind).metrics.success_fault.unwrap()
}

/// Palisade keeps at least 99.5% through the fault while the bare client is
/// visibly lower.
fn assert_palisade_masks_the_fault(result: &ScenarioResult) {
    let palisade = fault_success(result, ClientKind::Palisade);
    let bare = fault_success(result, ClientKind::Bare);
    assert!(
        palisade >= PALISADE_SINGLE_FAULT,
        "{}: Palisade kept only {:.1}% of the calls in the fault window (needs {:.1}%)",
        result.scenario,
        palisade * 100.0,
        PALISADE_SINGLE_FAULT * 100.0
    );
    assert!(
        bare <= palisade - VISIBLY_LOWER,
        "{}: the bare client kept {:.1}%, not visibly below Palisade's {:.1}%: the fault did not show",
        result.scenario,
        bare * 100.0,
        palisade * 100.0
    );
}

#[test]
fn crash_palisade_keeps_its_callers_while_the_bare_client_fails_some() {
    let (result, _) = run(Scenario::Crash);
    assert_palisade_masks_the_fault(&result);
}

#[test]
fn errors_palisade_keeps_its_callers_while_the_bare_client_fails_some() {
    let (result, _) = run(Scenario::Errors);
    assert_palisade_masks_the_fault(&result);
    // It routed around: after detecting the fault, hardly an attempt went
    // to the failing server (a probe would be one).
    let palisade = &client(&result, ClientKind::Palisade).metrics;
    assert!(palisade.reached_after_detection.unwrap() <= 3, "{palisade:?}");
}

#[test]
fn slow_palisade_times_out_the_slow_server_and_routes_around_it() {
    let (result, _) = run(Scenario::Slow);
    assert_palisade_masks_the_fault(&result);
}

#[test]
fn flapping_palisade_keeps_its_callers_while_a_server_flaps() {
    let (result, _) = run(Scenario::Flapping);
    assert_palisade_masks_the_fault(&result);
}

/// The bound Palisade's default retry budget puts on attempts per call over
/// the fault window: retries may add 20% of the calls deposited in the
/// budget's 10 s window (every call of the run so far, here), plus its floor
/// of 10 retries a second over that window.
fn budget_bound(result: &ScenarioResult) -> f64 {
    let (_, end) = result.fault_s.unwrap();
    let window = client(result, ClientKind::Palisade).metrics.fault_calls as f64;
    let deposited = end.min(10.0) * f64::from(result.rate);
    let floor = 10.0 * 10.0;
    1.0 + (0.2 * deposited + floor) / window
}

#[test]
fn brownout_the_retry_budget_bounds_the_load_while_palisade_keeps_serving() {
    let (result, _) = run(Scenario::Brownout);
    let palisade = &client(&result, ClientKind::Palisade).metrics;
    let bound = budget_bound(&result);
    let attempts = palisade.amplification_fault.unwrap();
    assert!(
        attempts <= bound,
        "attempts / calls in the brownout is {attempts:.2}, over the budget's {bound:.2}"
    );
    // The point: the budget bounds the load on a degraded fleet that is
    // still serving. Breakers that open on the whole fleet bound it too, by
    // serving nothing: then the scenario shows nothing, and fails.
    assert!(
        attempts >= 0.9,
        "only {attempts:.2} attempts per call reached the fleet: open breakers, not the budget, cut the load"
    );
    let (ours, bare) = (
        fault_success(&result, ClientKind::Palisade),
        fault_success(&result, ClientKind::Bare),
    );
    assert!(
        ours >= bare,
        "Palisade kept {:.1}% through the brownout, less than the bare client's {:.1}%",
        ours * 100.0,
        bare * 100.0
    );
}

#[test]
fn overload_the_bulkhead_sheds_promptly_and_served_calls_keep_their_latency() {
    let (result, _) = run(Scenario::Overload);
    let palisade = &client(&result, ClientKind::Palisade).metrics;
    let settings = result.palisade_settings;
    let max_wait = settings.bulkhead_wait.unwrap();
    // A served call waits at most max_wait for a permit, and its attempt is
    // cut at the attempt timeout: that is the configured bound.
    let bound = max_wait + settings.attempt_timeout;
    let p99 = Duration::from_secs_f64(palisade.p99_ms.unwrap() / 1e3);
    assert!(
        p99 <= bound,
        "served calls' p99 {p99:?} is over the configured {bound:?}"
    );
    let shed = palisade.outcomes.get("bulkhead-full").copied().unwrap_or(0);
    assert!(
        shed >= palisade.calls / 3,
        "at 3x capacity the bulkhead shed only {shed} of {} calls",
        palisade.calls
    );
    // Promptly: a refused call waited at most max_wait (plus scheduling).
    let shed_p99 = Duration::from_secs_f64(palisade.p99_shed_ms.unwrap() / 1e3);
    assert!(
        shed_p99 <= max_wait + Duration::from_millis(50),
        "refused calls' p99 {shed_p99:?}: not prompt (max_wait {max_wait:?})"
    );
    // And it served its share of the capacity (a third of the calls), not
    // just shed everything.
    let served = palisade.outcomes.get("ok").copied().unwrap_or(0);
    assert!(
        served * 6 >= palisade.calls,
        "served only {served} of {} calls; the capacity is a third",
        palisade.calls
    );
}

#[test]
fn partition_palisade_serves_again_within_a_second_of_the_servers_return() {
    let (result, _) = run(Scenario::Partition);
    let palisade = &client(&result, ClientKind::Palisade).metrics;
    match palisade.recovery {
        Recovery::After(ms) if ms <= 1_000.0 => {}
        other => panic!(
            "after the partition, Palisade's success rate stayed >= 99% only {other:?} \
             (needed: from within 1 s of the servers' return); success over the run {:.1}%",
            palisade.success_run * 100.0
        ),
    }
}

#[test]
fn registry_outage_the_last_known_set_serves_and_the_new_server_is_learnt() {
    let (result, _) = run(Scenario::RegistryOutage);
    assert_palisade_masks_the_fault(&result);
    let palisade = client(&result, ClientKind::Palisade);
    assert!(
        palisade.metrics.success_run >= PALISADE_SINGLE_FAULT,
        "{:?}",
        palisade.metrics
    );
    let to_new = |c: &ClientResult| c.attempts_per_server.iter().find(|(s, _)| s == "echo-3").unwrap().1;
    assert!(to_new(palisade) > 0, "Palisade never called the replacement server");
    assert_eq!(
        to_new(client(&result, ClientKind::Bare)),
        0,
        "the bare client has no registry"
    );
}

// ---------------------------------------------------------------------------
// The charts hold what they claim.

/// The text content of every `<text>` element.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = t.split_once('>')?.1;
            Some(body.split("</text>").next()?.trim().to_owned())
        })
        .collect()
}

/// How many points each polyline of stroke `color` has.
fn polylines(svg: &str, color: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.contains(&format!("stroke=\"{color}\"")))
        .filter_map(|p| {
            let points = p.split("points=\"").nth(1)?.split('"').next()?;
            Some(points.split_whitespace().count())
        })
        .collect()
}

/// How many rectangles are filled with `color`.
fn rects(svg: &str, color: &str) -> usize {
    svg.split("<rect")
        .skip(1)
        .filter(|r| {
            r.split("/>")
                .next()
                .is_some_and(|r| r.contains(&format!("fill=\"{color}\"")))
        })
        .count()
}

fn hex(color: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2)
}

fn check_charts(result: &ScenarioResult, charts: &ChartFiles) {
    let svg = std::fs::read_to_string(&charts.svg).unwrap();
    let texts = texts(&svg);
    assert!(
        texts.iter().any(|t| t.starts_with(&format!("{}:", result.scenario))),
        "no title in {texts:?}"
    );
    for c in &result.clients {
        let name = c.client.name();
        // One legend entry per panel.
        assert_eq!(
            texts.iter().filter(|t| *t == name).count(),
            2,
            "legend of {name}: {texts:?}"
        );
        // Every bucket with a value is a point of one of the client's lines,
        // plus a two-point legend sample per panel.
        let defined = c.metrics.series.iter().filter(|p| p.success.is_some()).count()
            + c.metrics.series.iter().filter(|p| p.p99_ms.is_some()).count();
        let drawn: usize = polylines(&svg, &hex(chart::client_color(c.client))).iter().sum();
        assert_eq!(drawn, defined + 2 * 2, "{name}'s lines in {}", charts.svg.display());
    }
    // The fault window is shaded in both panels.
    let shades = if result.fault_s.is_some() { 2 } else { 0 };
    assert_eq!(rects(&svg, &hex(chart::FAULT_COLOR)), shades);
    // One band per breaker interval of each state, plus its legend swatch.
    for state in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
        let intervals = result
            .breakers
            .iter()
            .flat_map(|t| &t.intervals)
            .filter(|(_, _, s)| *s == state)
            .count();
        let legend = usize::from(!result.breakers.is_empty());
        assert_eq!(
            rects(&svg, &hex(chart::breaker_color(state))),
            intervals + legend,
            "{} bands",
            state.name()
        );
    }
    assert_eq!(result.breakers.len(), result.failing.len());

    let png = std::fs::read(&charts.png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), chart::SIZE);
}
