//! `cargo run --release -p palisade-chaos -- [SCENARIO...] [--duration 5s]
//! [--rate 200] [--json] [--out target/chaos] [--quick] [--seed 17]`: see the
//! library's docs and `--help`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use palisade_chaos::cli::Args;
use palisade_chaos::report;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = args.config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("palisade-chaos: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let progress = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg:16} [{bar:40}] {elapsed}") {
        progress.set_style(style.progress_chars("=> "));
    }
    let started = tokio::time::Instant::now();
    let report = match runtime.block_on(palisade_chaos::run(&config, &progress)) {
        Ok(report) => report,
        Err(error) => {
            progress.abandon();
            eprintln!("palisade-chaos: {error}");
            return ExitCode::FAILURE;
        }
    };
    // With --json, stdout holds only the JSON.
    let mut tables: Box<dyn std::io::Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    for result in &report.results {
        let _ = writeln!(tables, "{}", report::table(result));
    }
    let _ = writeln!(tables, "charts:");
    for chart in &report.charts {
        let _ = writeln!(tables, "  {}\n  {}", chart.svg.display(), chart.png.display());
    }
    let _ = writeln!(tables, "results: {}", report.json.display());
    let _ = writeln!(tables, "wall time: {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        match std::fs::read_to_string(&report.json) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("palisade-chaos: reading {}: {error}", report.json.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
