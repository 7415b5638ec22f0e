//! The table per scenario, as text.

use std::fmt::Write as _;

use crate::metrics::{Detection, Recovery};
use crate::run::ScenarioResult;

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

fn detection(d: Detection) -> String {
    match d {
        Detection::After(ms) => format!("{ms:.0}ms"),
        Detection::Never => "never".to_owned(),
        Detection::NotObservable => "n/a".to_owned(),
    }
}

fn recovery(r: Recovery) -> String {
    match r {
        Recovery::After(ms) => format!("{ms:.0}ms"),
        Recovery::Never => "not in run".to_owned(),
        Recovery::NoFault => "n/a".to_owned(),
    }
}

/// The scenario's table: a heading line, then one row per client.
pub fn table(result: &ScenarioResult) -> String {
    let mut out = String::new();
    let window = match result.fault_s {
        Some((a, b)) => format!("fault {a:.1}-{b:.1} s of {:.1} s", result.run_s),
        None => format!("{:.1} s, no fault window", result.run_s),
    };
    let _ = writeln!(
        out,
        "{}: {} ({window}, {} calls/s per client, caller deadline {:.0} ms)",
        result.scenario, result.description, result.rate, result.caller_deadline_ms
    );
    let headers = [
        "client",
        "ok (fault)",
        "ok (run)",
        "p50",
        "p99",
        "max",
        "reached after detect",
        "detect",
        "recover",
        "attempts/call",
        "shed",
    ];
    let rows: Vec<[String; 11]> = result
        .clients
        .iter()
        .map(|c| {
            let m = &c.metrics;
            [
                c.client.name().to_owned(),
                percent(m.success_fault),
                percent(Some(m.success_run)),
                millis(m.p50_ms),
                millis(m.p99_ms),
                millis(m.max_ms),
                m.reached_after_detection
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
                detection(m.detection),
                recovery(m.recovery),
                format!("{:.2}", m.amplification),
                m.outcomes.get("bulkhead-full").copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut line = String::from("|");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} |");
        }
        line
    };
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", line(rule.iter().map(String::as_str).collect()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    out
}
